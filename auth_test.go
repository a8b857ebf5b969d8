package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Each way a provider grants permissions grants them, and the token's sub is
// who the service records and logs. Scopes match exactly. A provider clock
// up to five minutes ahead is absorbed through nbf; exp has no leeway.
//
// Every token that must not be trusted gets the same 401, so that a client
// learns nothing about why; the reason, bounded and never the token, is
// logged for operators. None may create anything: a claim the service does
// not understand is no partial grant.
func TestAuthTokens(t *testing.T) {
	ta := newTestApp(t, map[string]string{"OIDC_AUDIENCE": "order-management, api://order-management"})
	iss := ta.issuer
	now := time.Now()
	// grant signs valid claims for sub "granted" whose permissions are set's.
	grant := func(set map[string]any, opts ...signOpt) string {
		c := iss.claims("granted")
		delete(c, "scope")
		maps.Copy(c, set)
		return iss.sign(t, c, opts...)
	}
	// sign signs claims that would be accepted, with every scope, edited (nil
	// deletes), so that only the defect under test can be why it is refused.
	sign := func(edit map[string]any, opts ...signOpt) string {
		c := iss.claims("attacker", allScopes...)
		maps.Copy(c, edit)
		maps.DeleteFunc(c, func(_ string, v any) bool { return v == nil })
		return iss.sign(t, c, opts...)
	}
	readWrite := []string{"customers:read", "customers:write"}
	const both = "customers:read customers:write"
	foreignRSA, foreignEC := withKey(testKey("rsa-2")), withKey(testKey("ec-2"))
	rsaKey := testKey("rsa-1")
	der, _ := x509.MarshalPKIXPublicKey(rsaKey.Public().Key) // cannot fail for an RSA key
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	// A reader's token with a payload granting everything; unsigned tokens.
	genuine := strings.Split(iss.token(t, "reader", "customers:read"), ".")
	everything := segment(iss.claims("attacker", allScopes...))
	tampered := genuine[0] + "." + everything + "." + genuine[2]
	unsigned := func(header map[string]any, sig string) string { return segment(header) + "." + everything + "." + sig }
	tok := sign(nil)

	// A granted token creates a customer and reads it back; a lacking one is
	// refused both, as is an invalid one. why is a fragment of the logged
	// reason: each is refused for its defect.
	const granted, lacking, invalid = http.StatusCreated, http.StatusForbidden, http.StatusUnauthorized
	cases := []struct {
		name   string
		status int
		why    string
		header string
	}{
		{"scope string, RS256", granted, "", "Bearer " + grant(map[string]any{"scope": both})},
		{"scope string, ES256", granted, "", "Bearer " + grant(map[string]any{"scope": both}, withKey(testKey("ec-1")))},
		{"scp array (Okta, Hydra)", granted, "", "Bearer " + grant(map[string]any{"scp": readWrite})},
		{"scp space-separated (Entra)", granted, "", "Bearer " + grant(map[string]any{"scp": both})},
		{"permissions array (Auth0)", granted, "", "Bearer " + grant(map[string]any{"permissions": readWrite})},
		{"roles array (Entra app-only)", granted, "", "Bearer " + grant(map[string]any{"roles": readWrite})},
		{"split across claims", granted, "", "Bearer " + grant(map[string]any{"scope": "customers:read", "roles": []string{"customers:write"}})},
		{"null claims count as absent", granted, "", "Bearer " + grant(map[string]any{"scope": both, "scp": nil, "permissions": nil, "roles": nil})},
		{"extra blanks in scope", granted, "", "Bearer " + grant(map[string]any{"scope": "  customers:read\tcustomers:write  "})},
		{"audience as a string", granted, "", "Bearer " + grant(map[string]any{"scope": both, "aud": "order-management"})},
		{"several audiences in aud", granted, "", "Bearer " + grant(map[string]any{"scope": both, "aud": []string{"another-api", "order-management"}})},
		{"the second configured audience", granted, "", "Bearer " + grant(map[string]any{"scope": both, "aud": "api://order-management"})},
		{"header typ JWT", granted, "", "Bearer " + grant(map[string]any{"scope": both}, withTyp("JWT"))},
		{"no header typ", granted, "", "Bearer " + grant(map[string]any{"scope": both}, withTyp(""))},
		{"header typ application/at+jwt, any case", granted, "", "Bearer " + grant(map[string]any{"scope": both}, withTyp("Application/AT+JWT"))},
		{"typ claim Bearer (Keycloak)", granted, "", "Bearer " + grant(map[string]any{"scope": both, "typ": "Bearer"})},
		{"nbf 2 minutes ahead", granted, "", "Bearer " + grant(map[string]any{"scope": both, "nbf": now.Add(2 * time.Minute).Unix()})},
		{"nbf 4 minutes ahead", granted, "", "Bearer " + grant(map[string]any{"scope": both, "nbf": now.Add(4 * time.Minute).Unix()})},
		{"exp in 30 seconds", granted, "", "Bearer " + grant(map[string]any{"scope": both, "exp": now.Add(30 * time.Second).Unix()})},
		{"scheme in lower case (RFC 7235)", granted, "", "bearer " + grant(map[string]any{"scope": both})},
		{"scheme in upper case", granted, "", "BEARER " + grant(map[string]any{"scope": both})},
		{"no scope claim at all", lacking, "lacks", "Bearer " + grant(nil)},
		{"empty scope", lacking, "lacks", "Bearer " + grant(map[string]any{"scope": ""})},
		{"other resource", lacking, "lacks", "Bearer " + grant(map[string]any{"scope": "orders:read numbers:write"})},
		{"different case", lacking, "lacks", "Bearer " + grant(map[string]any{"scope": "Customers:Read", "scp": []string{"CUSTOMERS:WRITE"}})},
		{"longer name", lacking, "lacks", "Bearer " + grant(map[string]any{"scope": "customers:readonly customers:writer"})},
		{"prefix", lacking, "lacks", "Bearer " + grant(map[string]any{"scope": "customers", "roles": []string{"customers:"}})},
		{"wildcard", lacking, "lacks", "Bearer " + grant(map[string]any{"scope": "customers:* *", "permissions": []string{"*"}})},
		{"comma-separated", lacking, "lacks", "Bearer " + grant(map[string]any{"scope": "orders:read,customers:read,customers:write"})},
		{"Basic scheme", invalid, "bearer", "Basic " + base64.StdEncoding.EncodeToString([]byte("staff-1:secret"))},
		{"Token scheme with a valid token", invalid, "bearer", "Token " + tok},
		{"valid token without a scheme", invalid, "bearer", tok},
		{"Bearer with nothing after it", invalid, "bearer", "Bearer"},
		{"Bearer and blanks", invalid, "bearer", "Bearer     "},
		{"garbage", invalid, "malformed", "Bearer not-a-jwt"},
		{"empty segments", invalid, "malformed", "Bearer .."},
		{"two tokens", invalid, "malformed", "Bearer " + tok + " " + tok},
		{"a blank inside the token", invalid, "malformed", "Bearer " + strings.Replace(tok, ".", ". ", 1)},
		{"two spaces after Bearer", invalid, "malformed", "Bearer  " + tok},
		{"Authorization over 8 KiB", invalid, "bytes", "Bearer " + sign(map[string]any{"pad": strings.Repeat("x", 8<<10)})},
		{"expired", invalid, "expired", "Bearer " + sign(map[string]any{"iat": now.Add(-2 * time.Hour).Unix(), "nbf": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix()})},
		{"exp 5 seconds ago", invalid, "expired", "Bearer " + sign(map[string]any{"exp": now.Add(-5 * time.Second).Unix()})},
		{"nbf 6 minutes ahead", invalid, "nbf", "Bearer " + sign(map[string]any{"nbf": now.Add(6 * time.Minute).Unix()})},
		{"nbf 10 minutes ahead", invalid, "nbf", "Bearer " + sign(map[string]any{"nbf": now.Add(10 * time.Minute).Unix()})},
		{"no exp", invalid, "expired", "Bearer " + sign(map[string]any{"exp": nil})},
		{"wrong issuer", invalid, "issued by", "Bearer " + sign(map[string]any{"iss": "https://login.evil.example"})},
		{"issuer with a trailing slash", invalid, "issued by", "Bearer " + sign(map[string]any{"iss": iss.url + "/"})},
		{"wrong audience", invalid, "audience", "Bearer " + sign(map[string]any{"aud": []string{"another-api"}})},
		{"no audience", invalid, "audience", "Bearer " + sign(map[string]any{"aud": nil})},
		{"no sub", invalid, "no sub", "Bearer " + sign(map[string]any{"sub": nil})},
		{"empty sub", invalid, "no sub", "Bearer " + sign(map[string]any{"sub": ""})},
		{"sub with a NUL", invalid, "no sub", "Bearer " + sign(map[string]any{"sub": "staff\x00"})},
		{"unknown kid, foreign key", invalid, "signature", "Bearer " + sign(nil, foreignRSA)},
		{"foreign RSA key under kid rsa-1", invalid, "signature", "Bearer " + sign(nil, foreignRSA, withKid("rsa-1"))},
		{"foreign EC key under kid ec-1", invalid, "signature", "Bearer " + sign(nil, foreignEC, withKid("ec-1"))},
		{"foreign key, no kid", invalid, "signature", "Bearer " + sign(nil, foreignRSA, withKid(""))},
		{"tampered payload", invalid, "signature", "Bearer " + tampered},
		{"signature stripped", invalid, "malformed", "Bearer " + genuine[0] + "." + genuine[1] + "."},
		{"alg none", invalid, "algorithm", "Bearer " + unsigned(map[string]any{"alg": "none", "typ": "JWT"}, "")},
		{"alg none with kid rsa-1", invalid, "algorithm", "Bearer " + unsigned(map[string]any{"alg": "none", "kid": "rsa-1"}, "")},
		{"HS256 keyed with the RSA public key's DER", invalid, "algorithm", "Bearer " + sign(nil, withKey(jose.JSONWebKey{Key: der, KeyID: "rsa-1", Algorithm: "HS256"}))},
		{"HS256 keyed with the RSA public key's PEM", invalid, "algorithm", "Bearer " + sign(nil, withKey(jose.JSONWebKey{Key: pemKey, KeyID: "rsa-1", Algorithm: "HS256"}))},
		{"an alg of 4 KiB", invalid, "algorithm", "Bearer " + unsigned(map[string]any{"alg": strings.Repeat("A", 4<<10)}, "c2ln")},
		{"ID token (Keycloak typ claim)", invalid, "typ claim", "Bearer " + sign(map[string]any{"typ": "ID"}, withTyp("JWT"))},
		{"logout token", invalid, "header typ", "Bearer " + sign(nil, withTyp("logout+jwt"))},
		{"header typ not a string", invalid, "header typ", "Bearer " + unsigned(map[string]any{"alg": "RS256", "kid": "rsa-1", "typ": 1}, "c2ln")},
		{"scp with a number in it", invalid, "claims", "Bearer " + sign(map[string]any{"scp": []any{"customers:write", 1}})},
		{"scp a number", invalid, "claims", "Bearer " + sign(map[string]any{"scp": 123})},
		{"scope an array", invalid, "claims", "Bearer " + sign(map[string]any{"scope": allScopes})},
		{"permissions a string", invalid, "claims", "Bearer " + sign(map[string]any{"permissions": "customers:write"})},
		{"roles a string", invalid, "claims", "Bearer " + sign(map[string]any{"roles": "customers:write"})},
		{"roles with an object in it", invalid, "claims", "Bearer " + sign(map[string]any{"roles": []any{map[string]any{"customers:write": true}}})},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// send sends the case's header to a route that needs scope, and
			// checks the answer and its log line.
			send := func(method, path, scope string, status int) response {
				id := fmt.Sprintf("auth-%d-%s", i, method)
				body := map[string]any{"code": fmt.Sprint("AUTH-", i), "name": "Amina Njoroge", "phone": fmt.Sprintf("+254712345%03d", i)}
				r := ta.request(method, path, body, "application/json", map[string]string{"Authorization": tc.header, "X-Request-Id": id}).must(t, status)
				refusal := map[int][2]string{ // the challenge and the detail
					invalid: {`Bearer error="invalid_token"`, "the access token is not valid"},
					lacking: {`Bearer error="insufficient_scope", scope="` + scope + `"`, "this route needs the scope " + scope},
				}[status]
				equal(t, method+" WWW-Authenticate", r.header.Get("WWW-Authenticate"), refusal[0])
				if status >= 400 && r.problem(t).Detail != refusal[1] {
					t.Errorf("%s: detail: got %q, want %q, the same for every such refusal", method, r.problem(t).Detail, refusal[1])
				}
				line := ta.requestLog(id)
				if reason, _ := line["reason"].(string); !strings.Contains(strings.ToLower(reason), tc.why) || reason != storable(reason, "") {
					t.Errorf("%s: logged reason: got %q, want one about %q, storable", method, reason, tc.why)
				}
				if tc.why == "" && line["sub"] != "granted" {
					t.Errorf("%s: log line sub: got %v, want granted (line %v)", method, line["sub"], line)
				}
				// A token's signature is the secret of the credential, which
				// without a signature worth the name is all secret.
				_, raw, _ := strings.Cut(tc.header, " ")
				secret := strings.TrimSpace(raw)
				if sig := secret[strings.LastIndexByte(secret, '.')+1:]; len(sig) > 16 {
					secret = sig
				}
				if len(raw) > 20 && strings.Contains(string(r.body)+ta.logs.String(), secret) {
					t.Errorf("%s: the answer or the log holds the credential (or its signature)", method)
				}
				return r
			}
			if tc.status != granted {
				send("POST", "/v1/customers", "customers:write", tc.status)
				send("GET", "/v1/customers", "customers:read", tc.status)
				return
			}
			var created, stored customer
			send("POST", "/v1/customers", "customers:write", granted).json(t, &created)
			send("GET", fmt.Sprint("/v1/customers/", created.ID), "customers:read", http.StatusOK).json(t, &stored)
			equal(t, "created_by in the answer", created.CreatedBy, "granted")
			equal(t, "created_by read back", stored.CreatedBy, "granted")
		})
	}
	equal(t, "customers created by refused tokens", ta.count("customers", "created_by <> 'granted'"), 0)
}

