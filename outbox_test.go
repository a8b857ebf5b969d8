package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// Each kind of failure ends as the contract says: retried with backoff until
// it succeeds, failed at once when permanent, given up after the last
// attempt, given up sooner when the provider may have accepted it, and not
// retried before the time the provider named.
func TestOutboxOutcomes(t *testing.T) {
	retryable := &SendError{Reason: "africastalking: HTTP 503: try again", Err: errors.New("503")}
	uncertain := &SendError{Uncertain: true, Reason: "africastalking: no answer after the request was sent"}
	quiet := time.Now().Add(time.Hour).Truncate(time.Second)
	cases := []struct {
		name      string
		fail      func(attempt int) error
		status    string
		attempts  int
		lastError string // "" for NULL
		delivered int
	}{
		{"retried until it succeeds", func(a int) error { return map[bool]error{true: retryable}[a <= 2] }, "sent", 3, "", 1},
		{"permanent failure", func(int) error { return &SendError{Permanent: true, Reason: "InvalidPhoneNumber (statusCode 403)"} }, "failed", 1, "InvalidPhoneNumber (statusCode 403)", 0},
		{"a reason PostgreSQL cannot hold, made storable", func(int) error { return &SendError{Permanent: true, Reason: "Invalid\x00Phone"} }, "failed", 1, "Invalid Phone", 0},
		{"given up after the last attempt", func(a int) error { return &SendError{Reason: fmt.Sprintf("HTTP 500 (try %d)", a)} }, "failed", 4, "HTTP 500 (try 4)", 0},
		{"uncertain failures given up sooner", func(int) error { return uncertain }, "failed", 2, uncertain.Reason + "; not retried again, as the provider may have accepted it", 0},
		{"an uncertain failure retried once", func(a int) error { return map[bool]error{true: uncertain}[a == 1] }, "sent", 2, "", 1},
		{"an error of another type is retried", func(a int) error { return map[bool]error{true: errors.New("boom")}[a == 1] }, "sent", 2, "", 1},
		{"not retried before the time the provider named", func(int) error { return &SendError{RetryAt: quiet, Reason: "DoNotDisturbRejection"} }, "pending", 1, "DoNotDisturbRejection", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ta := newTestApp(t, nil)
			ta.fast()
			ta.worker.maxAttempts, ta.worker.maxUncertain = 4, 2
			sms := ta.senders["sms"]
			sms.fail = func(_ notice, attempt int) error { return tc.fail(attempt) }
			ta.startWorker(nil, time.Second)
			c := ta.createCustomer("CUST-1", "+254712345678", nil)
			o := ta.place(map[string]any{"customer_id": c.ID, "item": "kit", "amount": "10.00"})
			eventually(t, 10*time.Second, "the notification settled or put off", func() bool {
				return ta.count("notifications", "status <> 'pending' OR next_attempt_at > now() + interval '1 minute'") == 1
			})
			time.Sleep(100 * time.Millisecond) // ample time for a wrong retry: polls every 20 ms, backoff 10 ms
			n := ta.outbox(o.ID)
			if n.status != tc.status || n.attempts != tc.attempts || n.lastError.String != tc.lastError || n.sentAt.Valid != (tc.status == "sent") {
				t.Errorf("row: got %s, %d attempts, last_error %q, sent_at %v; want %s, %d, %q", n.status, n.attempts, n.lastError.String, n.sentAt.Valid, tc.status, tc.attempts, tc.lastError)
			}
			if tc.status == "sent" && n.providerID.String != fmt.Sprint("rec-", o.ID) {
				t.Errorf("provider_message_id: got %v, want rec-%d", n.providerID, o.ID)
			}
			if tc.status == "pending" && n.nextAttempt.Before(quiet.Add(-time.Second)) {
				t.Errorf("next attempt: got %v, want not before %v", n.nextAttempt, quiet)
			}
			equal(t, "send attempts", sms.attempts(o.ID), tc.attempts)
			equal(t, "messages delivered", len(sms.notices()), tc.delivered)
			v := ta.getOrder(o.ID).Notification
			if v == nil || v.Status != tc.status || v.Attempts != tc.attempts || (v.LastError != nil) != (tc.lastError != "") || (v.SentAt != nil) != (tc.status == "sent") {
				t.Errorf("GET notification: got %+v, want the row's state", v)
			}
		})
	}
}

