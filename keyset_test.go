package main

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
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
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(map[string]any{"sub": "x"}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
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
