package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// testDatabaseURL is the server the integration tests use: TEST_DATABASE_URL,
// else the local PostgreSQL on 127.0.0.1:5432.
func testDatabaseURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

var (
	dbCheck     sync.Once
	dbReachable error
	schemaSeq   atomic.Int64
)

// testSchemaURL gives the test a schema of its own on the test server and
// returns a URL whose connections use it, so that tests never see each
// other's rows. Without a reachable server the test is skipped, loudly, unless
// CI is set, where it fails: CI must never skip the integration tests.
func testSchemaURL(t testing.TB) string {
	t.Helper()
	base := testDatabaseURL()
	dbCheck.Do(func() {
		db, err := sql.Open("pgx", base)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err = db.PingContext(ctx)
			cancel()
			db.Close()
		}
		dbReachable = err
	})
	if dbReachable != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI: PostgreSQL at %s is not reachable: %v", base, dbReachable)
		}
		fmt.Fprintf(os.Stderr, "\n*** SKIPPING %s: no PostgreSQL at %s (%v); set TEST_DATABASE_URL or run `make test` ***\n\n", t.Name(), base, dbReachable)
		t.Skip("no PostgreSQL reachable; set TEST_DATABASE_URL")
	}
	schema := fmt.Sprintf("t_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e6, schemaSeq.Add(1))
	db, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("pgx", base)
		if err != nil {
			return
		}
		defer db.Close()
		db.Exec("DROP SCHEMA " + schema + " CASCADE")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// testIssuer is an OpenID Connect provider for tests: discovery and a JWKS
// over HTTP, and real signed tokens.
type testIssuer struct {
	srv      *httptest.Server
	rsaKey   *rsa.PrivateKey
	ecKey    *ecdsa.PrivateKey
	audience string
	jwksHits atomic.Int64
}

func newTestIssuer(t testing.TB) *testIssuer {
	t.Helper()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss := &testIssuer{rsaKey: rsaKey, ecKey: ecKey, audience: "order-management"}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                iss.srv.URL,
			"jwks_uri":                              iss.srv.URL + "/jwks",
			"authorization_endpoint":                iss.srv.URL + "/authorize",
			"token_endpoint":                        iss.srv.URL + "/token",
			"response_types_supported":              []string{"code"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		iss.jwksHits.Add(1)
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
			{Key: &rsaKey.PublicKey, KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"},
			{Key: &ecKey.PublicKey, KeyID: "ec-1", Algorithm: "ES256", Use: "sig"},
		}})
	})
	iss.srv = httptest.NewServer(mux)
	t.Cleanup(iss.srv.Close)
	return iss
}

// claims returns valid claims for sub with scopes in the "scope" claim.
func (iss *testIssuer) claims(sub string, scopes ...string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss":   iss.srv.URL,
		"sub":   sub,
		"aud":   []string{iss.audience},
		"iat":   now.Unix(),
		"nbf":   now.Unix(),
		"exp":   now.Add(time.Hour).Unix(),
		"scope": strings.Join(scopes, " "),
	}
}

// sign signs claims with the issuer's RSA key (or EC key when alg is ES256).
func (iss *testIssuer) sign(t testing.TB, claims map[string]any, alg jose.SignatureAlgorithm) string {
	if alg == jose.ES256 {
		return signJWT(t, alg, iss.ecKey, "ec-1", claims)
	}
	return signJWT(t, alg, iss.rsaKey, "rsa-1", claims)
}

