package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
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

// authAudience is the audience newTestIssuer mints tokens for; issuers built
// in this file use it too so that newTestApp's default OIDC_AUDIENCE fits.
const authAudience = "order-management"

// authSegment is one base64url segment of a compact JWS.
func authSegment(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// authRSAKey and authECKey are keys the test issuers' JWKS never lists.
func authRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func authECKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// authLogLines returns the JSON log records whose request_id is id.
func authLogLines(ta *testApp, id string) []map[string]any {
	var lines []map[string]any
	for l := range strings.SplitSeq(ta.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["request_id"] == id {
			lines = append(lines, m)
		}
	}
	return lines
}

// authLogLine waits for the log record with message msg for request id: the
// request's line is written as the handler returns, which may be just after
// the client has its answer.
func authLogLine(t *testing.T, ta *testApp, id, msg string) map[string]any {
	t.Helper()
	var found map[string]any
	eventually(t, 2*time.Second, fmt.Sprintf("a %q log line for request %s in:\n%s", msg, id, ta.logs.String()), func() bool {
		for _, m := range authLogLines(ta, id) {
			if m["msg"] == msg {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// authSecrets are the parts of a token that must never be logged: the whole
// token and its signature (which, with the public header and payload, is
// the credential).
func authSecrets(token string) []string {
	out := []string{token}
	if i := strings.LastIndexByte(token, '.'); i >= 0 && len(token)-i > 16 {
		out = append(out, token[i+1:])
	}
	return out
}

// Each claim style a provider uses for permissions grants them, for reads
// and writes, and the token's sub is who the service records and logs.
func TestAuthClaimStyles(t *testing.T) {
	ta := newTestApp(t, nil)
	iss := ta.issuer
	readWrite := []string{"customers:read", "customers:write"}
	// styled returns valid claims for sub with no scope claim, edited by set.
	styled := func(sub string, set func(c map[string]any)) map[string]any {
		c := iss.claims(sub)
		delete(c, "scope")
		set(c)
		return c
	}
	cases := []struct {
		name   string
		scheme string
		alg    jose.SignatureAlgorithm
		claims map[string]any
	}{
		{"scope string, RS256", "Bearer", jose.RS256, styled("sub-scope-string", func(c map[string]any) { c["scope"] = "customers:read customers:write" })},
		{"scp array", "Bearer", jose.RS256, styled("sub-scp-array", func(c map[string]any) { c["scp"] = readWrite })},
		{"scp space-separated string", "Bearer", jose.RS256, styled("sub-scp-string", func(c map[string]any) { c["scp"] = "customers:read customers:write" })},
		{"permissions array", "Bearer", jose.RS256, styled("sub-permissions", func(c map[string]any) { c["permissions"] = readWrite })},
		{"scope string, ES256", "Bearer", jose.ES256, styled("sub-es256", func(c map[string]any) { c["scope"] = "customers:read customers:write" })},
		{"scopes split across claims", "Bearer", jose.RS256, styled("sub-union", func(c map[string]any) {
			c["scope"] = "customers:read"
			c["permissions"] = []string{"customers:write"}
		})},
		{"extra blanks in scope", "Bearer", jose.RS256, styled("sub-blanks", func(c map[string]any) { c["scope"] = "  customers:read\tcustomers:write  " })},
		// RFC 7235: the auth scheme is case-insensitive.
		{"lower-case scheme", "bearer", jose.RS256, styled("sub-lower-case", func(c map[string]any) { c["scope"] = "customers:read customers:write" })},
		{"audience as a string", "Bearer", jose.RS256, styled("sub-aud-string", func(c map[string]any) {
			c["aud"] = authAudience
			c["scope"] = "customers:read customers:write"
		})},
		{"several audiences", "Bearer", jose.RS256, styled("sub-aud-many", func(c map[string]any) {
			c["aud"] = []string{"another-api", authAudience}
			c["scope"] = "customers:read customers:write"
		})},
	}
	var tokens []string
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sub := tc.claims["sub"].(string)
			tok := iss.sign(t, tc.claims, tc.alg)
			tokens = append(tokens, tok)
			headers := map[string]string{"Authorization": tc.scheme + " " + tok}

			ta.request("GET", "/v1/customers", nil, "", headers).must(t, http.StatusOK)

			id := fmt.Sprintf("auth-style-%d", i)
			headers["X-Request-Id"] = id
			body := map[string]any{"code": fmt.Sprintf("STYLE-%d", i), "name": "Amina Njoroge", "phone": fmt.Sprintf("+2547123456%02d", i)}
			var created customer
			ta.request("POST", "/v1/customers", body, "application/json", headers).must(t, http.StatusCreated).json(t, &created)
			if created.CreatedBy != sub {
				t.Errorf("created_by in the answer: got %q, want %q", created.CreatedBy, sub)
			}
			var stored customer
			ta.do("GET", fmt.Sprintf("/v1/customers/%d", created.ID), nil).must(t, http.StatusOK).json(t, &stored)
			if stored.CreatedBy != sub {
				t.Errorf("created_by when read back: got %q, want %q", stored.CreatedBy, sub)
			}
			line := authLogLine(t, ta, id, "request")
			if line["sub"] != sub {
				t.Errorf("log line sub: got %v, want %q (line %v)", line["sub"], sub, line)
			}
		})
	}
	logs := ta.logs.String()
	for _, tok := range tokens {
		for _, secret := range authSecrets(tok) {
			if strings.Contains(logs, secret) {
				t.Errorf("the log holds a bearer token (or its signature) %q", secret)
			}
		}
	}
}

// Every way of presenting a token that must not be trusted gets the same
// 401, so that a client learns nothing about why; the reason is logged for
// operators only. None of them may create anything.
func TestAuthAttacks(t *testing.T) {
	ta := newTestApp(t, nil)
	iss := ta.issuer
	now := time.Now()
	// valid returns claims that would be accepted (with every scope, so that
	// only the defect under test can be the reason for refusing), edited.
	valid := func(edit func(c map[string]any)) map[string]any {
		c := iss.claims("attacker", allScopes...)
		if edit != nil {
			edit(c)
		}
		return c
	}
	foreignRSA, foreignEC := authRSAKey(t), authECKey(t)
	der, err := x509.MarshalPKIXPublicKey(&iss.rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})

	// A reader's genuine token whose payload is swapped for one granting
	// everything, signature kept.
	genuine := strings.Split(iss.token(t, "reader", "customers:read"), ".")
	tampered := genuine[0] + "." + authSegment(t, iss.claims("reader", allScopes...)) + "." + genuine[2]
	stripped := strings.Join(strings.Split(ta.token, ".")[:2], ".") + "."
	none := authSegment(t, map[string]any{"alg": "none", "typ": "JWT"}) + "." + authSegment(t, valid(nil)) + "."
	noneWithKid := authSegment(t, map[string]any{"alg": "none", "typ": "JWT", "kid": "rsa-1"}) + "." + authSegment(t, valid(nil)) + "."

	// why is a fragment of the logged reason, to show that each token is
	// refused for its own defect and not by accident.
	cases := []struct{ name, why, header string }{
		{"Basic scheme", "bearer", "Basic " + base64.StdEncoding.EncodeToString([]byte("staff-1:secret"))},
		{"Token scheme with a valid token", "bearer", "Token " + ta.token},
		{"valid token without a scheme", "bearer", ta.token},
		{"Bearer with nothing after it", "bearer", "Bearer"},
		{"Bearer and blanks", "bearer", "Bearer     "},
		{"garbage", "malformed", "Bearer not-a-jwt"},
		{"empty segments", "malformed", "Bearer .."},
		{"two tokens", "malformed", "Bearer " + ta.token + " " + ta.token},
		{"expired", "expired", "Bearer " + iss.sign(t, valid(func(c map[string]any) {
			c["iat"] = now.Add(-2 * time.Hour).Unix()
			c["nbf"] = now.Add(-2 * time.Hour).Unix()
			c["exp"] = now.Add(-time.Hour).Unix()
		}), jose.RS256)},
		{"not yet valid: nbf in 10 minutes", "nbf", "Bearer " + iss.sign(t, valid(func(c map[string]any) { c["nbf"] = now.Add(10 * time.Minute).Unix() }), jose.RS256)},
		{"wrong issuer", "issued by", "Bearer " + iss.sign(t, valid(func(c map[string]any) { c["iss"] = "https://login.evil.example" }), jose.RS256)},
		{"issuer with a trailing slash", "issued by", "Bearer " + iss.sign(t, valid(func(c map[string]any) { c["iss"] = iss.srv.URL + "/" }), jose.RS256)},
		{"wrong audience", "audience", "Bearer " + iss.sign(t, valid(func(c map[string]any) { c["aud"] = []string{"another-api"} }), jose.RS256)},
		{"no audience", "audience", "Bearer " + iss.sign(t, valid(func(c map[string]any) { delete(c, "aud") }), jose.RS256)},
		{"no exp", "expired", "Bearer " + iss.sign(t, valid(func(c map[string]any) { delete(c, "exp") }), jose.RS256)},
		{"unknown kid, foreign key", "signature", "Bearer " + signJWT(t, jose.RS256, foreignRSA, "rsa-2", valid(nil))},
		{"foreign RSA key under kid rsa-1", "signature", "Bearer " + signJWT(t, jose.RS256, foreignRSA, "rsa-1", valid(nil))},
		{"foreign EC key under kid ec-1", "signature", "Bearer " + signJWT(t, jose.ES256, foreignEC, "ec-1", valid(nil))},
		{"foreign key, no kid", "signature", "Bearer " + signJWT(t, jose.RS256, foreignRSA, "", valid(nil))},
		{"alg none", "algorithm", "Bearer " + none},
		{"alg none with kid rsa-1", "algorithm", "Bearer " + noneWithKid},
		{"HS256 keyed with the RSA public key's DER", "algorithm", "Bearer " + signJWT(t, jose.HS256, der, "rsa-1", valid(nil))},
		{"HS256 keyed with the RSA public key's PEM", "algorithm", "Bearer " + signJWT(t, jose.HS256, pemKey, "rsa-1", valid(nil))},
		{"tampered payload", "signature", "Bearer " + tampered},
		{"signature stripped", "signature", "Bearer " + stripped},
		{"no sub", "no sub", "Bearer " + iss.sign(t, valid(func(c map[string]any) { delete(c, "sub") }), jose.RS256)},
		{"empty sub", "no sub", "Bearer " + iss.sign(t, valid(func(c map[string]any) { c["sub"] = "" }), jose.RS256)},
	}
	routes := []struct {
		method, path string
		body         any
	}{
		{"GET", "/v1/customers", nil},
		{"POST", "/v1/customers", map[string]any{"code": "ATTACK-1", "name": "Mallory", "phone": "+254712345678"}},
	}
	details := map[string][]string{} // detail -> the cases that got it
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for j, rt := range routes {
				id := fmt.Sprintf("auth-attack-%d-%d", i, j)
				r := ta.request(rt.method, rt.path, rt.body, "application/json", map[string]string{"Authorization": tc.header, "X-Request-Id": id})
				r.must(t, http.StatusUnauthorized)
				if got, want := r.header.Get("WWW-Authenticate"), `Bearer error="invalid_token"`; got != want {
					t.Errorf("%s %s: WWW-Authenticate: got %q, want %q", rt.method, rt.path, got, want)
				}
				p := r.problem(t)
				details[p.Detail] = append(details[p.Detail], tc.name)
				line := authLogLine(t, ta, id, "token rejected")
				if reason, _ := line["reason"].(string); !strings.Contains(strings.ToLower(reason), tc.why) {
					t.Errorf("%s %s: logged reason: got %q, want one about %q", rt.method, rt.path, reason, tc.why)
				}
				_, raw, _ := strings.Cut(tc.header, " ")
				if len(strings.TrimSpace(raw)) > 20 {
					for _, secret := range authSecrets(strings.TrimSpace(raw)) {
						if strings.Contains(string(r.body), secret) {
							t.Errorf("%s %s: the answer echoes the token: %s", rt.method, rt.path, r.body)
						}
					}
				}
			}
		})
	}
	if len(details) != 1 {
		t.Errorf("got %d different details for refused tokens, want one for all: %v", len(details), details)
	}
	for detail := range details {
		lower := strings.ToLower(detail)
		for _, word := range []string{"expir", "issuer", "audience", "aud", "signature", "kid", "key", "alg", "hs256", "none", "sub", "nbf", "basic", "scheme", "malformed", "oidc", "jose"} {
			if strings.Contains(lower, word) {
				t.Errorf("detail %q gives away %q", detail, word)
			}
		}
	}
	if got := ta.count("customers"); got != 0 {
		t.Errorf("customers after the attacks: got %d, want 0", got)
	}
	logs := ta.logs.String()
	for _, tc := range cases {
		_, raw, _ := strings.Cut(tc.header, " ")
		if raw = strings.TrimSpace(raw); len(raw) > 20 {
			for _, secret := range authSecrets(raw) {
				if strings.Contains(logs, secret) {
					t.Errorf("%s: the log holds the presented token (or its signature)", tc.name)
				}
			}
		}
	}
}