// Every /v1 route checks the credentials before anything else: without a
// token it asks for one (no error code, RFC 6750 section 3.1), two
// Authorization headers are malformed whatever they hold, and a token with
// every scope but the one needed, or a read-only one, gets 403. Nothing changes.
func TestAuthRoutes(t *testing.T) {
	ta := newTestApp(t, nil)
	cust := ta.createCustomer("SCOPE-1", "+254712345678", nil)
	number := map[string]any{"value": "+55 84 91234-0001", "monthyPrice": "0.03", "setupPrice": "3.40", "currency": "U$"}
	var num phoneNumber
	ta.do("POST", "/v1/numbers", number).must(t, http.StatusCreated).json(t, &num)
	customerPath, numberPath := fmt.Sprint("/v1/customers/", cust.ID), fmt.Sprint("/v1/numbers/", num.ID)
	// Each body would succeed, so that a missing check would show.
	newCustomer := map[string]any{"code": "SCOPE-NEW", "name": "Baraka Otieno", "phone": "+254722000111"}
	newOrder := map[string]any{"customer_id": cust.ID, "item": "whole-exome-sequencing", "amount": "1250.00"}
	routes := []struct {
		method, path, scope string
		body                any
	}{
		{"POST", "/v1/customers", "customers:write", newCustomer},
		{"GET", "/v1/customers", "customers:read", nil},
		{"GET", customerPath, "customers:read", nil},
		{"PATCH", customerPath, "customers:write", map[string]any{"name": "Changed"}},
		{"DELETE", customerPath, "customers:write", nil},
		{"POST", "/v1/customers/import", "customers:write", []any{newCustomer}},
		{"POST", "/v1/orders", "orders:write", newOrder},
		{"GET", "/v1/orders", "orders:read", nil},
		{"GET", "/v1/orders/1", "orders:read", nil},
		{"POST", "/v1/orders/import", "orders:write", []any{newOrder}},
		{"GET", "/v1/numbers", "numbers:read", nil},
		{"POST", "/v1/numbers", "numbers:write", number},
		{"GET", numberPath, "numbers:read", nil},
		{"PUT", numberPath, "numbers:write", number},
		{"PATCH", numberPath, "numbers:write", map[string]any{"currency": "USD"}},
		{"DELETE", numberPath, "numbers:write", nil},
	}
	readOnly := "Bearer " + ta.issuer.token(t, "read-only", "customers:read", "orders:read", "numbers:read")
	// state is what a refused request must leave as it was.
	state := func() string {
		c, n := ta.do("GET", customerPath, nil).must(t, http.StatusOK), ta.do("GET", numberPath, nil).must(t, http.StatusOK)
		return fmt.Sprintf("%d customers, %d orders, %d numbers; %s%s", ta.count("customers"), ta.count("orders"), ta.count("phone_numbers"), c.body, n.body)
	}
	before := state()
	type try struct {
		name, challenge string
		header          []string
		status          int
	}
	handler := ta.server.routes()
	for _, rt := range routes {
		others := "Bearer " + ta.issuer.token(t, "almost-everything", slices.DeleteFunc(slices.Clone(allScopes), func(s string) bool { return s == rt.scope })...)
		insufficient := `Bearer error="insufficient_scope", scope="` + rt.scope + `"`
		tries := []try{
			{"without a token", "Bearer", nil, http.StatusUnauthorized},
			{"with two headers", `Bearer error="invalid_request"`, []string{"Bearer " + ta.token, "Bearer " + ta.token}, http.StatusBadRequest},
			{"with every other scope", insufficient, []string{others}, http.StatusForbidden},
		}
		if strings.HasSuffix(rt.scope, ":write") {
			tries = append(tries, try{"read-only", insufficient, []string{readOnly}, http.StatusForbidden})
		}
		for _, try := range tries {
			t.Run(rt.method+" "+rt.path+" "+try.name, func(t *testing.T) {
				body, _ := json.Marshal(rt.body) // a JSON value always encodes
				unread := bytes.NewReader(body)
				req := httptest.NewRequest(rt.method, rt.path, unread)
				req.Header["Content-Type"], req.Header["Authorization"] = []string{"application/json"}, try.header
				rec := httptest.NewRecorder()
				handler.ServeHTTP(rec, req)
				r := response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}.must(t, try.status)
				equal(t, "WWW-Authenticate", r.header.Get("WWW-Authenticate"), try.challenge)
				equal(t, "bytes of the body left unread (a client still sending would meet a reset)", unread.Len(), 0)
				r.problem(t)
			})
		}
	}
	equal(t, "after the refused requests", state(), before)
}

