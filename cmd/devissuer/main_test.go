package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
)

// firstLine passes on the first line run writes to stderr, which names the
// address it listens on and the issuer.
type firstLine chan string

func (c firstLine) Write(p []byte) (int, error) {
	select {
	case c <- string(p):
	default:
	}
	return len(p), nil
}

// startIssuer serves on a free port until the test ends. It returns the issuer
// URL, a client that sends every request there whatever the URL's host is, and
// a context that makes go-oidc use that client.
func startIssuer(t *testing.T, args ...string) (issuer string, client *http.Client, ctx context.Context) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	line, done := make(firstLine, 1), make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"-addr", "127.0.0.1:0"}, args...), io.Discard, line) }()
	var addr string
	select {
	case l := <-line:
		if _, err := fmt.Sscanf(l, "devissuer: listening on %s as issuer %s", &addr, &issuer); err != nil {
			t.Fatalf("first stderr line: got %q, want the address and issuer (%v)", l, err)
		}
	case err := <-done:
		t.Fatalf("run: got error %v before listening, want a running server", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run after shutdown: got error %v, want nil", err)
		}
	})
	client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}}
	return issuer, client, oidc.ClientContext(t.Context(), client)
}

// call sends a form-encoded body to u and decodes the JSON answer into v.
func call(t *testing.T, client *http.Client, method, u, form string, v any) (resp *http.Response) {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(form))
	if err == nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err = client.Do(req)
	}
	if err != nil {
		t.Fatalf("%s: %v", u, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: decoding body: %v", u, err)
	}
	return resp
}

type claims struct {
	Iss, Sub, Scope, Jti string
	Aud                  []string // a slice, so that a bare string audience fails to decode
	ClientID             string   `json:"client_id"`
	Iat, Nbf, Exp        int64
}

func TestIssueAndVerify(t *testing.T) {
	tests := []struct {
		name, scope, wantAud, wantSub, wantScope string
		args                                     []string
		wantTTL                                  int64
	}{
		{name: "defaults", wantAud: "order-management", wantSub: "dev-user", wantScope: allScopes, wantTTL: 3600},
		{name: "flags and a scope", args: []string{"-audience", "orders-api", "-sub", "alice", "-expires-in", "60"},
			scope: " orders:read  orders:write", wantAud: "orders-api", wantSub: "alice", wantScope: "orders:read orders:write", wantTTL: 60},
		{name: "issuer with a path", args: []string{"-issuer", "http://issuer.test/realms/dev", "-expires-in", "86400"},
			scope: "numbers:read", wantAud: "order-management", wantSub: "dev-user", wantScope: "numbers:read", wantTTL: 86400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keyFile := filepath.Join(t.TempDir(), "issuer.pem")
			issuer, client, ctx := startIssuer(t, slices.Concat(tc.args, []string{"-key-file", keyFile})...)
			if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("key file: got %v (%v), want one with mode 0600", fi, err)
			}
			var body map[string]any
			resp := call(t, client, "POST", issuer+"/token", url.Values{"grant_type": {"client_credentials"}, "scope": {tc.scope}}.Encode(), &body)
			if got := resp.Header.Get("Cache-Control"); resp.StatusCode != http.StatusOK || got != "no-store" {
				t.Fatalf("POST /token: got status %d, Cache-Control %q, body %v; want 200, no-store", resp.StatusCode, got, body)
			}
			if body["token_type"] != "Bearer" || body["expires_in"] != float64(tc.wantTTL) || body["scope"] != tc.wantScope {
				t.Errorf("POST /token: got %v, want token_type Bearer, expires_in %d, scope %q", body, tc.wantTTL, tc.wantScope)
			}
			// -print-token, a process of its own on the same key file and flags,
			// must mint the same kind of token.
			var stdout strings.Builder
			printArgs := slices.Concat(tc.args, []string{"-print-token", "-key-file", keyFile, "-issuer", issuer, "-scope", tc.scope})
			if err := run(t.Context(), printArgs, &stdout, io.Discard); err != nil || !strings.HasSuffix(stdout.String(), "\n") {
				t.Fatalf("run %q: got error %v and stdout %q, want a token and a newline", printArgs, err, stdout.String())
			}
			var set jose.JSONWebKeySet
			call(t, client, "GET", issuer+"/jwks", "", &set)
			if k := set.Keys; len(k) != 1 || !k[0].IsPublic() || k[0].Use != "sig" || k[0].Algorithm != "RS256" || k[0].KeyID == "" {
				t.Fatalf("JWKS: got %+v, want one public RS256 signing key with a kid", k)
			}
			// Verify as the order-management service does: discovery at the
			// issuer, then go-oidc's verifier with the audience as client ID.
			provider, err := oidc.NewProvider(ctx, issuer)
			if err != nil {
				t.Fatalf("oidc.NewProvider(%q): %v", issuer, err)
			}
			for _, token := range []string{fmt.Sprint(body["access_token"]), strings.TrimSuffix(stdout.String(), "\n")} {
				jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256})
				if err != nil {
					t.Fatalf("parsing %q: %v", token, err)
				}
				if h := jws.Signatures[0].Header; h.ExtraHeaders["typ"] != "at+jwt" || h.KeyID != set.Keys[0].KeyID {
					t.Errorf("JOSE header: got typ %v kid %q, want typ at+jwt and kid %q", h.ExtraHeaders["typ"], h.KeyID, set.Keys[0].KeyID)
				}
				var c claims
				idToken, err := provider.Verifier(&oidc.Config{ClientID: tc.wantAud}).Verify(ctx, token)
				if err == nil {
					err = idToken.Claims(&c)
				}
				if err != nil {
					t.Fatalf("Verify: got error %v, want nil", err)
				}
				want := claims{Iss: issuer, Sub: tc.wantSub, Scope: tc.wantScope, Aud: []string{tc.wantAud}, ClientID: "devissuer",
					Jti: c.Jti, Iat: c.Iat, Nbf: c.Iat, Exp: c.Iat + tc.wantTTL}
				if !reflect.DeepEqual(c, want) || c.Jti == "" {
					t.Errorf("claims: got %+v, want %+v with a jti", c, want)
				}
			}
			var doc map[string]any
			call(t, client, "GET", issuer+"/.well-known/openid-configuration", "", &doc)
			wantDoc := map[string]any{"issuer": issuer, "jwks_uri": issuer + "/jwks", "token_endpoint": issuer + "/token",
				"id_token_signing_alg_values_supported": []any{"RS256"}}
			if !reflect.DeepEqual(doc, wantDoc) {
				t.Errorf("discovery: got %v, want %v", doc, wantDoc)
			}
		})
	}
}

