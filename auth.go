package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

// The service is an OAuth2 resource server: it verifies the bearer access
// token on each request and checks its scopes, and does nothing else. There
// are no sessions, no cookies, and no way to turn verification off.
//
// Clock skew: go-oidc allows a token's nbf to be up to five minutes in the
// future and gives exp no leeway. Providers issue access tokens with nbf at
// or before the moment of issue, so the five minutes only absorb a provider
// clock running ahead; an expired token is refused at once, since a client
// that holds one can always get a fresh token.

// signingAlgs are the signatures accepted. Symmetric algorithms and "none"
// are absent on purpose: a public JWKS key must never verify an HMAC.
var signingAlgs = []string{
	oidc.RS256, oidc.RS384, oidc.RS512,
	oidc.ES256, oidc.ES384, oidc.ES512,
	oidc.PS256, oidc.PS384, oidc.PS512,
	oidc.EdDSA,
}

// authenticator verifies access tokens issued by one provider for one
// audience, with go-oidc's verifier over the provider's JWKS (keyset.go), so
// key rotation needs no restart.
type authenticator struct {
	verifier *oidc.IDTokenVerifier
	keys     *keySet
	log      *slog.Logger
	cache    tokenCache
}

// newAuthenticator discovers the provider at issuer and loads its keys,
// retrying for up to patience so that a provider starting alongside the
// service is waited for. client makes every request to the provider.
func newAuthenticator(ctx context.Context, issuer string, audiences []string, client *http.Client, patience time.Duration, log *slog.Logger) (*authenticator, error) {
	ctx = oidc.ClientContext(ctx, client)
	deadline := time.Now().Add(patience)
	for wait := 250 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		a, err := discover(ctx, issuer, audiences[0], client, log)
		if err == nil {
			return a, nil
		}
		if time.Now().Add(wait).After(deadline) {
			return nil, fmt.Errorf("OIDC_ISSUER_URL: discovery at %s failed: %w", strings.TrimSuffix(issuer, "/")+"/.well-known/openid-configuration", err)
		}
		log.Warn("OIDC discovery failed; retrying", "issuer", issuer, "error", err, "retry_in", wait.String())
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// discover reads the provider's metadata and its keys once.
func discover(ctx context.Context, issuer, audience string, client *http.Client, log *slog.Logger) (*authenticator, error) {
	provider, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		return nil, err
	}
	var meta struct {
		Issuer  string `json:"issuer"`
		JWKSURL string `json:"jwks_uri"`
	}
	if err := provider.Claims(&meta); err != nil {
		return nil, err
	}
	if meta.JWKSURL == "" {
		return nil, errors.New("the provider's metadata has no jwks_uri")
	}
	keys := newKeySet(meta.JWKSURL, client)
	if err := keys.load(ctx); err != nil {
		return nil, err
	}
	return &authenticator{
		verifier: oidc.NewVerifier(meta.Issuer, keys, &oidc.Config{ClientID: audience, SupportedSigningAlgs: signingAlgs}),
		keys:     keys,
		log:      log,
	}, nil
}

// principal is who a verified token speaks for, and what it may do.
type principal struct {
	subject string
	scopes  map[string]bool
}

type principalKey struct{}

// subject returns the verified token's sub for the request.
func subject(r *http.Request) string {
	if p, ok := r.Context().Value(principalKey{}).(*principal); ok {
		return p.subject
	}
	return ""
}

// errNoToken is a request without an Authorization header.
var errNoToken = errors.New("no Authorization header")

// verify checks raw's signature, issuer, audience and expiry, and returns
// the principal it names.
func (a *authenticator) verify(ctx context.Context, raw string) (*principal, error) {
	if p := a.cache.get(raw); p != nil {
		return p, nil
	}
	tok, err := a.verifier.Verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	var claims struct {
		Scope       string          `json:"scope"`
		Scp         json.RawMessage `json:"scp"`
		Permissions []string        `json:"permissions"`
	}
	if err := tok.Claims(&claims); err != nil {
		return nil, fmt.Errorf("claims: %w", err)
	}
	if tok.Subject == "" {
		return nil, errors.New("the token has no sub")
	}
	p := &principal{subject: tok.Subject, scopes: map[string]bool{}}
	for _, s := range strings.Fields(claims.Scope) {
		p.scopes[s] = true
	}
	// scp is an array at most providers and a space-separated string at some.
	var scp []string
	if err := json.Unmarshal(claims.Scp, &scp); err != nil {
		var s string
		if json.Unmarshal(claims.Scp, &s) == nil {
			scp = strings.Fields(s)
		}
	}
	for _, s := range append(scp, claims.Permissions...) {
		p.scopes[s] = true
	}
	a.cache.put(raw, p, tok.Expiry)
	return p, nil
}

// tokenCache remembers tokens that passed verification, because a client
// sends the same token with every request and checking its signature is most
// of the CPU a small request costs. An entry lasts a minute at most and
// never past the token's expiry, so a key the provider withdraws stops
// admitting its tokens within the key set's refresh plus that minute.
type tokenCache struct {
	mu      sync.Mutex
	entries map[[32]byte]cachedToken
}

type cachedToken struct {
	p     *principal
	until time.Time
}

const (
	tokenCacheTTL  = time.Minute
	tokenCacheSize = 10_000
)

func (c *tokenCache) get(raw string) *principal {
	key := sha256.Sum256([]byte(raw))
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[key]; ok && time.Now().Before(e.until) {
		return e.p
	}
	return nil
}

func (c *tokenCache) put(raw string, p *principal, expiry time.Time) {
	until := time.Now().Add(tokenCacheTTL)
	if expiry.Before(until) {
		until = expiry
	}
	key := sha256.Sum256([]byte(raw))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil || len(c.entries) >= tokenCacheSize {
		// Starting afresh bounds memory without bookkeeping; the cost is one
		// verification per client.
		c.entries = make(map[[32]byte]cachedToken)
	}
	c.entries[key] = cachedToken{p: p, until: until}
}

// bearerToken returns the token of an "Authorization: Bearer <token>" header.
func bearerToken(header string) (string, error) {
	if header == "" {
		return "", errNoToken
	}
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", errors.New("the Authorization header is not a Bearer token")
	}
	return strings.TrimSpace(token), nil
}

// authError is a request refused for its credentials.
type authError struct {
	status    int
	challenge string
	detail    string
	reason    string
}

func (e *authError) Error() string { return e.detail }

// require lets a request through to next only with a valid token carrying
// scope.
func (a *authenticator) require(scope string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, err := bearerToken(r.Header.Get("Authorization"))
		var p *principal
		if err == nil {
			p, err = a.verify(r.Context(), raw)
		}
		if err != nil {
			if errors.Is(err, errNoToken) {
				fail(w, r, &authError{status: 401, challenge: "Bearer", detail: "this route needs a bearer access token"})
				return
			}
			fail(w, r, &authError{status: 401, challenge: `Bearer error="invalid_token"`, detail: "the access token is not valid", reason: err.Error()})
			return
		}
		requestInfoFrom(r.Context()).subject = p.subject
		if !p.scopes[scope] {
			fail(w, r, &authError{status: 403, challenge: `Bearer error="insufficient_scope", scope="` + scope + `"`, detail: "this route needs the scope " + scope})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}
