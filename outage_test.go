package main

import (
	"database/sql"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// tcpProxy forwards connections to target until it is cut, which drops every
// connection and refuses new ones, like a database restarting.
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	cut    bool
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *tcpProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

// proxiedURL returns dbURL with its host replaced by the proxy's address.
func (p *tcpProxy) proxiedURL(t *testing.T, dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.ln.Addr().String()
	return u.String()
}

// An outcome the worker knows is recorded through a database outage longer
// than its lease rather than dropped, and the worker does not claim the row
// again meanwhile: either would send the message twice.
func TestOutboxRecordsThroughDatabaseOutage(t *testing.T) {
	ta := newTestApp(t, nil)
	proxy, db := proxiedDB(t, ta.cfg.databaseURL)
	sms := &recordingSender{fail: func(notice, int) error {
		// Accepted, and then the database goes away for over two leases.
		proxy.setCut(true)
		time.AfterFunc(700*time.Millisecond, func() { proxy.setCut(false) })
		return nil
	}}
	w := ta.otherWorker(sms)
	w.db, w.lease, w.heartbeat, w.poll = db, 300*time.Millisecond, 100*time.Millisecond, 20*time.Millisecond
	ta.startWorker(w, time.Second)
	c := ta.createCustomer("C-1", "+254712345678", nil)
	o := ta.place(map[string]any{"customer_id": c.ID, "item": "kit", "amount": "1"})
	if n := ta.settled(o.ID); n.status != "sent" || n.attempts != 1 || sms.attempts(o.ID) != 1 {
		t.Errorf("after the outage: got %s after %d attempts, %d sends; want sent after 1, and 1 send", n.status, n.attempts, sms.attempts(o.ID))
	}
	if !strings.Contains(ta.logs.String(), "recording outcomes failed; retrying") {
		t.Error("the retry was not logged")
	}
}

// A worker that cannot renew the lease of a send under way cancels the send
// before the lease ends, when another worker may claim the row.
func TestOutboxCancelsASendWhoseLeaseCannotBeRenewed(t *testing.T) {
	ta := newTestApp(t, nil)
	c := ta.createCustomer("C-1", "+254712345678", nil)
	o := ta.place(map[string]any{"customer_id": c.ID, "item": "kit", "amount": "1"})
	proxy, db := proxiedDB(t, ta.cfg.databaseURL)
	slow := &slowSender{d: time.Minute, started: make(chan int64, 1)}
	w := newWorker(db, ta.server.channels, ta.app.log)
	w.channels = ta.otherWorker(slow).channels
	w.lease, w.heartbeat = time.Second, 200*time.Millisecond
	ta.startWorker(w, 100*time.Millisecond)
	<-slow.started
	proxy.setCut(true)
	cut := time.Now()
	eventually(t, 5*time.Second, "the send cancelled", func() bool { return slow.cancelled.Load() == 1 })
	if took := time.Since(cut); took > w.lease {
		t.Errorf("cancelled %v after renewals began failing, want within the %v lease", took, w.lease)
	}
	proxy.setCut(false)
	if n := ta.outbox(o.ID); n.status != "pending" {
		t.Errorf("row: got %s, want pending for another attempt", n.status)
	}
}

// proxiedDB opens a pool to dbURL through a proxy that can cut it off.
func proxiedDB(t *testing.T, dbURL string) (*tcpProxy, *sql.DB) {
	u, _ := url.Parse(dbURL)
	proxy := newTCPProxy(t, u.Host)
	db, err := sql.Open("pgx", proxy.proxiedURL(t, dbURL))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return proxy, db
}

// While the database is unreachable, requests answer 503 with Retry-After,
// which clients may retry, and /readyz says so too.
func TestAPIDatabaseUnavailable(t *testing.T) {
	ta := newTestApp(t, nil)
	proxy, db := proxiedDB(t, ta.cfg.databaseURL)
	orig := ta.store.db
	t.Cleanup(func() { orig.Close() })
	ta.store.db = db
	ta.do("GET", "/v1/customers", nil).must(t, http.StatusOK)
	proxy.setCut(true)
	for _, req := range []struct{ method, path string }{{"GET", "/v1/customers"}, {"POST", "/v1/orders"}} {
		var body any
		if req.method == "POST" {
			body = map[string]any{"customer_id": 1, "item": "kit", "amount": "1"}
		}
		r := ta.do(req.method, req.path, body).must(t, http.StatusServiceUnavailable)
		p := r.problem(t)
		if r.header.Get("Retry-After") == "" || !strings.Contains(p.Detail, r.header.Get("X-Request-Id")) {
			t.Errorf("%s %s: Retry-After %q, detail %q", req.method, req.path, r.header.Get("Retry-After"), p.Detail)
		}
	}
	ta.do("GET", "/readyz", nil).must(t, http.StatusServiceUnavailable)
	proxy.setCut(false)
	ta.do("GET", "/v1/customers", nil).must(t, http.StatusOK)
	ta.do("GET", "/readyz", nil).must(t, http.StatusOK)
}

func TestDatabaseUnavailableClassification(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "57P01"}, true},
		{&pgconn.PgError{Code: "08006"}, true},
		{&pgconn.PgError{Code: "23505"}, false},
		{&net.OpError{Op: "dial", Err: errors.New("refused")}, true},
		{errors.New("sql: database is closed"), false},
		{errNotFound, false},
	}
	for _, tc := range cases {
		if got := databaseUnavailable(tc.err); got != tc.want {
			t.Errorf("%v: got %v, want %v", tc.err, got, tc.want)
		}
	}
}
