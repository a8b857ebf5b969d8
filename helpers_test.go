package main

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Tests run east of UTC, so that a time shown in local time fails them.
func init() { time.Local = time.FixedZone("EAT", 3*60*60) }

// testDatabaseURL is the server the integration tests use: TEST_DATABASE_URL,
// else the local PostgreSQL on 127.0.0.1:5432.
func testDatabaseURL() string {
	return cmp.Or(os.Getenv("TEST_DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
}

var (
	dbCheck     sync.Once
	testDB      *sql.DB // the test server, where every test's schema is made and dropped
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
		if testDB, dbReachable = sql.Open("pgx", base); dbReachable == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			dbReachable = testDB.PingContext(ctx)
			cancel()
		}
	})
	if dbReachable != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI: PostgreSQL at %s is not reachable: %v", base, dbReachable)
		}
		fmt.Fprintf(os.Stderr, "\n*** SKIPPING %s: no PostgreSQL at %s (%v); set TEST_DATABASE_URL or run `make test` ***\n\n", t.Name(), base, dbReachable)
		t.Skip("no PostgreSQL reachable; set TEST_DATABASE_URL")
	}
	schema := fmt.Sprintf("t_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e6, schemaSeq.Add(1))
	_, err := testDB.Exec("CREATE SCHEMA " + schema)
	fatalIf(t, err)
	t.Cleanup(func() { testDB.Exec("DROP SCHEMA " + schema + " CASCADE") })
	u, err := url.Parse(base)
	fatalIf(t, err)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

var allScopes = []string{"customers:read", "customers:write", "orders:read", "orders:write", "numbers:read", "numbers:write"}

// testApp is the service wired as in production, on a schema of its own,
// behind an httptest server. Its worker is not running unless started.
type testApp struct {
	*app
	t       testing.TB
	url     string
	issuer  *fakeOIDC
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
	iss := newFakeOIDC(t)
	vars := map[string]string{
		"DATABASE_URL":    testSchemaURL(t),
		"OIDC_ISSUER_URL": iss.url,
		"OIDC_AUDIENCE":   iss.audience,
		"LOG_LEVEL":       "debug",
	}
	maps.Copy(vars, env)
	cfg, err := loadConfig(func(k string) string { return vars[k] })
	fatalIf(t, err)
	logs := &syncBuffer{}
	a, err := newApp(t.Context(), cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	fatalIf(t, err)
	t.Cleanup(a.close)
	ta := &testApp{app: a, t: t, issuer: iss, token: iss.token(t, "staff-1", allScopes...), logs: logs, senders: map[string]*recordingSender{}}
	if vars["KEEP_SENDERS"] == "" {
		for name, ch := range a.server.channels.byName {
			ta.senders[name] = &recordingSender{}
			a.server.channels.register(name, ta.senders[name], ch.address)
		}
	}
	a.worker.poll = 20 * time.Millisecond
	srv := httptest.NewServer(a.server.routes())
	t.Cleanup(srv.Close)
	ta.url = srv.URL
	return ta
}

// openDB opens a pool to dbURL as the service does; closed when the test ends.
func openDB(t testing.TB, dbURL string) *sql.DB {
	st, err := openStore(dbURL)
	fatalIf(t, err)
	t.Cleanup(func() { st.close() })
	return st.db
}

// exec runs a statement on the app's database.
func (ta *testApp) exec(query string, args ...any) {
	ta.t.Helper()
	_, err := ta.store.db.Exec(query, args...)
	fatalIf(ta.t, err)
}

// startWorker runs w (the app's worker when nil) until the test ends.
func (ta *testApp) startWorker(w *worker, drain time.Duration) {
	w = cmp.Or(w, ta.worker)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx, drain) }()
	ta.t.Cleanup(func() { cancel(); <-done })
}

