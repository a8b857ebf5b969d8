package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// keySet holds the provider's signing keys for go-oidc's verifier. It differs
// from go-oidc's RemoteKeySet in two ways that matter to a public API:
//
//   - only a token naming a key id not in the set makes it refetch the JWKS,
//     and at most once per minRefresh, so forged tokens cannot make every
//     request call the provider;
//   - it refetches when its keys are older than maxAge, so a key the provider
//     withdrew stops verifying within maxAge rather than never.
type keySet struct {
	url        string
	client     *http.Client
	minRefresh time.Duration
	maxAge     time.Duration

	fetch   sync.Mutex // one fetch at a time; waiters then see its result
	mu      sync.RWMutex
	keys    []jose.JSONWebKey
	fetched time.Time
}

func newKeySet(url string, client *http.Client) *keySet {
	return &keySet{url: url, client: client, minRefresh: 10 * time.Second, maxAge: 15 * time.Minute}
}

// VerifySignature returns the payload of jwt when a key of the set verifies
// its signature. go-oidc has already checked that the algorithm is allowed.
func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	jws, err := jose.ParseSigned(jwt, joseSigningAlgs)
	if err != nil {
		return nil, err
	}
	kid := jws.Signatures[0].Header.KeyID
	keys, fetched := k.snapshot()
	if time.Since(fetched) > k.maxAge {
		keys = k.refresh(ctx, 0)
	}
	payload, known, err := verifyWith(jws, keys, kid)
	if err == nil || known {
		return payload, err
	}
	// An unknown key id may be a key the provider has just started using.
	payload, _, err = verifyWith(jws, k.refresh(ctx, k.minRefresh), kid)
	return payload, err
}

// verifyWith verifies jws with the key named kid (every key when kid is
// empty); known reports whether such a key was in keys.
func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) (payload []byte, known bool, err error) {
	for i := range keys {
		key := &keys[i]
		if (kid != "" && key.KeyID != kid) || (key.Use != "" && key.Use != "sig") {
			continue
		}
		known = true
		if payload, err := jws.Verify(key); err == nil {
			return payload, true, nil
		}
	}
	if kid == "" {
		known = false // any key may yet come
	}
	return nil, known, errors.New("no key of the provider's JWKS verifies the signature")
}

func (k *keySet) snapshot() ([]jose.JSONWebKey, time.Time) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.keys, k.fetched
}

// refresh fetches the JWKS unless the keys are younger than minAge, and
// returns the keys. A failed fetch keeps the keys it had: a provider outage
// must not lock everyone out while their tokens are still good.
func (k *keySet) refresh(ctx context.Context, minAge time.Duration) []jose.JSONWebKey {
	k.fetch.Lock()
	defer k.fetch.Unlock()
	if keys, fetched := k.snapshot(); !fetched.IsZero() && time.Since(fetched) < minAge {
		return keys
	}
	keys, err := k.download(ctx)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fetched = time.Now() // a failure also waits minRefresh before the next try
	if err == nil {
		k.keys = keys
	}
	return k.keys
}

// download fetches and parses the JWKS.
func (k *keySet) download(ctx context.Context) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, k.url, nil)
	if err != nil {
		return nil, err
	}
	res, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS %s: HTTP %d", k.url, res.StatusCode)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&set); err != nil {
		return nil, fmt.Errorf("JWKS %s: %w", k.url, err)
	}
	// A key of a type this service cannot use (a future kty, an encryption
	// key) is skipped rather than failing the whole set.
	var keys []jose.JSONWebKey
	for _, raw := range set.Keys {
		var key jose.JSONWebKey
		if json.Unmarshal(raw, &key) == nil && key.Valid() && key.IsPublic() {
			keys = append(keys, key)
		}
	}
	return keys, nil
}

// load fetches the keys at start-up, so that a broken JWKS stops the service
// before it takes traffic.
func (k *keySet) load(ctx context.Context) error {
	keys, err := k.download(ctx)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return fmt.Errorf("JWKS %s holds no keys", k.url)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys, k.fetched = keys, time.Now()
	return nil
}

// joseSigningAlgs is signingAlgs as go-jose names them.
var joseSigningAlgs = func() []jose.SignatureAlgorithm {
	algs := make([]jose.SignatureAlgorithm, len(signingAlgs))
	for i, a := range signingAlgs {
		algs[i] = jose.SignatureAlgorithm(a)
	}
	return algs
}()