// Two workers on one outbox (two replicas) deliver every notification once.
func TestOutboxTwoWorkersNoDuplicates(t *testing.T) {
	const orders = 500
	ta := newTestApp(t, nil)
	slow := func(notice, int) error { time.Sleep(5 * time.Millisecond); return nil }
	first := ta.senders["sms"]
	first.fail = slow
	second := &recordingSender{fail: slow}
	other := ta.otherWorker(second)
	// Few slots each, so that neither worker can take the whole outbox in
	// one claim and both keep competing for rows until the end.
	for _, w := range []*worker{ta.worker, other} {
		w.concurrency, w.poll = 8, 5*time.Millisecond
	}
	ta.startWorker(nil, 5*time.Second)
	ta.startWorker(other, 5*time.Second)
	ta.createCustomer("CUST-1", "+254712345678", nil)
	ids := ta.importOrders("CUST-1", orders, true)
	eventually(t, 30*time.Second, "all notifications sent", func() bool { return ta.count("notifications", "status = 'sent'") == orders })
	time.Sleep(100 * time.Millisecond) // late duplicates would come from a row claimed twice
	counts := perOrder(first, second)
	for _, id := range ids {
		equal(t, fmt.Sprint("deliveries of order ", id), counts[id], 1)
	}
	equal(t, "orders delivered", len(counts), orders)
	equal(t, "notifications not sent on the first attempt", ta.count("notifications", "status <> 'sent' OR attempts <> 1"), 0)
	if a, b := len(first.notices()), len(second.notices()); a == 0 || b == 0 {
		t.Errorf("deliveries per worker: got %d and %d, want both workers to take part (else the test shows nothing)", a, b)
	}
}

// otherWorker is a second replica's worker on the app's outbox: its own
// connection pool and senders (every channel sends through s).
func (ta *testApp) otherWorker(s Sender) *worker {
	cs := newChannels()
	for name, ch := range ta.server.channels.byName {
		cs.register(name, s, ch.address)
	}
	w := newWorker(openDB(ta.t, ta.cfg.databaseURL), cs, ta.log)
	w.poll = 20 * time.Millisecond
	return w
}

// slowSender takes d per message, or gives up with a retryable error when
// ctx ends first; it counts the sends cancelled.
type slowSender struct {
	d         time.Duration
	started   chan int64
	cancelled atomic.Int64
}

func (s *slowSender) Send(ctx context.Context, n notice) (string, error) {
	if s.started != nil {
		s.started <- n.OrderID
	}
	select {
	case <-time.After(s.d):
		return fmt.Sprint("slow-", n.OrderID), nil
	case <-ctx.Done():
		s.cancelled.Add(1)
		return "", &SendError{Reason: "gateway request aborted: " + ctx.Err().Error(), Err: ctx.Err()}
	}
}

// Placing an order never waits for a sender, even one that is still sending.
// On shutdown the worker finishes the sends under way within the drain,
// recording them, and cancels the rest, which the next worker delivers.
func TestOutboxShutdownDrains(t *testing.T) {
	for _, tc := range []struct {
		name            string
		sendTime, drain time.Duration
		status          string
	}{
		{"drain longer than the send", 300 * time.Millisecond, 5 * time.Second, "sent"},
		// A send far longer than the drain, so that returning early can only
		// mean the send was cut off, however slow the machine.
		{"drain shorter than the send", 3 * time.Second, 50 * time.Millisecond, "pending"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ta := newTestApp(t, nil)
			ids := make([]int64, 3)
			slow := &slowSender{d: tc.sendTime, started: make(chan int64, len(ids))}
			w := ta.otherWorker(slow)
			ctx, cancel := context.WithCancel(context.Background())
			returned := make(chan struct{}, 1)
			go func() { w.run(ctx, tc.drain); returned <- struct{}{} }()
			c := ta.createCustomer("CUST-1", "+254712345678", nil)
			for i := range ids {
				start := time.Now()
				ids[i] = ta.place(map[string]any{"customer_id": c.ID, "item": fmt.Sprint("kit-", i), "amount": "10.00"}).ID
				if took := time.Since(start); took > time.Second {
					t.Errorf("order %d: POST took %v with a send under way, want under 1s", i, took)
				}
				// Later orders are placed while a send is provably under way.
				eventually(t, 5*time.Second, "the send started", func() bool { return len(slow.started) == i+1 })
			}
			cancel()
			cancelled := time.Now()
			eventually(t, 5*time.Second, "run returned after cancellation", func() bool { return len(returned) == 1 })
			if took := time.Since(cancelled); tc.status == "pending" && took >= tc.sendTime {
				t.Errorf("run returned %v after cancellation, want about the drain, less than the send", took)
			}
			equal(t, "sends cancelled", slow.cancelled.Load(), map[string]int64{"sent": 0, "pending": 3}[tc.status])
			// Recorded before run returned: no waiting here.
			for _, id := range ids {
				if n := ta.outbox(id); n.status != tc.status || n.attempts != 1 || n.lastError.Valid != (tc.status == "pending") {
					t.Errorf("order %d: got %s after %d attempts, last error %v; want %s after 1", id, n.status, n.attempts, n.lastError, tc.status)
				}
			}
			if tc.status == "pending" {
				// The next worker (a restarted replica) delivers what was cut off.
				ta.fast()
				ta.startWorker(nil, time.Second)
				eventually(t, 5*time.Second, "cut-off sends delivered", func() bool { return ta.count("notifications", "status = 'sent'") == len(ids) })
			}
		})
	}
}

// A lease keeps a row from every claim, its own worker's included while the
// row is in flight, even once the lease has lapsed (the worker could not
// record the outcome). A worker whose lease passed to another while it sent
// changes nothing with its outcome, whatever it is; the current claim's
// outcome counts.
func TestOutboxLeasesAndStaleOutcomes(t *testing.T) {
	ta := newTestApp(t, nil)
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	o := ta.place(map[string]any{"customer_id": c.ID, "item": "kit", "amount": "10.00"})
	stale, fresh := ta.otherWorker(&recordingSender{}), ta.otherWorker(&recordingSender{})
	stale.lease = 300 * time.Millisecond
	claimedAt := time.Now()
	first, err := stale.claim(t.Context(), 10)
	if err != nil || len(first) != 1 || first[0].attempts != 1 {
		t.Fatalf("first claim: got %+v, %v; want one row at attempt 1", first, err)
	}
	stale.takeOff(t.Context(), first[0])
	if rows, err := fresh.claim(t.Context(), 10); err != nil || len(rows) != 0 {
		t.Fatalf("claim during the lease: got %d rows, %v; want none", len(rows), err)
	}
	eventually(t, 5*time.Second, "the lease lapsed", func() bool { return ta.count("notifications", "next_attempt_at <= now()") == 1 })
	if own, err := stale.claim(t.Context(), 10); err != nil || len(own) != 0 {
		t.Errorf("claim of its own row in flight: got %d rows, %v; want none", len(own), err)
	}
	second, err := fresh.claim(t.Context(), 10)
	fatalIf(t, err)
	mustEqual(t, "rows of another worker's claim once the lease lapsed", len(second), 1)
	if waited := time.Since(claimedAt); waited < 300*time.Millisecond || second[0].attempts != 2 {
		t.Errorf("re-claimed %v after the first claim at attempt %d, want no sooner than the 300ms lease, attempt 2", waited, second[0].attempts)
	}
	leased := ta.outbox(o.ID)
	equal(t, "claimed notice", second[0].notice, notice{OrderID: o.ID, To: c.Phone, Name: c.Name, Item: "kit", Amount: 1000, Currency: "KES", Time: o.Time})
	fresh.takeOff(t.Context(), second[0])
	record := func(w *worker, c *claimed, err error) {
		c.status, c.providerID, c.err = "sent", "id", err
		if err != nil {
			c.status = "pending"
		}
		w.record(t.Context(), c, nil)
	}
	for _, err := range []error{nil, &SendError{Reason: "stale retryable"}} {
		record(stale, first[0], err)
		equal(t, fmt.Sprintf("row after the stale outcome %v (the second claim untouched)", err), ta.outbox(o.ID), leased)
	}
	record(fresh, second[0], nil)
	record(stale, first[0], nil)
	if n := ta.outbox(o.ID); n.status != "sent" || n.attempts != 2 || n.providerID.String != "id" {
		t.Errorf("row after the current claim's outcome: got %+v, want sent at attempt 2", n)
	}
	contains(t, "the log", ta.logs.String(), "the lease had passed to another worker")
}
