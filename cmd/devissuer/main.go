// Command devissuer is a development-only OAuth2/OpenID Connect token issuer
// that mints access tokens the order-management API accepts, for machines
// without Docker. Never deploy it: it hands any scope to anyone who asks.
package main

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
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
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-jose/go-jose/v4"
)

const (
	allScopes  = "customers:read customers:write orders:read orders:write numbers:read numbers:write"
	defaultTTL = 3600
	maxTTL     = 86400
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "devissuer:", err)
		os.Exit(1)
	}
}

// run parses args and either prints one token (-print-token) or serves the
// issuer until ctx is cancelled.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return runNotify(ctx, args, getenv, stdout, stderr, nil)
}

// runNotify is run with a hook that receives the bound address once the
// server accepts connections, so tests can listen on port 0.
func runNotify(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, ready func(addr string)) error {
	env := func(name, def string) string { return cmp.Or(getenv(name), def) }
	fset := flag.NewFlagSet("devissuer", flag.ContinueOnError)
	fset.SetOutput(stderr)
	addr := fset.String("addr", env("DEVISSUER_ADDR", "127.0.0.1:9000"), "listen address (env DEVISSUER_ADDR)")
	issuerURL := fset.String("issuer", env("DEVISSUER_ISSUER", ""), "issuer URL put in tokens and discovery (env DEVISSUER_ISSUER; default http://<addr>)")
	audience := fset.String("audience", env("DEVISSUER_AUDIENCE", "order-management"), "token audience (env DEVISSUER_AUDIENCE)")
	keyFile := fset.String("key-file", env("DEVISSUER_KEY_FILE", ""), "PEM file persisting the signing key, created 0600 if missing; empty means an ephemeral key (env DEVISSUER_KEY_FILE)")
	alg := fset.String("alg", env("DEVISSUER_ALG", "RS256"), "signing algorithm, RS256 or ES256 (env DEVISSUER_ALG)")
	printToken := fset.Bool("print-token", false, "print one token to stdout and exit instead of serving")
	scope := fset.String("scope", allScopes, "space-separated scopes for -print-token")
	sub := fset.String("sub", "dev-user", "subject for -print-token")
	expiresIn := fset.Int("expires-in", defaultTTL, "lifetime in seconds for -print-token (max 86400)")
	if err := fset.Parse(args); err != nil {
		return err
	}
	if fset.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fset.Args())
	}
	if *alg != "RS256" && *alg != "ES256" {
		return fmt.Errorf("-alg %q: want RS256 or ES256", *alg)
	}
	// A throwaway key would yield a token that no running issuer can vouch for.
	if *printToken && *keyFile == "" {
		return errors.New("-print-token needs -key-file, the same one the running issuer uses")
	}
	key, err := loadOrCreateKey(*keyFile, *alg)
	if err != nil {
		return err
	}

	if *printToken {
		scopes, subject, ttl, err := parseRequest(*scope, *sub, strconv.Itoa(*expiresIn))
		if err != nil {
			return err
		}
		iss, err := newIssuer(issuerFor(*issuerURL, *addr), *audience, *alg, key)
		if err != nil {
			return err
		}
		token, err := iss.mint(subject, scopes, ttl)
		if err == nil {
			_, err = fmt.Fprintln(stdout, token)
		}
		return err
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	iss, err := newIssuer(issuerFor(*issuerURL, ln.Addr().String()), *audience, *alg, key)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           iss.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	slog.New(slog.NewTextHandler(stderr, nil)).Info("devissuer listening (development only)",
		"addr", ln.Addr().String(), "issuer", iss.iss, "audience", iss.audience, "alg", iss.alg)
	if ready != nil {
		ready(ln.Addr().String())
	}
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}

// issuerFor returns issuer, or an http URL for addr when it is empty, so that
// the default issuer follows -addr and port 0 in tests.
func issuerFor(issuer, addr string) string {
	if issuer != "" {
		return issuer
	}
	host, port, _ := net.SplitHostPort(addr)
	// A wildcard listen address is not something a client can dial.
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

type issuer struct {
	iss, audience, alg string
	pub                jose.JSONWebKey
	signer             jose.Signer
}

func newIssuer(iss, audience, alg string, key crypto.Signer) (*issuer, error) {
	u, err := url.Parse(iss)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("-issuer %q: want an absolute http(s) URL without query or fragment", iss)
	}
	if audience == "" {
		return nil, errors.New("-audience must not be empty")
	}
	pub := jose.JSONWebKey{Key: key.Public(), Algorithm: alg, Use: "sig"}
	// A thumbprint kid stays the same across restarts with a persisted key.
	thumb, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, err
	}
	pub.KeyID = base64.RawURLEncoding.EncodeToString(thumb)
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: jose.JSONWebKey{Key: key, KeyID: pub.KeyID}},
		(&jose.SignerOptions{}).WithType("at+jwt"))
	if err != nil {
		return nil, err
	}
	return &issuer{iss: iss, audience: audience, alg: alg, pub: pub, signer: signer}, nil
}