// A request with no Authorization header is told that a bearer token is
// needed, without an error code (RFC 6750 section 3.1).
func TestAuthMissingHeader(t *testing.T) {
	ta := newTestApp(t, nil)
	cases := []struct{ method, path string }{
		{"GET", "/v1/customers"},
		{"POST", "/v1/orders"},
		{"GET", "/v1/numbers/1"},
		{"DELETE", "/v1/numbers/1"},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r := ta.request(tc.method, tc.path, nil, "", nil).must(t, http.StatusUnauthorized)
			if got, want := r.header.Get("WWW-Authenticate"), "Bearer"; got != want {
				t.Errorf("WWW-Authenticate: got %q, want %q", got, want)
			}
			r.problem(t)
		})
	}
}

// The clock-skew policy: a provider clock up to five minutes ahead is
// absorbed through nbf, while exp has no leeway at all.
func TestAuthClockSkew(t *testing.T) {
	ta := newTestApp(t, nil)
	iss := ta.issuer
	cases := []struct {
		name   string
		nbf    time.Duration
		exp    time.Duration
		status int
	}{
		{"nbf 2 minutes ahead", 2 * time.Minute, time.Hour, http.StatusOK},
		{"nbf 4 minutes ahead", 4 * time.Minute, time.Hour, http.StatusOK},
		{"nbf 6 minutes ahead", 6 * time.Minute, time.Hour, http.StatusUnauthorized},
		{"nbf 10 minutes ahead", 10 * time.Minute, time.Hour, http.StatusUnauthorized},
		{"exp in 30 seconds", 0, 30 * time.Second, http.StatusOK},
		{"exp 5 seconds ago", -time.Hour, -5 * time.Second, http.StatusUnauthorized},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now()
			c := iss.claims("skewed", "customers:read")
			c["nbf"] = now.Add(tc.nbf).Unix()
			c["iat"] = min(now.Unix(), now.Add(tc.nbf).Unix())
			c["exp"] = now.Add(tc.exp).Unix()
			ta.request("GET", "/v1/customers", nil, "", map[string]string{"Authorization": "Bearer " + iss.sign(t, c, jose.RS256)}).must(t, tc.status)
		})
	}
}

