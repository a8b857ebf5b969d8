package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
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

const (
	// maxAuthorization bounds the Authorization header: access tokens are
	// a few KiB at most, and a larger header is refused before its token is
	// looked at.
	maxAuthorization = 8 << 10
	// A verified token is admitted again for tokenCacheTTL at most, and never
	// past its exp, so a key the provider withdraws stops admitting its
	// tokens within the key set's refresh plus that time. The cache starts
	// afresh when it holds tokenCacheSize tokens, which bounds memory without
	// bookkeeping at the cost of one verification per client.
	tokenCacheTTL  = time.Minute
	tokenCacheSize = 10_000
)

// authenticator verifies access tokens issued by one provider for any of
// several audiences, with go-oidc's verifier over the provider's JWKS (a
// keySet, below), so key rotation needs no restart.
type authenticator struct {
	verifier  *oidc.IDTokenVerifier
	audiences []string

	// verified caches the tokens that passed verification by their SHA-256,
	// because a client sends the same token with every request and checking
	// its signature is most of the CPU a small request costs.
	mu       sync.Mutex
	verified map[[32]byte]*principal
}

// newAuthenticator discovers the provider at issuer, a URL without
// credentials, and loads its keys, retrying for up to patience so that a
// provider starting alongside the service is waited for. client makes every
// request to the provider.
func newAuthenticator(ctx context.Context, issuer string, audiences []string, client *http.Client, patience time.Duration, log *slog.Logger) (*authenticator, error) {
	ctx = oidc.ClientContext(ctx, client)
	var keys *keySet
	err := retry(ctx, time.Now().Add(patience), func() error {
		provider, err := oidc.NewProvider(ctx, issuer)
		if err != nil {
			return err
		}
		var meta oidc.ProviderConfig
		_ = provider.Claims(&meta) // cannot fail: NewProvider has decoded this document
		keys, err = newKeySet(meta.JWKSURL, client, log)
		return err
	}, func(err error, wait time.Duration) {
		log.Warn("OIDC discovery failed; retrying", "issuer", issuer, "error", storable(err.Error(), ""), "retry_in", wait.String())
	})
	if err != nil {
		return nil, fmt.Errorf("OIDC_ISSUER_URL: discovery at %s/.well-known/openid-configuration failed: %s", strings.TrimSuffix(issuer, "/"), storable(err.Error(), ""))
	}
	// go-oidc checks one audience; verify checks aud against all of them.
	config := &oidc.Config{SkipClientIDCheck: true}
	for _, alg := range signingAlgs {
		config.SupportedSigningAlgs = append(config.SupportedSigningAlgs, string(alg))
	}
	return &authenticator{verifier: oidc.NewVerifier(issuer, keys, config), audiences: audiences, verified: map[[32]byte]*principal{}}, nil
}

// principal is who a verified token speaks for, and what it may do.
type principal struct {
	subject string
	scopes  []string
	until   time.Time // how long the token cache may admit it
}

// subject returns the sub of the token that let r through require.
func subject(r *http.Request) string {
	return requestInfoFrom(r.Context()).subject
}

// authError is a request refused for its credentials: status 401 (or 400
// for a malformed Authorization header, 403 for a missing scope) with the
// WWW-Authenticate challenge RFC 6750 asks for. reason is for the log only.
type authError struct {
	status    int
	challenge string // the WWW-Authenticate value
	detail    string // what the client reads
	reason    string // why, for the log: storable, never the token
}

func (e *authError) Error() string { return e.reason }

// invalidToken refuses a token that cannot be trusted. Every such token gets
// the same detail, so that a client learns nothing of why.
func invalidToken(reason string) *authError {
	return &authError{status: http.StatusUnauthorized, challenge: `Bearer error="invalid_token"`, detail: "the access token is not valid", reason: storable(reason, "")}
}

// authorize returns nil when r's bearer token may use scope, having recorded
// the token's sub in r's requestInfo, and otherwise an *authError. The
// header must be "Bearer", in any case, one space, and the token: RFC 6750's
// 1*SP narrowed to the one space every client sends.
func (a *authenticator) authorize(r *http.Request, scope string) error {
	header := r.Header.Get("Authorization")
	scheme, raw, ok := strings.Cut(header, " ")
	switch {
	case len(r.Header.Values("Authorization")) > 1:
		return &authError{status: http.StatusBadRequest, challenge: `Bearer error="invalid_request"`, detail: "send one Authorization header, not several", reason: "several Authorization headers"}
	case header == "":
		return &authError{status: http.StatusUnauthorized, challenge: "Bearer", detail: "this route needs a bearer access token", reason: "no Authorization header"}
	case len(header) > maxAuthorization:
		return invalidToken(fmt.Sprintf("an Authorization header of %d bytes, over the limit of %d", len(header), maxAuthorization))
	case !ok || !strings.EqualFold(scheme, "Bearer"):
		return invalidToken("the Authorization header is not a Bearer token")
	}
	p, err := a.verify(r.Context(), raw)
	if err != nil {
		return invalidToken(err.Error())
	}
	requestInfoFrom(r.Context()).subject = p.subject
	if !slices.Contains(p.scopes, scope) {
		return &authError{status: http.StatusForbidden, challenge: `Bearer error="insufficient_scope", scope="` + scope + `"`, detail: "this route needs the scope " + scope, reason: "the token lacks the scope " + scope}
	}
	return nil
}