// newTestKeySet returns a key set over a new provider, a function that makes
// the key set's clock run ahead of the real one, and one that counts the
// JWKS fetches since its last call (start-up's among the first).
func newTestKeySet(t *testing.T) (*fakeOIDC, *keySet, func(time.Duration), func() int64) {
	f := newFakeOIDC(t)
	ks, err := newKeySet(f.url+"/jwks", &http.Client{Timeout: 5 * time.Second}, slog.New(slog.DiscardHandler))
	fatalIf(t, err)
	var ahead atomic.Int64
	ks.now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	return f, ks, func(d time.Duration) { ahead.Add(int64(d)) }, func() int64 { return f.jwksHits.Swap(0) }
}

// authWait waits until ks has no fetch under way.
func authWait(ks *keySet) {
	ks.mu.Lock()
	done := ks.fetching
	ks.mu.Unlock()
	if done != nil {
		<-done
	}
}

// A provider rotating its keys is followed without a restart: a key it signs
// with as soon as it publishes it works at once, right after start-up and
// right after a refresh, and a key it drops stops working once fetched again.
// Each step costs the JWKS fetches it names.
func TestKeySetRotation(t *testing.T) {
	f, ks, advance, fetches := newTestKeySet(t)
	fetches() // start-up's
	keyA, keyB, keyC, keyD, keyE := testKey("rsa-1"), testKey("ec-2"), testKey("rsa-2"), testKey("ec-3"), testKey("ec-4")
	steps := []struct {
		name    string
		wait    time.Duration // how far the keys' clock moves first
		publish []any         // nil: leave the JWKS as it is
		key     jose.JSONWebKey
		valid   bool
		fetches int64
	}{
		{"a key published right after start-up", 0, []any{keyA, keyD}, keyD, true, 1},
		{"the current key", 0, nil, keyA, true, 0},
		{"the next key before it is published", keyRetryID, nil, keyB, false, 1},
		{"the next key once published", keyRetryID, []any{keyA, keyB}, keyB, true, 1},
		{"the current key at max age, while the keys are refreshed", keyMaxAge, nil, keyA, true, 1},
		{"a key published right after the refresh", 0, []any{keyA, keyB, keyE}, keyE, true, 1},
		{"a third key replacing all", keyRetryID, []any{keyC}, keyC, true, 1},
		{"a retired key, once the JWKS is fetched again", keyRetryID, nil, keyA, false, 1},
		{"another retired key", keyRetryID, nil, keyB, false, 1},
		{"the third key still", 0, nil, keyC, true, 0},
	}
	for _, st := range steps {
		advance(st.wait)
		if st.publish != nil {
			f.publish(st.publish...)
		}
		_, err := ks.VerifySignature(t.Context(), f.sign(t, f.claims(st.name), withKey(st.key)))
		authWait(ks) // for the refresh this step began
		if got := fetches(); (err == nil) != st.valid || got != st.fetches {
			t.Errorf("%s: got %v after %d JWKS fetches, want valid %v after %d", st.name, err, got, st.valid, st.fetches)
		}
	}
}

