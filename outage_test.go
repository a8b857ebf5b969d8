package main

import (
	"database/sql"
	"errors"
	"fmt"
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

// tcpProxy forwards connections to a target until it is cut, which drops
// every connection and refuses new ones, like a database restarting.
type tcpProxy struct {
	mu    sync.Mutex
	conns []net.Conn
	cut   bool
}

// setCut drops every connection and refuses new ones, or restores the proxy.
func (p *tcpProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// proxiedDB opens a pool to dbURL through a proxy that can cut it off.
func proxiedDB(t *testing.T, dbURL string) (*tcpProxy, *sql.DB) {
	u, err := url.Parse(dbURL)
	fatalIf(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	fatalIf(t, err)
	p, target := &tcpProxy{}, u.Host
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	go func() {
		for c, err := ln.Accept(); err == nil; c, err = ln.Accept() {
			p.mu.Lock()
			var up net.Conn
			if !p.cut {
				up, _ = net.Dial("tcp", target)
			}
			if up == nil { // cut, or the target refused
				c.Close()
			} else {
				p.conns = append(p.conns, c, up)
				go func() { io.Copy(up, c); up.Close() }()
				go func() { io.Copy(c, up); c.Close() }()
			}
			p.mu.Unlock()
		}
	}()
	u.Host = ln.Addr().String()
	return p, openDB(t, u.String())
}

// A live worker's heartbeat keeps a send that outlasts the lease its own:
// another worker never sends the row meanwhile. A worker that cannot renew
// the lease (the database cut off from it) cancels the send before the lease
// ends, when the other worker may claim and deliver the row.
func TestOutboxHeartbeatHoldsTheLease(t *testing.T) {
	ta := newTestApp(t, nil)
	proxy, db := proxiedDB(t, ta.cfg.databaseURL)
	slow := &slowSender{d: time.Minute, started: make(chan int64, 1)}
	w := ta.otherWorker(slow)
	w.db, w.lease, w.heartbeat = db, time.Second, 200*time.Millisecond
	ta.startWorker(w, 100*time.Millisecond)
	c := ta.createCustomer("C-1", "+254712345678", nil)
	o := ta.place(map[string]any{"customer_id": c.ID, "item": "kit", "amount": "1"})
	<-slow.started
	rival := &recordingSender{}
	ta.startWorker(ta.otherWorker(rival), time.Second)
	time.Sleep(2500 * time.Millisecond) // over two leases
	if n := ta.outbox(o.ID); n.attempts != 1 || slow.cancelled.Load() != 0 || len(rival.notices()) != 0 {
		t.Fatalf("while renewed: got %d attempts, %d sends cancelled, %d rival sends; want 1, 0, 0", n.attempts, slow.cancelled.Load(), len(rival.notices()))
	}
	proxy.setCut(true)
	cut := time.Now()
	eventually(t, 5*time.Second, "the send cancelled", func() bool { return slow.cancelled.Load() == 1 })
	if took := time.Since(cut); took > w.lease {
		t.Errorf("cancelled %v after renewals began failing, want within the %v lease", took, w.lease)
	}
	if n := ta.settled(o.ID); n.status != "sent" || n.attempts != 2 || len(rival.notices()) != 1 {
		t.Errorf("row: got %s after %d attempts, %d rival sends; want sent by the rival at attempt 2", n.status, n.attempts, len(rival.notices()))
	}
}

// While the database is unreachable, requests answer 503 with Retry-After,
// which clients may retry, and /readyz says so too. An outcome the worker
// knows is recorded through the outage, longer than its lease, rather than
// dropped, and the worker does not claim the row again meanwhile: either
// would send the message twice.
func TestDatabaseOutage(t *testing.T) {
	ta := newTestApp(t, nil)
	proxy, db := proxiedDB(t, ta.cfg.databaseURL) // the worker's and, once it is cut off, the API's
	cutOff := make(chan struct{})
	sms := &recordingSender{fail: func(_ notice, attempt int) error {
		if attempt == 1 {
			proxy.setCut(true) // the message is accepted, and then the database goes away
			close(cutOff)
		}
		return nil
	}}
	w := ta.otherWorker(sms)
	w.db, w.lease, w.heartbeat = db, 300*time.Millisecond, 100*time.Millisecond
	ta.startWorker(w, time.Second)
	c := ta.createCustomer("C-1", "+254712345678", nil)
	o := ta.place(map[string]any{"customer_id": c.ID, "item": "kit", "amount": "1"})
	<-cutOff
	orig := ta.store.db
	t.Cleanup(func() { orig.Close() })
	ta.store.db = db
	for i, r := range []response{ta.do("GET", "/v1/customers", nil), ta.do("POST", "/v1/orders", map[string]any{"customer_id": c.ID, "item": "kit", "amount": "1"})} {
		p := r.must(t, http.StatusServiceUnavailable).problem(t)
		if r.header.Get("Retry-After") == "" || !strings.Contains(p.Detail, r.header.Get("X-Request-Id")) {
			t.Errorf("request %d: Retry-After %q, detail %q; want a Retry-After and the request id", i, r.header.Get("Retry-After"), p.Detail)
		}
	}
	ta.do("GET", "/readyz", nil).must(t, http.StatusServiceUnavailable)
	time.Sleep(700 * time.Millisecond) // over two leases
	proxy.setCut(false)
	ta.do("GET", "/v1/customers", nil).must(t, http.StatusOK)
	ta.do("GET", "/readyz", nil).must(t, http.StatusOK)
	if n := ta.settled(o.ID); n.status != "sent" || n.attempts != 1 || sms.attempts(o.ID) != 1 {
		t.Errorf("after the outage: got %s after %d attempts, %d sends; want sent after 1, and 1 send", n.status, n.attempts, sms.attempts(o.ID))
	}
	contains(t, "the log", ta.logs.String(), "recording outcomes failed; retrying")
}

func TestDatabaseUnavailableClassification(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "57P01"}, true},
		{&pgconn.PgError{Code: "08006"}, true},
		{&pgconn.PgError{Code: "23505"}, false},
		{&net.OpError{Op: "dial", Err: errors.New("refused")}, true},
		{errors.New("sql: database is closed"), false},
		{fmt.Errorf("reading the reply: %w", io.ErrUnexpectedEOF), true},
		{errNotFound, false},
	} {
		equal(t, fmt.Sprint(tc.err), databaseUnavailable(tc.err), tc.want)
	}
}