// verify checks raw's form, signature, issuer, audience, expiry and type,
// and returns the principal it names.
func (a *authenticator) verify(ctx context.Context, raw string) (*principal, error) {
	key := sha256.Sum256([]byte(raw))
	a.mu.Lock()
	p := a.verified[key]
	a.mu.Unlock()
	if p != nil && time.Now().Before(p.until) {
		return p, nil
	}
	tok, err := a.verifier.Verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	// A permission claim of another type fails to decode, so that a token
	// the service does not understand is refused, never partly granted.
	var claims struct {
		Typ         *string   `json:"typ"`
		Scope       string    `json:"scope"`
		Scp         spaceList `json:"scp"`
		Permissions []string  `json:"permissions"`
		Roles       []string  `json:"roles"`
	}
	if err := tok.Claims(&claims); err != nil {
		return nil, fmt.Errorf("claims: %w", err)
	}
	switch {
	case !slices.ContainsFunc(tok.Audience, func(aud string) bool { return slices.Contains(a.audiences, aud) }):
		return nil, fmt.Errorf("audience %q has none of OIDC_AUDIENCE", tok.Audience)
	case claims.Typ != nil && *claims.Typ != "Bearer":
		// Keycloak marks its ID tokens "ID" and its access tokens "Bearer".
		return nil, fmt.Errorf("typ claim %q: not an access token", *claims.Typ)
	case tok.Subject == "" || strings.ContainsRune(tok.Subject, 0):
		// A NUL is text PostgreSQL cannot store in created_by.
		return nil, errors.New("the token has no sub, or one with a NUL")
	}
	p = &principal{subject: tok.Subject, until: time.Now().Add(min(tokenCacheTTL, time.Until(tok.Expiry)))}
	p.scopes = slices.Concat(strings.Fields(claims.Scope), claims.Scp, claims.Permissions, claims.Roles)
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.verified) >= tokenCacheSize {
		clear(a.verified)
	}
	a.verified[key] = p
	return p, nil
}

// spaceList is a claim holding an array of strings or one space-separated
// string, as scp does at different providers.
type spaceList []string

func (l *spaceList) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*l = strings.Fields(s)
		return nil
	}
	return json.Unmarshal(b, (*[]string)(l))
}