// authFutureKey is a JWKS key of a type no library knows yet.
var authFutureKey = map[string]string{"kty": "future", "kid": "x"}

// A key set over a provider under attack, then in trouble. Unknown key ids
// cost at most one JWKS fetch per keyRefill however many come, a repeated
// one one per keyRetryID, so that a key published meanwhile is still fetched
// at once; a forged signature under a known kid costs none. At the keys' max
// age, with a JWKS taking 3 s, ten concurrent requests are answered at once
// from the cached keys, a key the provider withdrew among them, until the
// refresh lands; that one refresh also serves the requests that need a new
// key, each waiting as long as its own context allows. An outage keeps the
// keys known; a failing JWKS stops start-up.
func TestKeySet(t *testing.T) {
	f, ks, advance, fetches := newTestKeySet(t)
	forged := func(kid string) {
		if _, err := ks.VerifySignature(t.Context(), f.sign(t, f.claims("forger"), withKey(testKey("ec-2")), withKid(kid))); err == nil {
			t.Errorf("a forged token under kid %q verified", kid)
		}
	}
	for i := range 100 {
		forged([]string{"rsa-1", "ec-1"}[i%2])
	}
	equal(t, "JWKS fetches after forged signatures under known key ids (start-up's)", fetches(), 1)
	for s := range 60 { // a minute of twenty forged key ids a second, at once
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() { forged(fmt.Sprint("forged-", s, "-", i)) })
		}
		wg.Wait()
		advance(time.Second)
	}
	equal(t, fmt.Sprintf("JWKS fetches in a minute of forged key ids (one per %v)", keyRefill), fetches(), 6)
	for range 6 { // a minute of one withdrawn key id, every keyRefill
		advance(keyRefill)
		forged("withdrawn")
	}
	late := testKey("ec-published-late")
	f.publish(testKey("rsa-1"), late, authFutureKey) // the key of an unknown type is skipped
	if _, err := ks.VerifySignature(t.Context(), f.sign(t, f.claims("late"), withKey(late))); err != nil {
		t.Errorf("a key published after the forged ones, beside one of an unknown type: %v", err)
	}
	equal(t, "JWKS fetches for the repeated key id and the new key", fetches(), 2)

	withdrawn, freshKey := f.token(t, "withdrawn"), testKey("ec-fresh") // withdrawn is signed with rsa-1
	f.publish(testKey("ec-1"), freshKey)
	fresh := f.sign(t, f.claims("fresh"), withKey(freshKey))
	f.fail(0, 3*time.Second)
	advance(keyMaxAge - time.Second) // since the last fetch
	if _, err := ks.VerifySignature(t.Context(), withdrawn); err != nil || fetches() != 0 {
		t.Fatalf("before the max age: got %v, want the cached key and no fetch", err)
	}
	advance(time.Second)
	errs := make([]error, 10)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() { _, errs[i] = ks.VerifySignature(t.Context(), withdrawn) })
	}
	wg.Wait()
	impatient, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	// Had the ten waited for the refresh, it would have brought fresh's key.
	if _, err := ks.VerifySignature(impatient, fresh); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a request whose context ends first: got %v, want %v", err, context.DeadlineExceeded)
	}
	if err := errors.Join(errs...); err != nil {
		t.Errorf("requests with cached keys: %v", err)
	}
	if _, err := ks.VerifySignature(t.Context(), fresh); err != nil {
		t.Errorf("a request that waits for the refresh: %v", err)
	}
	f.fail(0, 0)
	if _, err := ks.VerifySignature(t.Context(), withdrawn); err == nil {
		t.Error("a withdrawn key verified after the refresh")
	}
	equal(t, "JWKS fetches (the refresh, one for the withdrawn key id)", fetches(), 2)
	f.fail(http.StatusServiceUnavailable, 0)
	advance(keyMaxAge)
	for i := range 20 {
		if _, err := ks.VerifySignature(t.Context(), f.sign(t, f.claims("s"), withKey(freshKey), withKid(""))); err != nil {
			t.Fatalf("during a provider outage, a token without kid, tried against every known key (attempt %d): %v", i, err)
		}
		authWait(ks)
	}
	equal(t, fmt.Sprintf("JWKS fetches in the outage (the next after %v)", keyRefill), fetches(), 1)
	if _, err := newKeySet(f.url+"/jwks", http.DefaultClient, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("a failing JWKS loaded")
	}
}

