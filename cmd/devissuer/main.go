// Command devissuer is a development-only OAuth2/OpenID Connect issuer of RS256
// access tokens for the order-management API, for machines without Keycloak.
// It must never be deployed: it hands any scope to anyone who asks.
package main

import (
	"cmp"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// allScopes are the scopes the API checks, all in a token unless fewer are asked for.
const allScopes = "customers:read customers:write orders:read orders:write numbers:read numbers:write"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "devissuer:", err)
		os.Exit(1)
	}
}

// run prints one token (-print-token) or serves until ctx is done. Its first
// line on stderr names the address, which is how a test on port 0 finds it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fset := flag.NewFlagSet("devissuer", flag.ContinueOnError)
	fset.SetOutput(stderr)
	addr := fset.String("addr", "127.0.0.1:9000", "listen address")
	issuerURL := fset.String("issuer", "", "issuer URL in tokens and discovery (default http://<addr>; set it if -addr has no host)")
	audience := fset.String("audience", "order-management", "token audience")
	keyFile := fset.String("key-file", "", "PEM file persisting the RSA key, created 0600 if missing; empty means an ephemeral key")
	printToken := fset.Bool("print-token", false, "print one token to stdout and exit instead of serving")
	scopes := allScopes
	fset.Func("scope", "space-separated scopes for -print-token (default all)", func(v string) (err error) {
		scopes, err = checkScope(v)
		return err
	})
	sub := fset.String("sub", "dev-user", "subject of the tokens")
	expiresIn := fset.Int("expires-in", 3600, "token lifetime in seconds, at most 86400")
	if err := fset.Parse(args); err != nil {
		return err
	}
	if *expiresIn < 1 || *expiresIn > 86400 {
		return fmt.Errorf("-expires-in %d: want 1 to 86400 seconds", *expiresIn)
	}
	key, err := loadOrCreateKey(*keyFile)
	if err != nil {
		return err
	}
	var ln net.Listener
	if !*printToken {
		if ln, err = net.Listen("tcp", *addr); err != nil {
			return err
		}
		*addr = ln.Addr().String() // the port that port 0 turned into
	}
	// A thumbprint kid stays the same across restarts with a persisted key.
	thumb, _ := (&jose.JSONWebKey{Key: key}).Thumbprint(crypto.SHA256) // fails only for unknown key types
	jwk := jose.JSONWebKey{Key: key, KeyID: base64.RawURLEncoding.EncodeToString(thumb), Algorithm: "RS256", Use: "sig"}
	s := &issuer{url: cmp.Or(*issuerURL, "http://"+*addr), audience: *audience, sub: *sub, ttl: *expiresIn, jwk: jwk}
	if *printToken {
		token, err := s.mint(scopes)
		if err == nil {
			_, err = fmt.Fprintln(stdout, token)
		}
		return err
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(stderr, "devissuer: listening on %s as issuer %s for audience %s (development only)\n", ln.Addr(), s.url, s.audience)
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
		// The server's timeouts bound how long in-flight requests can delay this.
		return srv.Shutdown(context.WithoutCancel(ctx))
	}
}

type issuer struct {
	url, audience, sub string
	ttl                int
	jwk                jose.JSONWebKey // the private signing key
}

func (s *issuer) mint(scopes string) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: s.jwk}, (&jose.SignerOptions{}).WithType("at+jwt"))
	if err != nil {
		return "", err
	}
	now := time.Now().Unix()
	return jwt.Signed(signer).Claims(map[string]any{
		"iss": s.url, "sub": s.sub, "aud": []string{s.audience}, "iat": now, "nbf": now,
		"exp": now + int64(s.ttl), "scope": scopes, "jti": rand.Text(), "client_id": "devissuer",
	}).Serialize()
}

// ServeHTTP matches endpoints by their last path segments only, so that an
// issuer with a path, such as http://host/realms/dev, works too.
func (s *issuer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	base := strings.TrimSuffix(s.url, "/")
	switch {
	case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/.well-known/openid-configuration"):
		writeJSON(w, http.StatusOK, map[string]any{"issuer": s.url, "jwks_uri": base + "/jwks",
			"token_endpoint": base + "/token", "id_token_signing_alg_values_supported": []string{"RS256"}})
	case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/jwks"):
		writeJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{s.jwk.Public()}})
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/token"):
		// RFC 6749 section 5.1: token responses must not be cached.
		w.Header().Set("Cache-Control", "no-store")
		scopes, err := checkScope(r.PostFormValue("scope"))
		if r.PostFormValue("grant_type") != "client_credentials" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type"})
		} else if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_scope", "error_description": err.Error()})
		} else if token, err := s.mint(scopes); err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "server_error"})
		} else {
			writeJSON(w, http.StatusOK, map[string]any{"access_token": token, "token_type": "Bearer", "expires_in": s.ttl, "scope": scopes})
		}
	default:
		http.NotFound(w, r)
	}
}

// checkScope refuses scopes the API does not know, so that a typo fails here
// rather than as a puzzling 403 later. No scope at all means every scope.
func checkScope(scope string) (string, error) {
	for _, sc := range strings.Fields(scope) {
		if !slices.Contains(strings.Fields(allScopes), sc) {
			return "", fmt.Errorf("unknown scope %q; known: %s", sc, allScopes)
		}
	}
	return cmp.Or(strings.Join(strings.Fields(scope), " "), allScopes), nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// loadOrCreateKey reads the PKCS#8 PEM RSA key at path, creating it if it is
// missing. An empty path yields an ephemeral key.
func loadOrCreateKey(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		var key any
		if block, _ := pem.Decode(data); block != nil {
			key, _ = x509.ParsePKCS8PrivateKey(block.Bytes)
		}
		if rsaKey, ok := key.(*rsa.PrivateKey); ok {
			return rsaKey, nil
		}
		return nil, fmt.Errorf("%s: want a PKCS#8 RSA private key in PEM", path)
	} else if path != "" && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil || path == "" {
		return key, err
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key) // fails only for unknown key types
	return key, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}