// fast makes the app's worker retry at once, so that tests of retries take
// milliseconds rather than the production seconds.
func (ta *testApp) fast() {
	ta.worker.backoff = func(int) time.Duration { return 10 * time.Millisecond }
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

// must fails the test unless r has the status.
func (r response) must(t testing.TB, status int) response {
	t.Helper()
	if r.status != status {
		t.Fatalf("status: got %d, want %d; body %s", r.status, status, r.body)
	}
	return r
}

// do sends a request with the app's all-scopes token; body is JSON-encoded
// unless it is a string or []byte, sent as is.
func (ta *testApp) do(method, path string, body any) response {
	return ta.send(method, path, body, "application/json")
}

// send is do with a body of the content type.
func (ta *testApp) send(method, path string, body any, contentType string) response {
	return ta.request(method, path, body, contentType, map[string]string{"Authorization": "Bearer " + ta.token})
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
		fatalIf(ta.t, err)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, ta.url+path, rd)
	fatalIf(ta.t, err)
	if rd != nil && contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	fatalIf(ta.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	fatalIf(ta.t, err)
	return response{status: res.StatusCode, header: res.Header, body: b}
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

// place places an order through the API and returns the 201's body.
func (ta *testApp) place(body map[string]any) order {
	ta.t.Helper()
	var o order
	ta.do("POST", "/v1/orders", body).must(ta.t, http.StatusCreated).json(ta.t, &o)
	return o
}

// getOrder reads an order through the API.
func (ta *testApp) getOrder(id int64) order {
	ta.t.Helper()
	var o order
	ta.do("GET", fmt.Sprint("/v1/orders/", id), nil).must(ta.t, http.StatusOK).json(ta.t, &o)
	return o
}

// importOrders imports n orders for the customer with code and returns
// their ids; notify false adds ?notify=false.
func (ta *testApp) importOrders(code string, n int, notify bool) []int64 {
	ta.t.Helper()
	rows := make([]map[string]any, n)
	for i := range rows {
		rows[i] = map[string]any{"customer_code": code, "item": fmt.Sprintf("kit-%d", i), "amount": "10.00"}
	}
	var res importResult
	ta.do("POST", fmt.Sprint("/v1/orders/import?notify=", notify), rows).must(ta.t, http.StatusCreated).json(ta.t, &res)
	mustEqual(ta.t, "orders imported", res.Imported, n)
	mustEqual(ta.t, "ids of the imported orders", len(res.IDs), n)
	return res.IDs
}

// count returns the rows in table that match the condition ("" for all).
func (ta *testApp) count(table string, where ...any) int {
	ta.t.Helper()
	query := "SELECT count(*) FROM " + table
	if len(where) > 0 {
		query += " WHERE " + where[0].(string)
	}
	var n int
	fatalIf(ta.t, ta.store.db.QueryRow(query, where[min(1, len(where)):]...).Scan(&n))
	return n
}

// outboxRow is a notification as stored.
type outboxRow struct {
	channel, recipient, status string
	attempts                   int
	lastError, providerID      sql.NullString
	sentAt, deliveredAt        sql.NullTime
	nextAttempt                time.Time
}

// outbox reads the notification of an order, failing the test when it has none.
func (ta *testApp) outbox(orderID int64) outboxRow {
	ta.t.Helper()
	var n outboxRow
	err := ta.store.db.QueryRow(`
		SELECT channel, recipient, status, attempts, last_error, provider_message_id, sent_at, delivered_at, next_attempt_at
		FROM notifications WHERE order_id = $1`, orderID).
		Scan(&n.channel, &n.recipient, &n.status, &n.attempts, &n.lastError, &n.providerID, &n.sentAt, &n.deliveredAt, &n.nextAttempt)
	if err != nil {
		ta.t.Fatalf("the notification of order %d: %v", orderID, err)
	}
	return n
}

// settled waits until the notification of order id is no longer pending.
func (ta *testApp) settled(id int64) outboxRow {
	ta.t.Helper()
	eventually(ta.t, 10*time.Second, fmt.Sprint("the notification of order ", id, " settled"), func() bool {
		return ta.outbox(id).status != "pending"
	})
	return ta.outbox(id)
}

// recordingSender is a Sender that remembers what it was asked to send and
// answers with what fail says (nil: success).
type recordingSender struct {
	mu   sync.Mutex
	sent []notice
	fail func(n notice, attempt int) error
	seen map[int64]int // attempts per order, failed ones included
}

func (s *recordingSender) Send(ctx context.Context, n notice) (string, error) {
	s.mu.Lock()
	if s.seen == nil {
		s.seen = map[int64]int{}
	}
	s.seen[n.OrderID]++
	attempt, fail := s.seen[n.OrderID], s.fail
	s.mu.Unlock()
	if fail != nil {
		if err := fail(n, attempt); err != nil {
			return "", err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, n)
	return fmt.Sprintf("rec-%d", n.OrderID), nil
}

func (s *recordingSender) notices() []notice {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]notice(nil), s.sent...)
}

func (s *recordingSender) attempts(orderID int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[orderID]
}

// perOrder counts successful sends per order across senders.
func perOrder(senders ...*recordingSender) map[int64]int {
	n := map[int64]int{}
	for _, s := range senders {
		for _, m := range s.notices() {
			n[m.OrderID]++
		}
	}
	return n
}

// logLines decodes JSON log lines, those with every key=value of match.
func logLines(t testing.TB, logs string, match ...any) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(logs) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		ok := true
		for i := 0; i+1 < len(match); i += 2 {
			ok = ok && fmt.Sprint(rec[match[i].(string)]) == fmt.Sprint(match[i+1])
		}
		if ok {
			out = append(out, rec)
		}
	}
	return out
}

// requestLog waits for the log line of the request with id: it is written as
// the handler returns, which may be just after the client has its answer.
func (ta *testApp) requestLog(id string) map[string]any {
	ta.t.Helper()
	var lines []map[string]any
	eventually(ta.t, 2*time.Second, "the log line of request "+id, func() bool {
		lines = logLines(ta.t, ta.logs.String(), "msg", "request", "request_id", id)
		return len(lines) == 1
	})
	return lines[0]
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	fatalIf(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// fatalIf stops the test on an error it cannot go on from. It marks itself
// a helper only then, since Helper costs more than a benchmarked call.
func fatalIf(t testing.TB, err error) {
	if err != nil {
		t.Helper()
		t.Fatal(err)
	}
}

// equal fails the test, which goes on, unless got is want; what names the
// value in the message. It reports whether they were equal.
func equal[T comparable](t testing.TB, what string, got, want T) bool {
	t.Helper()
	if got != want {
		t.Errorf("%s: got %#v, want %#v", what, got, want)
	}
	return got == want
}

// mustEqual is equal for a value the rest of the test relies on: it stops
// the test.
func mustEqual[T comparable](t testing.TB, what string, got, want T) {
	t.Helper()
	if !equal(t, what, got, want) {
		t.FailNow()
	}
}

// contains fails the test, which goes on, unless s holds sub; what names s.
func contains(t testing.TB, what, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Errorf("%s: got %q, want it to contain %q", what, s, sub)
	}
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