// A verified token is admitted again without being verified, for a minute
// at most and never past its exp; the cache's size is bounded.
func TestAuthTokenCache(t *testing.T) {
	f := newFakeOIDC(t)
	a, err := newAuthenticator(t.Context(), f.url, []string{f.audience}, &http.Client{Timeout: 5 * time.Second}, time.Second, slog.New(slog.DiscardHandler))
	fatalIf(t, err)
	short := f.claims("short")
	short["exp"] = time.Now().Add(30 * time.Second).Unix()
	for tok, until := range map[string]time.Time{f.token(t, "long"): time.Now().Add(tokenCacheTTL), f.sign(t, short): time.Unix(short["exp"].(int64), 0)} {
		_, err := a.verify(t.Context(), tok)
		fatalIf(t, err)
		a.audiences = []string{"another-api"} // verifying it again would fail
		_, err = a.verify(t.Context(), tok)
		p := a.verified[sha256.Sum256([]byte(tok))]
		if d := p.until.Sub(until); err != nil || d < -time.Second || d > time.Second {
			t.Errorf("%s's token: got %v, cached until %v, want it cached until %v", p.subject, err, p.until, until)
		}
		p.until = time.Now()
		if _, err := a.verify(t.Context(), tok); err == nil {
			t.Errorf("%s's token was admitted from the cache past its time", p.subject)
		}
		a.audiences = []string{f.audience}
	}
	for i := range tokenCacheSize {
		a.verified[[32]byte{byte(i), byte(i >> 8)}] = &principal{}
	}
	if _, err := a.verify(t.Context(), f.token(t, "one more")); err != nil || len(a.verified) > tokenCacheSize {
		t.Errorf("one more token: got %v and %d entries, want at most %d", err, len(a.verified), tokenCacheSize)
	}
}

