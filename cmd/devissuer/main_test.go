package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

var client = &http.Client{Timeout: 10 * time.Second}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func envFrom(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// startIssuer serves the issuer on a free port and returns its base URL, its
// log output and a stop function that waits for a clean shutdown; stop also
// runs at the end of the test.
func startIssuer(t *testing.T, env map[string]string, args ...string) (base string, logs *syncBuffer, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan string, 1), make(chan error, 1)
	logs = &syncBuffer{}
	go func() {
		args := append([]string{"-addr", "127.0.0.1:0"}, args...)
		done <- runNotify(ctx, args, envFrom(env), io.Discard, logs, func(addr string) { ready <- addr })
	}()
	select {
	case addr := <-ready:
		stop = sync.OnceFunc(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run after shutdown: got error %v, want nil", err)
			}
		})
		t.Cleanup(stop)
		return "http://" + addr, logs, stop
	case err := <-done:
		cancel()
		t.Fatalf("run: got error %v before listening, want a running server", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("issuer did not start within 30s")
	}
	return "", nil, nil
}

func postToken(t *testing.T, base string, form url.Values) (status int, header http.Header, body map[string]any) {
	t.Helper()
	resp, err := client.PostForm(base+"/token", form)
	if err != nil {
		t.Fatalf("POST /token: %v", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("POST /token: decoding body: %v", err)
	}
	return resp.StatusCode, resp.Header, body
}

func mustToken(t *testing.T, base string, form url.Values) string {
	t.Helper()
	status, _, body := postToken(t, base, form)
	token, _ := body["access_token"].(string)
	if status != http.StatusOK || token == "" {
		t.Fatalf("POST /token: got status %d body %v, want 200 with an access_token", status, body)
	}
	return token
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := client.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: got status %d, want 200", u, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: decoding body: %v", u, err)
	}
}

type claims struct {
	Iss      string   `json:"iss"`
	Sub      string   `json:"sub"`
	Aud      []string `json:"aud"` // a slice so that a bare string audience fails to decode
	Scope    string   `json:"scope"`
	ClientID string   `json:"client_id"`
	Jti      string   `json:"jti"`
	Iat      int64    `json:"iat"`
	Nbf      int64    `json:"nbf"`
	Exp      int64    `json:"exp"`
}

// verify checks token the way the order-management service does: discovery
// from the issuer, then go-oidc's verifier with the audience as client ID.
func verify(t *testing.T, issuer, audience, token string) claims {
	t.Helper()
	ctx := t.Context()
	provider, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		t.Fatalf("oidc.NewProvider(%q): %v", issuer, err)
	}
	v := provider.Verifier(&oidc.Config{ClientID: audience, SupportedSigningAlgs: []string{"RS256", "ES256"}})
	return verifyWith(t, v, token)
}

func verifyWith(t *testing.T, v *oidc.IDTokenVerifier, token string) claims {
	t.Helper()
	idToken, err := v.Verify(t.Context(), token)
	if err != nil {
		t.Fatalf("Verify: got error %v, want nil", err)
	}
	var c claims
	if err := idToken.Claims(&c); err != nil {
		t.Fatalf("Claims: %v", err)
	}
	return c
}

func tokenHeader(t *testing.T, token string) map[string]any {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[0])
	if err != nil {
		t.Fatalf("decoding JOSE header: %v", err)
	}
	var h map[string]any
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatalf("decoding JOSE header: %v", err)
	}
	return h
}