// Scopes are matched exactly: no prefix, wildcard, case folding, or write
// implying read.
func TestAuthScopes(t *testing.T) {
	ta := newTestApp(t, nil)
	iss := ta.issuer
	cases := []struct {
		name   string
		claims func(c map[string]any)
		status int
	}{
		{"the scope", func(c map[string]any) { c["scope"] = "customers:read" }, http.StatusOK},
		{"no scope claim at all", func(c map[string]any) { delete(c, "scope") }, http.StatusForbidden},
		{"empty scope", func(c map[string]any) { c["scope"] = "" }, http.StatusForbidden},
		{"write does not imply read", func(c map[string]any) { c["scope"] = "customers:write" }, http.StatusForbidden},
		{"other resource", func(c map[string]any) { c["scope"] = "orders:read numbers:read" }, http.StatusForbidden},
		{"different case", func(c map[string]any) { c["scope"] = "Customers:Read" }, http.StatusForbidden},
		{"longer name", func(c map[string]any) { c["scope"] = "customers:readonly" }, http.StatusForbidden},
		{"prefix", func(c map[string]any) { c["scope"] = "customers" }, http.StatusForbidden},
		{"wildcard", func(c map[string]any) { c["scope"] = "customers:* *" }, http.StatusForbidden},
		{"comma-separated", func(c map[string]any) { c["scope"] = "orders:read,customers:read" }, http.StatusForbidden},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := iss.claims("scoped")
			tc.claims(c)
			r := ta.request("GET", "/v1/customers", nil, "", map[string]string{"Authorization": "Bearer " + iss.sign(t, c, jose.RS256)}).must(t, tc.status)
			if tc.status != http.StatusForbidden {
				return
			}
			if got, want := r.header.Get("WWW-Authenticate"), `Bearer error="insufficient_scope", scope="customers:read"`; got != want {
				t.Errorf("WWW-Authenticate: got %q, want %q", got, want)
			}
			r.problem(t)
		})
	}
}