// Start-up waits a bounded time for the provider: it gives up within its
// patience with one line naming the variable to fix, and succeeds when the
// provider answers meanwhile; a JWKS without a usable key is no answer.
func TestAuthStartup(t *testing.T) {
	client := &http.Client{Timeout: 2 * time.Second}
	down, broken, keyless := httptest.NewServer(nil), newFakeOIDC(t), newFakeOIDC(t)
	down.Close() // refuses connections from now on
	broken.fail(http.StatusNotFound, 0)
	keyless.publish(authFutureKey)
	for name, issuer := range map[string]string{
		"provider refuses connections": down.URL,
		"discovery answers 404":        broken.url,
		"a JWKS without a usable key":  keyless.url,
	} {
		t.Run(name, func(t *testing.T) {
			logs := &syncBuffer{}
			patience := 600 * time.Millisecond
			start := time.Now()
			a, err := newAuthenticator(t.Context(), issuer, []string{"order-management"}, client, patience, slog.New(slog.NewJSONHandler(logs, nil)))
			elapsed := time.Since(start)
			if err == nil {
				t.Fatalf("got an authenticator %v, want an error", a)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "OIDC_ISSUER_URL: ") || strings.Contains(msg, "\n") {
				t.Errorf("error: got %q, want one line naming OIDC_ISSUER_URL", msg)
			}
			if !strings.Contains(logs.String(), "retrying") {
				t.Errorf("got the error %q and the log %s, want a warning that discovery is retried", err, logs)
			}
			// The slack covers the refused attempts themselves, slowed by -race.
			if limit := patience + 400*time.Millisecond; elapsed > limit {
				t.Errorf("gave up after %v, want within %v", elapsed, limit)
			}
		})
	}
	t.Run("provider answers after 300ms", func(t *testing.T) {
		late := newFakeOIDC(t)
		late.fail(http.StatusServiceUnavailable, 0)
		time.AfterFunc(300*time.Millisecond, func() { late.fail(0, 0) })
		start := time.Now()
		a, err := newAuthenticator(t.Context(), late.url, []string{late.audience}, client, 5*time.Second, slog.New(slog.DiscardHandler))
		if elapsed := time.Since(start); err != nil || elapsed < 300*time.Millisecond {
			t.Fatalf("got %v after %v, want the authenticator once the provider answers, after 300ms", err, elapsed)
		}
		p, err := a.verify(t.Context(), late.token(t, "late-sub", "customers:read"))
		if err != nil || p.subject != "late-sub" || !slices.Contains(p.scopes, "customers:read") {
			t.Errorf("the late provider's token: got %+v, %v, want late-sub with customers:read", p, err)
		}
	})
}