// require lets a request through to next only with a valid token carrying
// scope; every refusal goes out through fail.
func (a *authenticator) require(scope string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := a.authorize(r, scope); err != nil {
			fail(w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// keySet holds the provider's signing keys for go-oidc's verifier. It
// differs from go-oidc's RemoteKeySet where a public API needs it to:
//
//   - A token naming a key id the set lacks makes it fetch the JWKS at once,
//     so a key the provider signs with as soon as it publishes it is accepted
//     on first use. Requests that need a fetch while one is under way wait
//     for that one, each for as long as its own context allows.
//   - Forged key ids stay cheap: unknown key ids make at most one fetch per
//     keyRefill between them, whatever their number, and any one key id at
//     most one per keyRetryID, so that a client repeating a stale or forged
//     token does not use up the fetches a real rotation needs. Fetches of
//     other kinds (start-up, the refresh) do not count: a new key right after
//     them is fetched too.
//   - Keys older than keyMaxAge are refreshed in the background: requests go
//     on with the cached keys while the refresh runs, and keep them when it
//     fails (it is retried after keyRefill), so a provider outage never locks
//     out a token whose key is cached, while a key the provider withdrew stops
//     verifying once the refresh lands.
//
// VerifySignature is also where the token's JWS is parsed, so it is where
// the JWS's form is held to what an access token may be.
type keySet struct {
	url    string
	client *http.Client
	log    *slog.Logger
	now    func() time.Time // the clock; tests move it

	mu         sync.Mutex
	keys       []jose.JSONWebKey
	refreshAt  time.Time            // when the keys are due for a background refresh
	fetching   chan struct{}        // closed when the fetch under way ends; nil when none is
	refetched  time.Time            // when a fetch was last made for an unknown key id
	fetchedFor map[string]time.Time // key id -> when a fetch was last made for it
}

const (
	keyRefill  = 10 * time.Second
	keyRetryID = time.Minute
	keyMaxAge  = 15 * time.Minute
)

// signingAlgs are the signatures accepted. Symmetric algorithms and "none"
// are absent on purpose: a public JWKS key must never verify an HMAC.
var signingAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.EdDSA,
}

// compactJWS is a JWS in compact serialization and nothing else. go-jose
// would drop whitespace anywhere in a token, so that endless variants of one
// token would each verify, and each take a place in the token cache.
var compactJWS = regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$`)

// accessTokenTypes are the header typ values, lower-cased, of an access
// token: RFC 9068's, and the JWT of providers that predate it. An ID token
// or a logout token is not an access token, whatever its audience.
var accessTokenTypes = []string{"jwt", "at+jwt", "application/at+jwt"}

// errUnknownKey means that the keys may lack the one that signed a token.
var errUnknownKey = errors.New("the provider's JWKS has no key for the token")

// newKeySet fetches the JWKS at url, so that a broken one stops the service
// before it takes traffic.
func newKeySet(url string, client *http.Client, log *slog.Logger) (*keySet, error) {
	k := &keySet{url: url, client: client, log: log, now: time.Now, fetchedFor: map[string]time.Time{}}
	keys, err := k.download()
	if err != nil {
		return nil, err
	}
	k.keys, k.refreshAt = keys, k.now().Add(keyMaxAge)
	return k, nil
}

// VerifySignature returns the payload of jwt when a key of the set verifies
// its signature. go-oidc checks the claims.
func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	if !compactJWS.MatchString(jwt) {
		return nil, errors.New("malformed: not a JWS in compact serialization")
	}
	jws, err := jose.ParseSignedCompact(jwt, signingAlgs)
	if err != nil {
		return nil, err
	}
	header := jws.Signatures[0].Header
	typ, present := header.ExtraHeaders[jose.HeaderType]
	if s, _ := typ.(string); present && !slices.Contains(accessTokenTypes, strings.ToLower(s)) {
		return nil, fmt.Errorf("header typ %v: not an access token", typ)
	}
	payload, err := verifyWith(jws, k.current(), header.KeyID)
	if errors.Is(err, errUnknownKey) {
		if err = k.refetch(ctx, header.KeyID); err == nil {
			payload, err = verifyWith(jws, k.current(), header.KeyID)
		}
	}
	return payload, err
}

// verifyWith verifies jws with the first key named kid, or with every key
// when kid is empty.
func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) ([]byte, error) {
	for _, key := range keys {
		if kid == "" || key.KeyID == kid {
			if payload, err := jws.Verify(key); err == nil || kid != "" {
				return payload, err
			}
		}
	}
	return nil, errUnknownKey
}

// current returns the keys, and starts a background refresh when they are
// due for one and no fetch is under way.
func (k *keySet) current() []jose.JSONWebKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fetching == nil && !k.now().Before(k.refreshAt) {
		k.fetching = make(chan struct{})
		go k.fetch()
	}
	return k.keys
}

// refetch waits for a fetch of the JWKS that may bring the key named kid:
// the one under way, or else a new one unless unknown key ids have had
// theirs too recently. It returns ctx's error when ctx ends first.
func (k *keySet) refetch(ctx context.Context, kid string) error {
	k.mu.Lock()
	if k.fetching == nil {
		now := k.now()
		if now.Sub(k.refetched) < keyRefill || now.Sub(k.fetchedFor[kid]) < keyRetryID {
			k.mu.Unlock()
			return fmt.Errorf("%w, and it was fetched for unknown keys moments ago", errUnknownKey)
		}
		maps.DeleteFunc(k.fetchedFor, func(_ string, at time.Time) bool { return now.Sub(at) >= keyRetryID })
		k.refetched, k.fetchedFor[kid] = now, now
		k.fetching = make(chan struct{})
		go k.fetch()
	}
	done := k.fetching
	k.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return ctx.Err()
}

// fetch is the fetch under way, started with k.fetching set: it replaces
// the keys with the JWKS's, or keeps them when that fails, and then closes
// k.fetching.
func (k *keySet) fetch() {
	keys, err := k.download()
	k.mu.Lock()
	defer k.mu.Unlock()
	close(k.fetching)
	k.fetching = nil
	if err != nil {
		k.log.Warn("JWKS fetch failed; the cached keys stay in use", "error", err)
		k.refreshAt = k.now().Add(keyRefill)
		return
	}
	k.keys, k.refreshAt = keys, k.now().Add(keyMaxAge)
}

// download fetches and parses the JWKS. It belongs to no request, so that a
// waiter who gives up fails no other, and the client's timeout bounds it. A
// key this service cannot verify with (a future kty, a private or symmetric
// key, an encryption key) is skipped rather than failing the whole set; a set
// with no usable key is an error.
func (k *keySet) download() ([]jose.JSONWebKey, error) {
	res, err := k.client.Get(k.url)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS %s: HTTP %d", k.url, res.StatusCode)
	}
	var set struct{ Keys []json.RawMessage }
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&set); err != nil {
		return nil, fmt.Errorf("JWKS %s: %w", k.url, err)
	}
	var keys []jose.JSONWebKey
	for _, raw := range set.Keys {
		var key jose.JSONWebKey
		if json.Unmarshal(raw, &key) == nil && key.Valid() && key.IsPublic() && (key.Use == "" || key.Use == "sig") {
			keys = append(keys, key)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("JWKS %s holds no usable key", k.url)
	}
	return keys, nil
}