// authRoute is one /v1 route of the contract with the scope it needs and a
// body that would succeed, so that a missing scope check would show.
type authRoute struct {
	method, path, scope string
	body                any
}

// authRoutes is the contract's route table, with ids of rows that exist.
func authRoutes(customerID, numberID int64) []authRoute {
	customerPath := fmt.Sprintf("/v1/customers/%d", customerID)
	numberPath := fmt.Sprintf("/v1/numbers/%d", numberID)
	newCustomer := map[string]any{"code": "SCOPE-NEW", "name": "Baraka Otieno", "phone": "+254722000111"}
	newOrder := map[string]any{"customer_id": customerID, "item": "whole-exome-sequencing", "amount": "1250.00"}
	number := map[string]any{"value": "+55 84 91234-0002", "monthyPrice": "0.03", "setupPrice": "3.40", "currency": "U$"}
	return []authRoute{
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
}

// Every /v1 route checks its own scope, before it looks at anything else.
func TestAuthRouteScopes(t *testing.T) {
	ta := newTestApp(t, nil)
	iss := ta.issuer
	cust := ta.createCustomer("SCOPE-1", "+254712345678", nil)
	var num phoneNumber
	ta.do("POST", "/v1/numbers", map[string]any{"value": "+55 84 91234-0001", "monthyPrice": "0.03", "setupPrice": "3.40", "currency": "U$"}).
		must(t, http.StatusCreated).json(t, &num)
	routes := authRoutes(cust.ID, num.ID)

	t.Run("every scope but the one needed", func(t *testing.T) {
		for _, rt := range routes {
			t.Run(rt.method+" "+rt.path, func(t *testing.T) {
				others := slices.DeleteFunc(slices.Clone(allScopes), func(s string) bool { return s == rt.scope })
				tok := iss.token(t, "almost-everything", others...)
				r := ta.request(rt.method, rt.path, rt.body, "application/json", map[string]string{"Authorization": "Bearer " + tok})
				r.must(t, http.StatusForbidden)
				want := `Bearer error="insufficient_scope", scope="` + rt.scope + `"`
				if got := r.header.Get("WWW-Authenticate"); got != want {
					t.Errorf("WWW-Authenticate: got %q, want %q", got, want)
				}
				r.problem(t)
			})
		}
	})

	t.Run("read-only token on every write route", func(t *testing.T) {
		readOnly := iss.token(t, "read-only", "customers:read", "orders:read", "numbers:read")
		tables := []string{"customers", "orders", "phone_numbers"}
		before := map[string]int{}
		for _, table := range tables {
			before[table] = ta.count(table)
		}
		var custBefore customer
		var numBefore phoneNumber
		ta.do("GET", fmt.Sprintf("/v1/customers/%d", cust.ID), nil).must(t, http.StatusOK).json(t, &custBefore)
		ta.do("GET", fmt.Sprintf("/v1/numbers/%d", num.ID), nil).must(t, http.StatusOK).json(t, &numBefore)
		writes := 0
		for _, rt := range routes {
			if !strings.HasSuffix(rt.scope, ":write") {
				continue
			}
			writes++
			t.Run(rt.method+" "+rt.path, func(t *testing.T) {
				r := ta.request(rt.method, rt.path, rt.body, "application/json", map[string]string{"Authorization": "Bearer " + readOnly})
				r.must(t, http.StatusForbidden)
				want := `Bearer error="insufficient_scope", scope="` + rt.scope + `"`
				if got := r.header.Get("WWW-Authenticate"); got != want {
					t.Errorf("WWW-Authenticate: got %q, want %q", got, want)
				}
			})
		}
		if writes != 10 {
			t.Errorf("write routes walked: got %d, want 10", writes)
		}
		for _, table := range tables {
			if got := ta.count(table); got != before[table] {
				t.Errorf("rows in %s: got %d, want %d", table, got, before[table])
			}
		}
		var custAfter customer
		var numAfter phoneNumber
		ta.do("GET", fmt.Sprintf("/v1/customers/%d", cust.ID), nil).must(t, http.StatusOK).json(t, &custAfter)
		ta.do("GET", fmt.Sprintf("/v1/numbers/%d", num.ID), nil).must(t, http.StatusOK).json(t, &numAfter)
		if custAfter.Name != custBefore.Name {
			t.Errorf("customer name: got %q, want %q", custAfter.Name, custBefore.Name)
		}
		if numAfter != numBefore {
			t.Errorf("number: got %+v, want %+v", numAfter, numBefore)
		}
	})
}

// authIssuer is an OpenID Connect provider whose JWKS can be changed while
// the service runs, as a provider rotating its signing keys does.
type authIssuer struct {
	srv *httptest.Server
	url string // the issuer identifier, fixed before the server answers

	mu   sync.Mutex
	keys []jose.JSONWebKey
	hits atomic.Int64
}

// authIssuerHandler serves discovery and the JWKS for iss.
func authIssuerHandler(iss *authIssuer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                iss.url,
			"jwks_uri":                              iss.url + "/jwks",
			"authorization_endpoint":                iss.url + "/authorize",
			"token_endpoint":                        iss.url + "/token",
			"response_types_supported":              []string{"code"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		iss.hits.Add(1)
		iss.mu.Lock()
		set := jose.JSONWebKeySet{Keys: slices.Clone(iss.keys)}
		iss.mu.Unlock()
		_ = json.NewEncoder(w).Encode(set)
	})
	return mux
}

