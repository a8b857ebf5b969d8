package main

import (
	"context"
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

	"github.com/go-jose/go-jose/v4"
)

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
	// Cannot fail: go-oidc has parsed this very string with signingAlgs
	// before it asks for the signature to be verified.
	jws, _ := jose.ParseSignedCompact(jwt, signingAlgs)
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