func TestIssueAndVerify(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		args      []string
		form      url.Values
		wantAlg   string
		wantAud   string
		wantSub   string
		wantScope string
		wantTTL   int64
	}{
		{
			name:    "RS256 defaults",
			form:    url.Values{"grant_type": {"client_credentials"}},
			wantAlg: "RS256", wantAud: "order-management", wantSub: "dev-user", wantScope: allScopes, wantTTL: 3600,
		},
		{
			name: "ES256 with scope, sub and expires_in",
			args: []string{"-alg", "ES256"},
			form: url.Values{"grant_type": {"client_credentials"}, "scope": {"orders:read orders:write orders:read"},
				"sub": {"alice"}, "expires_in": {"60"}},
			wantAlg: "ES256", wantAud: "order-management", wantSub: "alice", wantScope: "orders:read orders:write", wantTTL: 60,
		},
		{
			name:    "environment fallbacks",
			env:     map[string]string{"DEVISSUER_ALG": "ES256", "DEVISSUER_AUDIENCE": "orders-api"},
			form:    url.Values{"grant_type": {"client_credentials"}, "scope": {"numbers:read"}, "expires_in": {"86400"}},
			wantAlg: "ES256", wantAud: "orders-api", wantSub: "dev-user", wantScope: "numbers:read", wantTTL: 86400,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base, logs, _ := startIssuer(t, tc.env, tc.args...)
			if got, want := logs.String(), "issuer="+base; !strings.Contains(got, want) {
				t.Errorf("start log: got %q, want it to contain %q", got, want)
			}
			status, header, body := postToken(t, base, tc.form)
			if status != http.StatusOK {
				t.Fatalf("POST /token: got status %d body %v, want 200", status, body)
			}
			if got := header.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control: got %q, want no-store", got)
			}
			if got := body["token_type"]; got != "Bearer" {
				t.Errorf("token_type: got %v, want Bearer", got)
			}
			if got := body["expires_in"]; got != float64(tc.wantTTL) {
				t.Errorf("expires_in: got %v, want %d", got, tc.wantTTL)
			}
			if got := body["scope"]; got != tc.wantScope {
				t.Errorf("response scope: got %v, want %q", got, tc.wantScope)
			}
			token := body["access_token"].(string)

			h := tokenHeader(t, token)
			if h["typ"] != "at+jwt" || h["alg"] != tc.wantAlg || h["kid"] == "" || h["kid"] == nil {
				t.Errorf("JOSE header: got %v, want typ at+jwt, alg %s and a kid", h, tc.wantAlg)
			}
			c := verify(t, base, tc.wantAud, token)
			if c.Iss != base {
				t.Errorf("iss: got %q, want %q", c.Iss, base)
			}
			if c.Sub != tc.wantSub {
				t.Errorf("sub: got %q, want %q", c.Sub, tc.wantSub)
			}
			if len(c.Aud) != 1 || c.Aud[0] != tc.wantAud {
				t.Errorf("aud: got %q, want [%q]", c.Aud, tc.wantAud)
			}
			if c.Scope != tc.wantScope {
				t.Errorf("scope claim: got %q, want %q", c.Scope, tc.wantScope)
			}
			if c.ClientID != "devissuer" {
				t.Errorf("client_id: got %q, want devissuer", c.ClientID)
			}
			if c.Jti == "" || c.Nbf != c.Iat || c.Exp-c.Iat != tc.wantTTL {
				t.Errorf("jti/iat/nbf/exp: got %q/%d/%d/%d, want a jti, nbf == iat and exp-iat == %d",
					c.Jti, c.Iat, c.Nbf, c.Exp, tc.wantTTL)
			}
		})
	}
}

func TestTokenErrors(t *testing.T) {
	base, _, _ := startIssuer(t, nil)
	tests := []struct {
		name string
		form url.Values
	}{
		{"bad grant_type", url.Values{"grant_type": {"password"}}},
		{"missing grant_type", url.Values{"scope": {"orders:read"}}},
		{"expires_in over max", url.Values{"grant_type": {"client_credentials"}, "expires_in": {"86401"}}},
		{"expires_in zero", url.Values{"grant_type": {"client_credentials"}, "expires_in": {"0"}}},
		{"expires_in not a number", url.Values{"grant_type": {"client_credentials"}, "expires_in": {"1h"}}},
		{"scope with a quote", url.Values{"grant_type": {"client_credentials"}, "scope": {`orders:read "x`}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, header, body := postToken(t, base, tc.form)
			if status != http.StatusBadRequest {
				t.Errorf("status: got %d, want 400", status)
			}
			if got := header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type: got %q, want application/json", got)
			}
			if got := body["error"]; got != "invalid_request" {
				t.Errorf("error: got %v, want invalid_request", got)
			}
			if desc, _ := body["error_description"].(string); desc == "" {
				t.Errorf("error_description: got %v, want a message", body["error_description"])
			}
		})
	}
}