func newAuthIssuer(t testing.TB) *authIssuer {
	t.Helper()
	iss := &authIssuer{}
	iss.srv = httptest.NewServer(authIssuerHandler(iss))
	iss.url = iss.srv.URL
	t.Cleanup(iss.srv.Close)
	return iss
}

// publish makes the JWKS list exactly these keys' public halves.
func (iss *authIssuer) publish(keys ...jose.JSONWebKey) {
	iss.mu.Lock()
	defer iss.mu.Unlock()
	iss.keys = iss.keys[:0]
	for _, k := range keys {
		iss.keys = append(iss.keys, k.Public())
	}
}

// token signs valid customers:read claims for sub with key.
func (iss *authIssuer) token(t testing.TB, key jose.JSONWebKey, sub string) string {
	t.Helper()
	now := time.Now()
	return signJWT(t, jose.SignatureAlgorithm(key.Algorithm), key.Key, key.KeyID, map[string]any{
		"iss":   iss.url,
		"sub":   sub,
		"aud":   []string{authAudience},
		"iat":   now.Unix(),
		"exp":   now.Add(time.Hour).Unix(),
		"scope": "customers:read",
	})
}

// A provider that rotates its signing key is followed without a restart:
// the new key is fetched when a token names it, and a key dropped from the
// JWKS stops working once the set has been fetched again.
func TestAuthKeyRotation(t *testing.T) {
	iss := newAuthIssuer(t)
	keyA := jose.JSONWebKey{Key: authRSAKey(t), KeyID: "2026-01", Algorithm: string(jose.RS256), Use: "sig"}
	keyB := jose.JSONWebKey{Key: authECKey(t), KeyID: "2026-02", Algorithm: string(jose.ES256), Use: "sig"}
	keyC := jose.JSONWebKey{Key: authRSAKey(t), KeyID: "2026-03", Algorithm: string(jose.RS256), Use: "sig"}
	iss.publish(keyA)
	ta := newTestApp(t, map[string]string{"OIDC_ISSUER_URL": iss.url, "OIDC_AUDIENCE": authAudience})
	// Each step may need a refetch at once; the throttle has its own test.
	ta.server.auth.keys.minRefresh = 0

	get := func(t *testing.T, tok string, want int) {
		t.Helper()
		ta.request("GET", "/v1/customers", nil, "", map[string]string{"Authorization": "Bearer " + tok}).must(t, want)
	}
	steps := []struct {
		name    string
		publish []jose.JSONWebKey // nil: leave the JWKS as it is
		key     jose.JSONWebKey
		status  int
	}{
		{"current key", nil, keyA, http.StatusOK},
		{"next key before it is published", nil, keyB, http.StatusUnauthorized},
		{"next key once published", []jose.JSONWebKey{keyA, keyB}, keyB, http.StatusOK},
		{"current key during the overlap", nil, keyA, http.StatusOK},
		{"third key replacing both", []jose.JSONWebKey{keyC}, keyC, http.StatusOK},
		{"retired key after the refetch and the token cache's minute", nil, keyA, http.StatusUnauthorized},
		{"retired next key after the refetch", nil, keyB, http.StatusUnauthorized},
		{"third key still", nil, keyC, http.StatusOK},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.publish != nil {
				iss.publish(st.publish...)
			}
			if st.status == http.StatusUnauthorized {
				// A token verified before stays admitted for up to a minute
				// (tokenCache); the retired keys are checked as after it.
				ta.server.auth.cache.mu.Lock()
				ta.server.auth.cache.entries = nil
				ta.server.auth.cache.mu.Unlock()
			}
			get(t, iss.token(t, st.key, "rotated-"+st.key.KeyID), st.status)
		})
	}
}