func TestTokenErrors(t *testing.T) {
	issuer, client, _ := startIssuer(t)
	tests := []struct{ name, form, want string }{
		{"password grant", "grant_type=password", "unsupported_grant_type"},
		{"no grant_type", "scope=orders:read", "unsupported_grant_type"},
		{"unknown scope", "grant_type=client_credentials&scope=orders:read+orders:delete", "invalid_scope"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var body map[string]any
			resp := call(t, client, "POST", issuer+"/token", tc.form, &body)
			if got := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusBadRequest || got != "application/json" || body["error"] != tc.want {
				t.Errorf("got status %d, Content-Type %q, error %v; want 400, application/json, %s", resp.StatusCode, got, body["error"], tc.want)
			}
		})
	}
}

func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	// The Ed25519 key of RFC 8410 section 10.3: PKCS#8, but not RSA.
	ed25519 := "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n"
	if err := os.WriteFile(filepath.Join(dir, "ed25519.pem"), []byte(ed25519), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, args, want string }{
		{"expires-in zero", "-expires-in 0", "want 1 to 86400 seconds"},
		{"expires-in too long", "-print-token -expires-in 86401", "want 1 to 86400 seconds"},
		{"unknown scope", "-print-token -scope orders:delete", "unknown scope"},
		{"unknown flag", "-nope", "-nope"},
		{"help", "-h", "help requested"},
		{"key file not PEM", "-key-file main.go", "want a PKCS#8 RSA private key"},
		{"key file with an Ed25519 key", "-key-file " + filepath.Join(dir, "ed25519.pem"), "want a PKCS#8 RSA private key"},
		{"key file is a directory", "-key-file " + dir, "is a directory"},
		{"key file in a missing directory", "-key-file " + filepath.Join(dir, "none", "k.pem"), "no such file"},
		{"invalid listen address", "-addr 127.0.0.1:-1", "invalid port"},
	}
	// A cancelled context makes a wrongly accepted configuration return nil
	// at once instead of serving.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := run(ctx, append([]string{"-addr", "127.0.0.1:0"}, strings.Fields(tc.args)...), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run(%s): got error %v, want one containing %q", tc.args, err, tc.want)
			}
		})
	}
}
