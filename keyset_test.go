package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// ksProvider is a JWKS endpoint whose content and health the test controls.
type ksProvider struct {
	srv  *httptest.Server
	mu   sync.Mutex
	body []byte
	fail bool
	hits atomic.Int64
}

func newKSProvider(t *testing.T, keys ...any) *ksProvider {
	p := &ksProvider{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.hits.Add(1)
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.fail {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Write(p.body)
	}))
	t.Cleanup(p.srv.Close)
	p.publish(t, keys...)
	return p
}

// publish serves keys: jose.JSONWebKey values, or raw JSON objects.
func (p *ksProvider) publish(t *testing.T, keys ...any) {
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.body = b
	p.mu.Unlock()
}

func ksKey(t *testing.T) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ksSign(t *testing.T, key *rsa.PrivateKey, kid string) string {
	return signJWT(t, jose.RS256, key, kid, map[string]any{"sub": "x"})
}

func pub(key *rsa.PrivateKey, kid string) jose.JSONWebKey {
	return jose.JSONWebKey{Key: &key.PublicKey, KeyID: kid, Algorithm: "RS256", Use: "sig"}
}

// Forged tokens cannot make every request call the provider: only unknown
// key ids refetch, at most once per minRefresh.
func TestKeySetThrottlesRefetches(t *testing.T) {
	good := ksKey(t)
	p := newKSProvider(t, pub(good, "k1"))
	ks := newKeySet(p.srv.URL, p.srv.Client())
	if err := ks.load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.VerifySignature(t.Context(), ksSign(t, good, "k1")); err != nil {
		t.Fatalf("good token: %v", err)
	}
	forger := ksKey(t)
	for i := range 50 {
		if _, err := ks.VerifySignature(t.Context(), ksSign(t, forger, "k1")); err == nil {
			t.Fatal("a forged signature with a known kid verified")
		}
		if _, err := ks.VerifySignature(t.Context(), ksSign(t, forger, "unknown-"+string(rune('a'+i%26)))); err == nil {
			t.Fatal("an unknown key verified")
		}
	}
	if got := p.hits.Load(); got != 1 {
		t.Errorf("JWKS fetches after 100 forged tokens: got %d, want 1 (the load)", got)
	}
	// Once minRefresh has passed, a new key id is fetched and accepted.
	next := ksKey(t)
	p.publish(t, pub(good, "k1"), pub(next, "k2"))
	ks.minRefresh = 0
	if _, err := ks.VerifySignature(t.Context(), ksSign(t, next, "k2")); err != nil {
		t.Errorf("new key after minRefresh: %v", err)
	}
}

// A key the provider withdraws stops verifying once the keys are older than
// maxAge; a provider outage keeps the keys already known.
func TestKeySetMaxAgeAndOutage(t *testing.T) {
	old, cur := ksKey(t), ksKey(t)
	p := newKSProvider(t, pub(old, "old"), pub(cur, "cur"), map[string]string{"kty": "future", "kid": "x"})
	ks := newKeySet(p.srv.URL, p.srv.Client())
	if err := ks.load(t.Context()); err != nil {
		t.Fatalf("a key of an unknown type should be skipped: %v", err)
	}
	ks.minRefresh = time.Hour
	p.publish(t, pub(cur, "cur"))
	if _, err := ks.VerifySignature(t.Context(), ksSign(t, old, "old")); err != nil {
		t.Fatalf("within maxAge the old key still verifies: %v", err)
	}
	ks.maxAge = 0
	if _, err := ks.VerifySignature(t.Context(), ksSign(t, old, "old")); err == nil {
		t.Error("a withdrawn key verified after maxAge")
	}
	p.mu.Lock()
	p.fail = true
	p.mu.Unlock()
	if _, err := ks.VerifySignature(t.Context(), ksSign(t, cur, "cur")); err != nil {
		t.Errorf("during a provider outage the known key must verify: %v", err)
	}
	// A token without kid is tried against every key.
	if _, err := ks.VerifySignature(t.Context(), ksSign(t, cur, "")); err != nil {
		t.Errorf("token without kid: %v", err)
	}
	empty := newKSProvider(t)
	if err := newKeySet(empty.srv.URL, empty.srv.Client()).load(t.Context()); err == nil {
		t.Error("an empty JWKS loaded")
	}
	if err := newKeySet(p.srv.URL, p.srv.Client()).load(t.Context()); err == nil {
		t.Error("a failing JWKS endpoint loaded")
	}
}

// The token cache admits a verified token again without its signature being
// checked, for a minute at most and never past the token's expiry.
func TestTokenCache(t *testing.T) {
	var c tokenCache
	p := &principal{subject: "s"}
	c.put("long", p, time.Now().Add(time.Hour))
	c.put("short", p, time.Now().Add(50*time.Millisecond))
	if c.get("long") != p || c.get("short") != p {
		t.Fatal("a cached token was not found")
	}
	if c.get("other") != nil {
		t.Error("an unknown token was found")
	}
	time.Sleep(60 * time.Millisecond)
	if c.get("short") != nil {
		t.Error("a token was admitted from the cache past its expiry")
	}
	c.mu.Lock()
	e := c.entries[sha256.Sum256([]byte("long"))]
	c.mu.Unlock()
	if d := time.Until(e.until); d > tokenCacheTTL || d < tokenCacheTTL-time.Second {
		t.Errorf("a long-lived token is cached for %v, want %v", d, tokenCacheTTL)
	}
	for i := range tokenCacheSize + 1 {
		c.put(fmt.Sprint("t", i), p, time.Now().Add(time.Hour))
	}
	c.mu.Lock()
	n := len(c.entries)
	c.mu.Unlock()
	if n > tokenCacheSize {
		t.Errorf("cache holds %d entries, want at most %d", n, tokenCacheSize)
	}
}