// authReservePort returns a loopback address nothing listens on.
func authReservePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Start-up waits a bounded time for the provider: it gives up within its
// patience, naming the variable to fix, and succeeds when the provider
// comes up while it waits.
func TestAuthStartup(t *testing.T) {
	client := &http.Client{Timeout: 2 * time.Second}

	t.Run("provider refuses connections", func(t *testing.T) {
		issuer := "http://" + authReservePort(t)
		patience := 600 * time.Millisecond
		start := time.Now()
		a, err := newAuthenticator(t.Context(), issuer, authAudience, client, patience, slog.New(slog.DiscardHandler))
		elapsed := time.Since(start)
		if err == nil {
			t.Fatalf("got an authenticator %v, want an error", a)
		}
		if !strings.Contains(err.Error(), "OIDC_ISSUER_URL") {
			t.Errorf("error: got %q, want it to name OIDC_ISSUER_URL", err)
		}
		// The slack covers the refused attempts themselves, slowed by -race.
		if limit := patience + 400*time.Millisecond; elapsed > limit {
			t.Errorf("gave up after %v, want within %v", elapsed, limit)
		}
	})

	t.Run("provider up after 300ms", func(t *testing.T) {
		addr := authReservePort(t)
		iss := &authIssuer{url: "http://" + addr}
		key := jose.JSONWebKey{Key: authRSAKey(t), KeyID: "late-1", Algorithm: string(jose.RS256), Use: "sig"}
		iss.publish(key)
		up := make(chan error, 1)
		var srv *httptest.Server
		go func() {
			time.Sleep(300 * time.Millisecond)
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				up <- err
				return
			}
			srv = httptest.NewUnstartedServer(authIssuerHandler(iss))
			srv.Listener.Close()
			srv.Listener = ln
			srv.Start()
			up <- nil
		}()
		logs := &syncBuffer{}
		start := time.Now()
		a, err := newAuthenticator(t.Context(), iss.url, authAudience, client, 5*time.Second, slog.New(slog.NewJSONHandler(logs, nil)))
		elapsed := time.Since(start)
		if lerr := <-up; lerr != nil {
			t.Fatalf("could not bring the provider up on %s: %v", addr, lerr)
		}
		t.Cleanup(srv.Close)
		if err != nil {
			t.Fatalf("got %v, want the authenticator once the provider is up", err)
		}
		if elapsed < 300*time.Millisecond {
			t.Errorf("succeeded after %v, before the provider was up", elapsed)
		}
		if !strings.Contains(logs.String(), "retrying") {
			t.Errorf("log: got %q, want a warning that discovery is retried", logs.String())
		}
		// What it returned is wired to the provider that came up late.
		p, err := a.verify(t.Context(), iss.token(t, key, "late-sub"))
		if err != nil {
			t.Fatalf("verifying the late provider's token: got %v, want success", err)
		}
		if p.subject != "late-sub" || !p.scopes["customers:read"] {
			t.Errorf("principal: got %+v, want late-sub with customers:read", p)
		}
	})
}