func TestDiscoveryAndJWKS(t *testing.T) {
	for _, alg := range []string{"RS256", "ES256"} {
		t.Run(alg, func(t *testing.T) {
			base, _, _ := startIssuer(t, nil, "-alg", alg)
			var doc map[string]any
			getJSON(t, base+"/.well-known/openid-configuration", &doc)
			want := map[string]any{
				"issuer":                                base,
				"jwks_uri":                              base + "/jwks",
				"token_endpoint":                        base + "/token",
				"response_types_supported":              []any{"token"},
				"subject_types_supported":               []any{"public"},
				"id_token_signing_alg_values_supported": []any{alg},
				"grant_types_supported":                 []any{"client_credentials"},
			}
			for k, w := range want {
				if got, _ := json.Marshal(doc[k]); string(got) != string(must(json.Marshal(w))) {
					t.Errorf("discovery %s: got %s, want %s", k, got, must(json.Marshal(w)))
				}
			}

			var set struct{ Keys []map[string]any }
			getJSON(t, base+"/jwks", &set)
			if len(set.Keys) != 1 {
				t.Fatalf("JWKS: got %d keys, want 1", len(set.Keys))
			}
			k := set.Keys[0]
			kid := tokenHeader(t, mustToken(t, base, url.Values{"grant_type": {"client_credentials"}}))["kid"]
			if k["kid"] != kid || k["use"] != "sig" || k["alg"] != alg {
				t.Errorf("JWK: got kid %v use %v alg %v, want kid %v use sig alg %s", k["kid"], k["use"], k["alg"], kid, alg)
			}
			for _, private := range []string{"d", "p", "q", "dp", "dq", "qi"} {
				if _, ok := k[private]; ok {
					t.Errorf("JWK: got private member %q, want public key only", private)
				}
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestKeyFilePersistence(t *testing.T) {
	for _, alg := range []string{"RS256", "ES256"} {
		t.Run(alg, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "dev")
			keyFile := filepath.Join(dir, "issuer.pem")
			base1, _, stop1 := startIssuer(t, nil, "-alg", alg, "-key-file", keyFile)
			token := mustToken(t, base1, url.Values{"grant_type": {"client_credentials"}, "sub": {"carol"}})
			stop1()

			fi, err := os.Stat(keyFile)
			if err != nil {
				t.Fatalf("stat key file: %v", err)
			}
			if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode: got %v, want 0600", fi.Mode().Perm())
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("key directory: got %d entries, want only the key file", len(entries))
			}

			// The restarted issuer listens elsewhere, so the first issuer's
			// name is kept and only its keys are fetched from the new address.
			base2, _, _ := startIssuer(t, nil, "-alg", alg, "-key-file", keyFile, "-issuer", base1)
			keys := oidc.NewRemoteKeySet(t.Context(), base2+"/jwks")
			v := oidc.NewVerifier(base1, keys, &oidc.Config{ClientID: "order-management", SupportedSigningAlgs: []string{alg}})
			if c := verifyWith(t, v, token); c.Sub != "carol" {
				t.Errorf("sub: got %q, want carol", c.Sub)
			}
		})
	}
}

func TestPrintToken(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "issuer.pem")
	base, _, _ := startIssuer(t, nil, "-key-file", keyFile)
	tests := []struct {
		name      string
		env       map[string]string
		args      []string
		wantSub   string
		wantScope string
	}{
		{"flags", nil, []string{"-key-file", keyFile, "-issuer", base, "-print-token", "-scope", "orders:read", "-sub", "bob"},
			"bob", "orders:read"},
		{"environment and defaults", map[string]string{"DEVISSUER_KEY_FILE": keyFile, "DEVISSUER_ISSUER": base},
			[]string{"-print-token"}, "dev-user", allScopes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout bytes.Buffer
			if err := run(t.Context(), tc.args, envFrom(tc.env), &stdout, io.Discard); err != nil {
				t.Fatalf("run: got error %v, want nil", err)
			}
			out := stdout.String()
			token := strings.TrimSuffix(out, "\n")
			if strings.ContainsAny(token, " \n") || strings.Count(token, ".") != 2 {
				t.Fatalf("stdout: got %q, want one compact JWT and a newline", out)
			}
			c := verify(t, base, "order-management", token)
			if c.Sub != tc.wantSub || c.Scope != tc.wantScope {
				t.Errorf("claims: got sub %q scope %q, want sub %q scope %q", c.Sub, c.Scope, tc.wantSub, tc.wantScope)
			}
		})
	}
}