// signJWT signs claims as an at+jwt with a key the caller chooses, including
// the tokens a real provider would never mint: foreign keys, borrowed key
// ids, HMAC secrets. An empty kid leaves the header without one.
func signJWT(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims any) string {
	t.Helper()
	sk := jose.SigningKey{Algorithm: alg, Key: key}
	if kid != "" {
		sk.Key = jose.JSONWebKey{Key: key, KeyID: kid}
	}
	signer, err := jose.NewSigner(sk, (&jose.SignerOptions{}).WithType("at+jwt"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// token returns a valid RS256 token for sub with scopes.
func (iss *testIssuer) token(t testing.TB, sub string, scopes ...string) string {
	return iss.sign(t, iss.claims(sub, scopes...), jose.RS256)
}

var allScopes = []string{"customers:read", "customers:write", "orders:read", "orders:write", "numbers:read", "numbers:write"}

// testApp is the service wired as in production, on a schema of its own,
// behind an httptest server. Its worker is not running unless started.
type testApp struct {
	*app
	t       testing.TB
	url     string
	issuer  *testIssuer
	token   string // every scope, sub "staff-1"
	logs    *syncBuffer
	senders map[string]*recordingSender
}

// syncBuffer is a log sink that tests can read while the service writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newTestApp starts the service with env overriding the test defaults.
// Channels are replaced by recording senders unless env sets KEEP_SENDERS,
// which keeps the senders the configuration builds.
func newTestApp(t testing.TB, env map[string]string) *testApp {
	t.Helper()
	iss := newTestIssuer(t)
	vars := map[string]string{
		"DATABASE_URL":    testSchemaURL(t),
		"OIDC_ISSUER_URL": iss.srv.URL,
		"OIDC_AUDIENCE":   iss.audience,
		"LOG_LEVEL":       "debug",
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := loadConfig(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := newApp(t.Context(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.close)
	ta := &testApp{app: a, t: t, issuer: iss, token: iss.token(t, "staff-1", allScopes...), logs: logs, senders: map[string]*recordingSender{}}
	if vars["KEEP_SENDERS"] == "" {
		for name, ch := range a.server.channels.byName {
			rec := &recordingSender{}
			ta.senders[name] = rec
			a.server.channels.register(name, rec, ch.address)
		}
	}
	srv := httptest.NewServer(a.server.routes())
	t.Cleanup(srv.Close)
	ta.url = srv.URL
	return ta
}

// startWorker runs the app's worker until the test ends.
func (ta *testApp) startWorker() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ta.worker.run(ctx, 5*time.Second) }()
	ta.t.Cleanup(func() { cancel(); <-done })
}

// response is a finished HTTP exchange.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
}

// problem decodes a problem+json body, failing when the media type is not.
func (r response) problem(t testing.TB) problem {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type: got %q, want application/problem+json (body %s)", ct, r.body)
	}
	var p problem
	r.json(t, &p)
	if p.Status != r.status || p.Title == "" || p.Type == "" || p.Detail == "" {
		t.Fatalf("problem %+v does not describe status %d", p, r.status)
	}
	return p
}

// do sends a request with the app's all-scopes token; body is JSON-encoded
// unless it is a string, sent as is with contentType.
func (ta *testApp) do(method, path string, body any) response {
	return ta.request(method, path, body, "application/json", map[string]string{"Authorization": "Bearer " + ta.token})
}

func (ta *testApp) request(method, path string, body any, contentType string, headers map[string]string) response {
	ta.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			ta.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, ta.url+path, rd)
	if err != nil {
		ta.t.Fatal(err)
	}
	if rd != nil && contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		ta.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		ta.t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

// must fails the test unless r has the status.
func (r response) must(t testing.TB, status int) response {
	t.Helper()
	if r.status != status {
		t.Fatalf("status: got %d, want %d; body %s", r.status, status, r.body)
	}
	return r
}

// createCustomer makes a customer and returns it.
func (ta *testApp) createCustomer(code, phone string, email *string) customer {
	ta.t.Helper()
	body := map[string]any{"code": code, "name": "Amina Njoroge", "phone": phone}
	if email != nil {
		body["email"] = *email
	}
	var c customer
	ta.do("POST", "/v1/customers", body).must(ta.t, http.StatusCreated).json(ta.t, &c)
	return c
}

// count returns the rows in table.
func (ta *testApp) count(table string) int {
	ta.t.Helper()
	var n int
	if err := ta.store.db.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
		ta.t.Fatal(err)
	}
	return n
}

// recordingSender is a Sender that remembers what it was asked to send and
// answers with what fail says (nil: success).
type recordingSender struct {
	mu   sync.Mutex
	sent []Message
	fail func(m Message, attempt int) error
	seen map[int64]int
}

func (s *recordingSender) Send(ctx context.Context, m Message) (string, error) {
	s.mu.Lock()
	if s.seen == nil {
		s.seen = map[int64]int{}
	}
	s.seen[m.OrderID]++
	attempt, fail := s.seen[m.OrderID], s.fail
	s.mu.Unlock()
	if fail != nil {
		if err := fail(m, attempt); err != nil {
			return "", err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, m)
	return fmt.Sprintf("rec-%d", m.OrderID), nil
}

func (s *recordingSender) messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.sent...)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }
