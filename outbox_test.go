package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

func TestOutboxRetryThenSuccess(t *testing.T) {
	ta := newTestApp(t, nil)
	ntFast(ta)
	sms := ta.senders["sms"]
	sms.fail = func(m Message, attempt int) error {
		if attempt <= 2 {
			return &SendError{Reason: "africastalking: HTTP 503: try again", Err: errors.New("503")}
		}
		return nil
	}
	ta.startWorker()
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	o := ntPlace(t, ta, map[string]any{"customer_id": c.ID, "item": "kit", "amount": "10.00"})

	eventually(t, 5*time.Second, "notification sent after two retryable failures", func() bool {
		return ntMustRow(t, ta.store.db, o.ID).status != "pending"
	})
	n := ntMustRow(t, ta.store.db, o.ID)
	if n.status != "sent" || n.attempts != 3 || n.lastError.Valid || !n.sentAt.Valid || n.lockedUntil.Valid {
		t.Errorf("row: got status %s attempts %d last_error %v sent_at %v locked_until %v, want sent, 3, NULL, set, NULL",
			n.status, n.attempts, n.lastError, n.sentAt.Valid, n.lockedUntil)
	}
	if n.providerID.String != "rec-"+strconv.FormatInt(o.ID, 10) {
		t.Errorf("provider_message_id: got %v, want rec-%d", n.providerID, o.ID)
	}
	v := ntGetOrder(t, ta, o.ID).Notification
	if v == nil || v.Status != "sent" || v.Attempts != 3 || v.LastError != nil || v.SentAt == nil {
		t.Errorf("GET notification: got %+v, want sent, attempts 3, last_error null, sent_at set", v)
	}
	if got := ntSeen(sms, o.ID); got != 3 {
		t.Errorf("send attempts: got %d, want 3", got)
	}
	if got := len(sms.messages()); got != 1 {
		t.Errorf("messages delivered: got %d, want 1", got)
	}
}

func TestOutboxPermanentFailure(t *testing.T) {
	ta := newTestApp(t, nil)
	ntFast(ta)
	const reason = "africastalking: InvalidPhoneNumber (statusCode 403)"
	sms := ta.senders["sms"]
	sms.fail = func(Message, int) error { return &SendError{Permanent: true, Reason: reason} }
	ta.startWorker()
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	o := ntPlace(t, ta, map[string]any{"customer_id": c.ID, "item": "kit", "amount": "10.00"})

	eventually(t, 5*time.Second, "notification failed", func() bool {
		return ntMustRow(t, ta.store.db, o.ID).status != "pending"
	})
	// Ample time for a (wrong) retry: polls every 20 ms, backoff 10 ms.
	time.Sleep(500 * time.Millisecond)
	n := ntMustRow(t, ta.store.db, o.ID)
	if n.status != "failed" || n.attempts != 1 || n.lastError.String != reason || n.sentAt.Valid || n.lockedUntil.Valid {
		t.Errorf("row: got status %s attempts %d last_error %v sent_at %v locked_until %v, want failed, 1, %q, NULL, NULL",
			n.status, n.attempts, n.lastError, n.sentAt.Valid, n.lockedUntil, reason)
	}
	if got := ntSeen(sms, o.ID); got != 1 {
		t.Errorf("send attempts: got %d, want 1 (a permanent failure is never retried)", got)
	}
	v := ntGetOrder(t, ta, o.ID).Notification
	if v == nil || v.Status != "failed" || v.Attempts != 1 || v.LastError == nil || *v.LastError != reason || v.SentAt != nil {
		t.Errorf("GET notification: got %+v, want failed, attempts 1, last_error %q, sent_at null", v, reason)
	}
}

func TestOutboxGivesUpAfterMaxAttempts(t *testing.T) {
	ta := newTestApp(t, nil)
	ntFast(ta)
	ta.worker.maxAttempts = 3
	sms := ta.senders["sms"]
	sms.fail = func(_ Message, attempt int) error {
		return &SendError{Reason: fmt.Sprintf("africastalking: HTTP 500 (try %d)", attempt)}
	}
	ta.startWorker()
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	o := ntPlace(t, ta, map[string]any{"customer_id": c.ID, "item": "kit", "amount": "10.00"})

	eventually(t, 5*time.Second, "notification given up", func() bool {
		return ntMustRow(t, ta.store.db, o.ID).status != "pending"
	})
	time.Sleep(300 * time.Millisecond)
	n := ntMustRow(t, ta.store.db, o.ID)
	if n.status != "failed" || n.attempts != 3 || n.lastError.String != "africastalking: HTTP 500 (try 3)" {
		t.Errorf("row: got status %s attempts %d last_error %v, want failed, 3, the last attempt's reason", n.status, n.attempts, n.lastError)
	}
	if got := ntSeen(sms, o.ID); got != 3 {
		t.Errorf("send attempts: got %d, want 3", got)
	}
}

func TestOutboxTwoWorkersNoDuplicates(t *testing.T) {
	const orders = 500
	ta := newTestApp(t, nil)
	slow := func(Message, int) error { time.Sleep(5 * time.Millisecond); return nil }
	first := ta.senders["sms"]
	first.fail = slow
	second := &recordingSender{fail: slow}

	// The second replica has its own connection pool, as another process would.
	db2, err := sql.Open("pgx", ta.cfg.databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db2.Close() })
	other := newWorker(db2, ntChannelsLike(ta.server.channels, func(string) Sender { return second }), ta.log)
	// Few slots each, so that neither worker can take the whole outbox in
	// one claim and both keep competing for rows until the end.
	for _, w := range []*worker{ta.worker, other} {
		w.concurrency = 8
		w.poll = 5 * time.Millisecond
	}
	ta.startWorker()
	ntStartWorker(t, other, 5*time.Second)

	ta.createCustomer("CUST-1", "+254712345678", nil)
	ids := ntImport(t, ta, "CUST-1", orders, true)
	eventually(t, 30*time.Second, fmt.Sprintf("all %d notifications sent", orders), func() bool {
		return ntCountWhere(t, ta.store.db, "status = 'sent'") == orders
	})
	// Late duplicates would come from a row claimed twice; give them time.
	time.Sleep(100 * time.Millisecond)

	counts := ntPerOrder(first, second)
	for _, id := range ids {
		if counts[id] != 1 {
			t.Errorf("order %d: got %d deliveries, want exactly 1", id, counts[id])
		}
	}
	if len(counts) != orders {
		t.Errorf("orders delivered: got %d, want %d", len(counts), orders)
	}
	if n := ntCountWhere(t, ta.store.db, "status <> 'sent' OR attempts <> 1"); n != 0 {
		t.Errorf("rows not sent on the first attempt: got %d, want 0", n)
	}
	a, b := len(first.messages()), len(second.messages())
	t.Logf("worker 1 delivered %d, worker 2 delivered %d", a, b)
	if a == 0 || b == 0 {
		t.Errorf("deliveries per worker: got %d and %d, want both workers to take part (else the test shows nothing)", a, b)
	}
}

func TestOutboxCrashBetweenClaimAndSend(t *testing.T) {
	ta := newTestApp(t, nil)
	ntFast(ta)
	ta.createCustomer("CUST-1", "+254712345678", nil)
	ids := ntImport(t, ta, "CUST-1", 5, true)

	// A replica that commits its claim and dies before sending anything.
	dead := newWorker(ta.store.db, ta.server.channels, ta.log)
	dead.lease = time.Second
	claimedAt := time.Now()
	rows, err := dead.claim(t.Context(), 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(ids) {
		t.Fatalf("claimed: got %d rows, want %d", len(rows), len(ids))
	}

	ta.startWorker()
	time.Sleep(time.Until(claimedAt.Add(700 * time.Millisecond)))
	if got := ta.senders["sms"].messages(); len(got) != 0 {
		t.Fatalf("before the lease ended: got %d messages sent, want 0 (the rows are leased)", len(got))
	}
	eventually(t, 5*time.Second, "abandoned rows delivered after the lease", func() bool {
		return ntCountWhere(t, ta.store.db, "status = 'sent'") == len(ids)
	})
	if elapsed := time.Since(claimedAt); elapsed < 900*time.Millisecond {
		t.Errorf("delivered %v after the claim, want no sooner than the 1s lease", elapsed)
	}
	counts := ntPerOrder(ta.senders["sms"])
	for _, id := range ids {
		if counts[id] != 1 {
			t.Errorf("order %d: got %d deliveries, want exactly 1", id, counts[id])
		}
		if n := ntMustRow(t, ta.store.db, id); n.attempts != 2 {
			t.Errorf("order %d attempts: got %d, want 2 (the dead claim counts)", id, n.attempts)
		}
	}
}

// ntSlowSender takes d per message, or gives up with a retryable error when
// ctx ends first; it counts sends started, finished and cancelled.
type ntSlowSender struct {
	d                            time.Duration
	started                      chan int64
	finished, cancelled, entered atomic.Int64
}

func (s *ntSlowSender) Send(ctx context.Context, m Message) (string, error) {
	s.entered.Add(1)
	if s.started != nil {
		s.started <- m.OrderID
	}
	select {
	case <-time.After(s.d):
		s.finished.Add(1)
		return "slow-" + strconv.FormatInt(m.OrderID, 10), nil
	case <-ctx.Done():
		s.cancelled.Add(1)
		return "", &SendError{Reason: "gateway request aborted: " + ctx.Err().Error(), Err: ctx.Err()}
	}
}

func TestOutboxShutdownDrains(t *testing.T) {
	setup := func(t *testing.T, n int, sendTime time.Duration) (*testApp, []int64, *ntSlowSender, *worker) {
		ta := newTestApp(t, nil)
		ta.createCustomer("CUST-1", "+254712345678", nil)
		ids := ntImport(t, ta, "CUST-1", n, true)
		slow := &ntSlowSender{d: sendTime, started: make(chan int64, n)}
		w := newWorker(ta.store.db, ntChannelsLike(ta.server.channels, func(string) Sender { return slow }), ta.log)
		w.backoff = func(int) time.Duration { return 10 * time.Millisecond }
		return ta, ids, slow, w
	}
	waitStarted := func(t *testing.T, slow *ntSlowSender, n int) {
		for range n {
			select {
			case <-slow.started:
			case <-time.After(5 * time.Second):
				t.Fatalf("sends started: got fewer than %d after 5s", n)
			}
		}
	}

	t.Run("drain longer than the send finishes and records it", func(t *testing.T) {
		ta, ids, slow, w := setup(t, 3, 300*time.Millisecond)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); w.run(ctx, 5*time.Second) }()
		waitStarted(t, slow, len(ids))
		cancel()
		cancelled := time.Now()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("run: still running 5s after cancellation")
		}
		if got := slow.finished.Load(); got != int64(len(ids)) {
			t.Errorf("sends finished when run returned: got %d, want %d", got, len(ids))
		}
		if got := slow.cancelled.Load(); got != 0 {
			t.Errorf("sends cancelled: got %d, want 0", got)
		}
		t.Logf("run returned %v after cancellation", time.Since(cancelled))
		// Recorded before run returned: no waiting here.
		for _, id := range ids {
			n := ntMustRow(t, ta.store.db, id)
			if n.status != "sent" || n.attempts != 1 || n.providerID.String != "slow-"+strconv.FormatInt(id, 10) {
				t.Errorf("order %d: got status %s attempts %d provider id %v, want sent, 1, slow-%d", id, n.status, n.attempts, n.providerID, id)
			}
		}
	})

	t.Run("drain shorter than the send cancels it and keeps the row", func(t *testing.T) {
		// A send far longer than the drain, so that returning early can only
		// mean the send was cut off, however slow the machine.
		const sendTime, drain = 3 * time.Second, 50 * time.Millisecond
		ta, ids, slow, w := setup(t, 2, sendTime)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); w.run(ctx, drain) }()
		waitStarted(t, slow, len(ids))
		cancel()
		cancelled := time.Now()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("run: still running 5s after cancellation")
		}
		if took := time.Since(cancelled); took >= sendTime {
			t.Errorf("run returned %v after cancellation, want about the %v drain, less than the %v send", took, drain, sendTime)
		}
		if got := slow.cancelled.Load(); got != int64(len(ids)) {
			t.Errorf("sends cancelled: got %d, want %d", got, len(ids))
		}
		for _, id := range ids {
			n := ntMustRow(t, ta.store.db, id)
			if n.status != "pending" || n.attempts != 1 || !n.lastError.Valid || n.lockedUntil.Valid {
				t.Errorf("order %d: got status %s attempts %d last_error %v locked_until %v, want pending, 1, the abort, NULL",
					id, n.status, n.attempts, n.lastError, n.lockedUntil)
			}
		}
		// The next worker (a restarted replica) delivers what was cut off.
		ntFast(ta)
		ta.startWorker()
		eventually(t, 5*time.Second, "cut-off sends delivered by the next worker", func() bool {
			return ntCountWhere(t, ta.store.db, "status = 'sent'") == len(ids)
		})
		for id, n := range ntPerOrder(ta.senders["sms"]) {
			if n != 1 {
				t.Errorf("order %d: got %d deliveries, want 1", id, n)
			}
		}
	})
}

func TestOutboxRequestPathNeverWaits(t *testing.T) {
	const apiKey = "atsk_nt_hang"
	fake := ntNewATFake(t, apiKey, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-t.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	ta := newTestApp(t, map[string]string{
		"KEEP_SENDERS": "1",
		"AT_USERNAME":  "acme-lab",
		"AT_API_KEY":   apiKey,
		"AT_BASE_URL":  fake.srv.URL,
	})
	// A short drain keeps the test from waiting out the hung sends at the end.
	ntStartWorker(t, ta.worker, 100*time.Millisecond)
	c := ta.createCustomer("CUST-1", "+254712345678", nil)

	const bound = time.Second
	for i := range 3 {
		start := time.Now()
		ntPlace(t, ta, map[string]any{"customer_id": c.ID, "item": "kit-" + strconv.Itoa(i), "amount": "10.00"})
		if took := time.Since(start); took > bound {
			t.Errorf("order %d: POST took %v with the gateway hanging, want under %v", i, took, bound)
		}
		if i == 0 {
			// Later orders are placed while a send is provably stuck.
			select {
			case <-fake.arrived:
			case <-time.After(5 * time.Second):
				t.Fatal("the worker never reached the gateway")
			}
		}
	}
	if n := ntCountWhere(t, ta.store.db, "status = 'pending'"); n != 3 {
		t.Errorf("pending notifications: got %d, want 3", n)
	}
}

func TestOutboxLeaseExpiredClaimable(t *testing.T) {
	ta := newTestApp(t, nil)
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	o := ntPlace(t, ta, map[string]any{"customer_id": c.ID, "item": "kit", "amount": "10.00"})
	ctx := t.Context()

	workerWith := func(send func(context.Context, Message) (string, error)) *worker {
		return newWorker(ta.store.db, ntChannelsLike(ta.server.channels, func(string) Sender { return ntFuncSender{send} }), ta.log)
	}
	stale := workerWith(func(context.Context, Message) (string, error) { return "stale-id", nil })
	stale.lease = 300 * time.Millisecond
	fresh := workerWith(func(context.Context, Message) (string, error) { return "fresh-id", nil })

	// Taken before the claim, whose lease starts at the database's now():
	// the row cannot fall due before claimedAt plus the lease.
	claimedAt := time.Now()
	first, err := stale.claim(ctx, 10)
	if err != nil || len(first) != 1 {
		t.Fatalf("first claim: got %d rows, %v; want 1", len(first), err)
	}
	if first[0].attempts != 1 {
		t.Errorf("first claim attempts: got %d, want 1", first[0].attempts)
	}
	if rows, err := fresh.claim(ctx, 10); err != nil || len(rows) != 0 {
		t.Fatalf("claim during the lease: got %d rows, %v; want none", len(rows), err)
	}

	var second []claimed
	eventually(t, 5*time.Second, "row claimable once the lease expired", func() bool {
		rows, err := fresh.claim(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		second = rows
		return len(rows) == 1
	})
	if waited := time.Since(claimedAt); waited < 300*time.Millisecond {
		t.Errorf("re-claimed %v after the first claim, want no sooner than the 300ms lease", waited)
	}
	if second[0].id != first[0].id || second[0].attempts != 2 {
		t.Fatalf("second claim: got id %d attempts %d, want id %d attempts 2", second[0].id, second[0].attempts, first[0].id)
	}
	leased := ntMustRow(t, ta.store.db, o.ID)

	// The stale worker finishing late, whatever its outcome, must leave the
	// newer claim alone.
	for _, tt := range []struct {
		name string
		send func(context.Context, Message) (string, error)
	}{
		{"success", func(context.Context, Message) (string, error) { return "stale-id", nil }},
		{"permanent failure", func(context.Context, Message) (string, error) {
			return "", &SendError{Permanent: true, Reason: "stale permanent"}
		}},
		{"retryable failure", func(context.Context, Message) (string, error) {
			return "", &SendError{Reason: "stale retryable"}
		}},
	} {
		t.Run("stale "+tt.name+" is discarded", func(t *testing.T) {
			w := workerWith(tt.send)
			w.backoff = func(int) time.Duration { return time.Millisecond }
			w.deliver(ctx, first[0])
			n := ntMustRow(t, ta.store.db, o.ID)
			if n.status != "pending" || n.attempts != 2 || n.lastError.Valid || n.providerID.Valid || n.sentAt.Valid ||
				!n.lockedUntil.Valid || !n.lockedUntil.Time.Equal(leased.lockedUntil.Time) {
				t.Errorf("row after the stale outcome: got status %s attempts %d last_error %v provider id %v sent_at %v locked_until %v, "+
					"want pending, 2, NULL, NULL, NULL, %v (the second claim untouched)",
					n.status, n.attempts, n.lastError, n.providerID, n.sentAt.Valid, n.lockedUntil, leased.lockedUntil.Time)
			}
		})
	}

	fresh.deliver(ctx, second[0])
	n := ntMustRow(t, ta.store.db, o.ID)
	if n.status != "sent" || n.attempts != 2 || n.providerID.String != "fresh-id" {
		t.Errorf("row after the current claim's outcome: got status %s attempts %d provider id %v, want sent, 2, fresh-id",
			n.status, n.attempts, n.providerID)
	}
	// And a stale outcome after the row is settled changes nothing either.
	stale.deliver(ctx, first[0])
	if after := ntMustRow(t, ta.store.db, o.ID); after.status != "sent" || after.providerID.String != "fresh-id" {
		t.Errorf("row after a late stale success: got status %s provider id %v, want sent, fresh-id", after.status, after.providerID)
	}
}

// BenchmarkOutboxDelivery measures delivery throughput with the default
// worker settings against a gateway that takes 50 ms per message.
func BenchmarkOutboxDelivery(b *testing.B) {
	const perRound = 2000
	ta := newTestApp(b, nil)
	gateway := &ntSlowSender{d: 50 * time.Millisecond}
	for name, ch := range ta.server.channels.byName {
		ta.server.channels.register(name, gateway, ch.address)
	}
	ta.createCustomer("CUST-1", "+254712345678", nil)
	var (
		elapsed   time.Duration
		delivered int
	)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ntImport(b, ta, "CUST-1", perRound, true)
		want := (i + 1) * perRound
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		b.StartTimer()
		start := time.Now()
		go func() { defer close(done); ta.worker.run(ctx, 30*time.Second) }()
		for ntCountWhere(b, ta.store.db, "status = 'sent'") < want {
			time.Sleep(5 * time.Millisecond)
		}
		elapsed += time.Since(start)
		b.StopTimer()
		cancel()
		<-done
		delivered += perRound
	}
	if n := ntCountWhere(b, ta.store.db, "status <> 'sent'"); n != 0 {
		b.Fatalf("unsent rows: got %d, want 0", n)
	}
	b.ReportMetric(float64(delivered)/elapsed.Seconds(), "notifications/s")
}
