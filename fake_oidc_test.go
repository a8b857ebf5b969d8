package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// fakeOIDC is the OpenID Connect provider of every test: discovery and a JWKS
// over HTTP, real signed tokens, knobs to publish keys and to fail.
type fakeOIDC struct {
	url      string // the issuer
	audience string // what tokens carry in aud
	jwksHits atomic.Int64

	mu        sync.Mutex
	published []any         // the JWKS's keys
	status    int           // when not 0, what discovery and the JWKS answer
	delay     time.Duration // how long the JWKS takes to answer
}

// newFakeOIDC starts a provider publishing "rsa-1", the key sign signs with
// unless told otherwise, and "ec-1".
func newFakeOIDC(t testing.TB) *fakeOIDC {
	f := &fakeOIDC{audience: "order-management"}
	f.publish(testKey("rsa-1"), testKey("ec-1"))
	// The URL is known before the server starts, so that no handler reads it
	// while it is being set.
	srv := httptest.NewUnstartedServer(f)
	f.url = "http://" + srv.Listener.Addr().String()
	srv.Start()
	t.Cleanup(srv.Close)
	return f
}

// ServeHTTP answers /jwks with the JWKS, any other path with discovery.
func (f *fakeOIDC) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	status, delay, keys := f.status, f.delay, f.published // publish replaces, never changes, a slice
	f.mu.Unlock()
	if r.URL.Path == "/jwks" {
		f.jwksHits.Add(1)
		time.Sleep(delay)
	}
	switch {
	case status != 0:
		http.Error(w, "the provider is down", status)
	case r.URL.Path == "/jwks":
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	default:
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": f.url, "jwks_uri": f.url + "/jwks"})
	}
}

// publish makes the JWKS serve keys, each jose.JSONWebKey as its public half.
func (f *fakeOIDC) publish(keys ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.published = nil
	for _, k := range keys {
		if jwk, ok := k.(jose.JSONWebKey); ok {
			k = jwk.Public()
		}
		f.published = append(f.published, k)
	}
}

// fail makes discovery and the JWKS answer status (0: normally), after delay.
func (f *fakeOIDC) fail(status int, delay time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status, f.delay = status, delay
}

// claims returns valid claims for sub with scopes in "scope".
func (f *fakeOIDC) claims(sub string, scopes ...string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss":   f.url,
		"sub":   sub,
		"aud":   []string{f.audience},
		"iat":   now.Unix(),
		"nbf":   now.Unix(),
		"exp":   now.Add(time.Hour).Unix(),
		"scope": strings.Join(scopes, " "),
	}
}

// token returns a valid token for sub with scopes.
func (f *fakeOIDC) token(t testing.TB, sub string, scopes ...string) string {
	return f.sign(t, f.claims(sub, scopes...))
}

// A signOpt changes how sign signs: by default with "rsa-1", its kid and
// alg, and header typ at+jwt. withKey signs with any key (published or
// not, or an HMAC []byte), withKid and withTyp set those ("": none).
type signOpt func(key *jose.JSONWebKey, typ *string)

func withKey(key jose.JSONWebKey) signOpt { return func(k *jose.JSONWebKey, _ *string) { *k = key } }
func withKid(kid string) signOpt          { return func(k *jose.JSONWebKey, _ *string) { k.KeyID = kid } }
func withTyp(typ string) signOpt          { return func(_ *jose.JSONWebKey, t *string) { *t = typ } }

// sign signs claims as a compact JWS.
func (f *fakeOIDC) sign(t testing.TB, claims any, opts ...signOpt) string {
	t.Helper()
	key, typ := testKey("rsa-1"), "at+jwt"
	for _, o := range opts {
		o(&key, &typ)
	}
	header := map[jose.HeaderKey]any{"kid": key.KeyID, "typ": typ}
	maps.DeleteFunc(header, func(_ jose.HeaderKey, v any) bool { return v == "" })
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(key.Algorithm), Key: key.Key}, &jose.SignerOptions{ExtraHeaders: header})
	fatalIf(t, err)
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	fatalIf(t, err)
	return tok
}

// segment encodes v as a JWS segment, for tokens no signer would make.
func segment(v map[string]any) string {
	b, _ := json.Marshal(v) // a map of JSON values always encodes
	return base64.RawURLEncoding.EncodeToString(b)
}

var testKeys sync.Map // kid -> jose.JSONWebKey

// testKey returns the key named kid, made once per process (RSA is slow):
// RSA 2048 (RS256) when kid starts with "rsa", else P-256 (ES256).
func testKey(kid string) jose.JSONWebKey {
	if k, ok := testKeys.Load(kid); ok {
		return k.(jose.JSONWebKey)
	}
	k := jose.JSONWebKey{KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"}
	k.Key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader) // with crypto/rand, cannot fail
	if strings.HasPrefix(kid, "rsa") {
		k.Algorithm = string(jose.RS256)
		k.Key, _ = rsa.GenerateKey(rand.Reader, 2048)
	}
	stored, _ := testKeys.LoadOrStore(kid, k)
	return stored.(jose.JSONWebKey)
}