func (s *issuer) mint(sub string, scopes []string, ttl int) (string, error) {
	now := time.Now().Unix()
	payload, err := json.Marshal(map[string]any{
		"iss": s.iss, "sub": sub, "aud": []string{s.audience},
		"iat": now, "nbf": now, "exp": now + int64(ttl), "jti": rand.Text(),
		"scope": strings.Join(scopes, " "), "client_id": "devissuer",
	})
	if err != nil {
		return "", err
	}
	jws, err := s.signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return jws.CompactSerialize()
}

// routes mounts the endpoints under the issuer's path so that an issuer such
// as http://host/realms/dev still has discovery where OIDC clients look for it.
func (s *issuer) routes() http.Handler {
	u, _ := url.Parse(s.iss)
	prefix, base := strings.TrimSuffix(u.Path, "/"), strings.TrimSuffix(s.iss, "/")
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+prefix+"/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{
			"issuer":                                s.iss,
			"jwks_uri":                              base + "/jwks",
			"token_endpoint":                        base + "/token",
			"response_types_supported":              []string{"token"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{s.alg},
			"grant_types_supported":                 []string{"client_credentials"},
			"scopes_supported":                      strings.Fields(allScopes),
		})
	})
	mux.HandleFunc("GET "+prefix+"/jwks", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{s.pub}})
	})
	mux.HandleFunc("POST "+prefix+"/token", s.token)
	return mux
}

func (s *issuer) token(w http.ResponseWriter, r *http.Request) {
	// RFC 6749 section 5.1: token responses must not be cached.
	w.Header().Set("Cache-Control", "no-store")
	fail := func(desc string) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": desc})
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		fail("malformed form body: " + err.Error())
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
		fail(fmt.Sprintf("grant_type %q is not supported; use client_credentials", gt))
		return
	}
	scopes, sub, ttl, err := parseRequest(r.PostForm.Get("scope"), r.PostForm.Get("sub"), r.PostForm.Get("expires_in"))
	if err != nil {
		fail(err.Error())
		return
	}
	token, err := s.mint(sub, scopes, ttl)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "server_error", "error_description": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": token, "token_type": "Bearer", "expires_in": ttl, "scope": strings.Join(scopes, " "),
	})
}

// parseRequest applies the defaults and limits that POST /token and
// -print-token share.
func parseRequest(scope, sub, expiresIn string) (scopes []string, subject string, ttl int, err error) {
	ttl = defaultTTL
	if expiresIn != "" {
		if ttl, err = strconv.Atoi(expiresIn); err != nil || ttl < 1 || ttl > maxTTL {
			return nil, "", 0, fmt.Errorf("expires_in %q: want an integer from 1 to %d", expiresIn, maxTTL)
		}
	}
	scopes, err = parseScope(cmp.Or(scope, allScopes))
	return scopes, cmp.Or(sub, "dev-user"), ttl, err
}

// parseScope splits a scope parameter, dropping duplicates, and rejects
// characters RFC 6749 section 3.3 does not allow. Unknown scopes are accepted
// so that developers can test how the API treats them.
func parseScope(scope string) ([]string, error) {
	var out []string
	for _, sc := range strings.Fields(scope) {
		for _, c := range sc {
			if c < 0x21 || c == '"' || c == '\\' || c > 0x7e {
				return nil, fmt.Errorf("scope %q contains a character not allowed by RFC 6749", sc)
			}
		}
		if !slices.Contains(out, sc) {
			out = append(out, sc)
		}
	}
	return out, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// loadOrCreateKey reads the PKCS#8 PEM key at path, creating it if missing.
// An empty path yields an ephemeral key.
func loadOrCreateKey(path, alg string) (crypto.Signer, error) {
	if path != "" {
		if data, err := os.ReadFile(path); err == nil {
			return parseKey(path, data, alg)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	var key crypto.Signer
	var err error
	if alg == "ES256" {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	} else {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil || path == "" {
		return key, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	// Writing a 0600 temp file and hard-linking it into place means a
	// concurrent -print-token never reads a half-written key, and the loser of
	// a creation race adopts the winner's key instead of overwriting it.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".devissuer-*.pem")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp.Name(), path)
	}
	if errors.Is(err, fs.ErrExist) {
		return loadOrCreateKey(path, alg)
	}
	return key, err
}

func parseKey(path string, data []byte, alg string) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s: want a PKCS#8 \"PRIVATE KEY\" PEM block", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if alg == "RS256" {
			return k, nil
		}
	case *ecdsa.PrivateKey:
		if alg == "ES256" && k.Curve == elliptic.P256() {
			return k, nil
		}
	}
	return nil, fmt.Errorf("%s holds a %T, which cannot sign %s; pass the matching -alg or another -key-file", path, key, alg)
}