func TestIssuerWithPath(t *testing.T) {
	srv := httptest.NewUnstartedServer(nil)
	issuerURL := "http://" + srv.Listener.Addr().String() + "/realms/dev"
	key, err := loadOrCreateKey("", "ES256")
	if err != nil {
		t.Fatal(err)
	}
	iss, err := newIssuer(issuerURL, "order-management", "ES256", key)
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = iss.routes()
	srv.Start()
	defer srv.Close()
	token := mustToken(t, issuerURL, url.Values{"grant_type": {"client_credentials"}})
	if c := verify(t, issuerURL, "order-management", token); c.Iss != issuerURL {
		t.Errorf("iss: got %q, want %q", c.Iss, issuerURL)
	}
}

func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	ecKey := filepath.Join(dir, "ec.pem")
	if _, err := loadOrCreateKey(ecKey, "ES256"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unsupported alg", []string{"-alg", "HS256"}, "want RS256 or ES256"},
		{"issuer not http", []string{"-issuer", "ftp://example.com"}, "absolute http(s) URL"},
		{"issuer with query", []string{"-issuer", "http://example.com/?a=b"}, "absolute http(s) URL"},
		{"empty audience", []string{"-audience", ""}, "-audience"},
		{"positional argument", []string{"serve"}, "unexpected arguments"},
		{"unknown flag", []string{"-nope"}, "-nope"},
		{"print-token without key file", []string{"-print-token"}, "needs -key-file"},
		{"print-token expires-in too long", []string{"-print-token", "-key-file", ecKey, "-alg", "ES256", "-expires-in", "86401"}, "expires_in"},
		{"print-token bad scope", []string{"-print-token", "-key-file", ecKey, "-alg", "ES256", "-scope", `a\b`}, "not allowed"},
		{"key file not PEM", []string{"-key-file", garbage}, "PRIVATE KEY"},
		{"key file for another alg", []string{"-key-file", ecKey, "-alg", "RS256"}, "cannot sign RS256"},
		{"key file is a directory", []string{"-key-file", dir}, dir},
		{"invalid listen address", []string{"-addr", "127.0.0.1:-1"}, "invalid port"},
	}
	// An already cancelled context makes a wrongly accepted configuration
	// return nil promptly instead of serving forever.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-addr", "127.0.0.1:0"}, tc.args...)
			err := run(ctx, args, envFrom(nil), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run(%q): got error %v, want one containing %q", tc.args, err, tc.want)
			}
		})
	}
	t.Run("help", func(t *testing.T) {
		var stderr bytes.Buffer
		err := run(ctx, []string{"-h"}, envFrom(nil), io.Discard, &stderr)
		if !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr.String(), "-print-token") {
			t.Errorf("run(-h): got error %v and usage %q, want flag.ErrHelp and a usage listing -print-token", err, stderr.String())
		}
	})
}

func TestIssuerFor(t *testing.T) {
	tests := []struct{ issuer, addr, want string }{
		{"", "127.0.0.1:9000", "http://127.0.0.1:9000"},
		{"", "localhost:9100", "http://localhost:9100"},
		{"", ":9000", "http://127.0.0.1:9000"},
		{"", "0.0.0.0:9000", "http://127.0.0.1:9000"},
		{"", "[::]:9000", "http://127.0.0.1:9000"},
		{"", "[::1]:9000", "http://[::1]:9000"},
		{"https://auth.example.com", "127.0.0.1:9000", "https://auth.example.com"},
	}
	for _, tc := range tests {
		t.Run(tc.addr+" "+tc.issuer, func(t *testing.T) {
			if got := issuerFor(tc.issuer, tc.addr); got != tc.want {
				t.Errorf("issuerFor(%q, %q): got %q, want %q", tc.issuer, tc.addr, got, tc.want)
			}
		})
	}
}
