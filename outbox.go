package main

import (
	"cmp"
	"context"
	"crypto/subtle"
	"database/sql"
	"errors"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// worker delivers the outbox, and holds the outbox's SQL. Each round it
// claims due rows with FOR UPDATE SKIP LOCKED, which commits at once and
// moves the rows past a short lease, so that replicas never claim the same
// row. Sends happen outside any transaction, with no connection held, up to
// a bounded number at once, while a heartbeat renews the leases of the rows
// in flight. The rows of a worker that dies fall due again within a lease; a
// worker that cannot renew a lease cancels that send before the lease ends,
// so that no two live workers ever send one row.
//
// A message can be sent twice in one case only: the provider accepted it and
// the worker died, lost the database or had the send cancelled before it
// recorded that, so the row fell due again.
type worker struct {
	db       *sql.DB
	channels *channels
	log      *slog.Logger

	poll         time.Duration // how often to look for rows committed by other replicas
	lease        time.Duration // how long a claim lasts unless renewed
	heartbeat    time.Duration // how often the leases of rows in flight are renewed
	concurrency  int
	maxAttempts  int // for failures that prove the message was not delivered
	maxUncertain int // for failures after which it may have been: fewer, as each retry may duplicate it
	backoff      func(attempt int) time.Duration

	wakeup chan struct{}

	// inFlight holds, by notification id, the rows taken off whose outcomes
	// are not yet recorded; only run's goroutine uses it. flights holds its
	// rows as a []*claimed for the heartbeat, replaced at each change.
	inFlight map[int64]*claimed
	flights  atomic.Value
}

// maxConcurrentSends bounds the sends under way in one process; providers'
// HTTP clients keep as many idle connections, so that sends reuse them.
const maxConcurrentSends = 64

// sendTimeout bounds one send, however often its lease is renewed.
const sendTimeout = 30 * time.Second

func newWorker(db *sql.DB, cs *channels, log *slog.Logger) *worker {
	return &worker{
		db:           db,
		channels:     cs,
		log:          log,
		poll:         500 * time.Millisecond,
		lease:        6 * time.Second,
		heartbeat:    2 * time.Second,
		concurrency:  maxConcurrentSends,
		maxAttempts:  20,
		maxUncertain: 10,
		backoff:      backoff,
		wakeup:       make(chan struct{}, 1),
		inFlight:     map[int64]*claimed{},
	}
}

// backoff is exponential with jitter: about 2 s, 4 s, 8 s ... capped at 30
// minutes (each wait is drawn from the upper half of its step), so twenty
// attempts ride out a provider outage of two and a half to five hours,
// spread so that a burst of failures does not retry in lockstep.
func backoff(attempt int) time.Duration {
	d := min(2*time.Second<<min(attempt-1, 20), 30*time.Minute)
	return d/2 + rand.N(d/2+1)
}

// wake tells the worker that rows were committed; it never blocks.
func (w *worker) wake() {
	select {
	case w.wakeup <- struct{}{}:
	default:
	}
}

// claimed is an outbox row a worker has leased, with what its sender needs,
// and, once sent, the outcome.
type claimed struct {
	id       int64
	attempts int
	channel  string
	notice   notice
	leaseEnd time.Time // of the claim, by this process's clock: no later than the lease the database holds
	// expiry ends the send's context when it fires: a quarter lease before
	// the lease ends, each renewal moving it, or at once when the outcome is
	// recorded. Firing again changes nothing.
	expiry *time.Timer

	status     string // sent, failed, or pending for a retry after retryIn
	providerID string
	err        error
	retryIn    time.Duration
}

// run delivers until ctx ends, then waits up to drain for sends under way and
// records their outcomes before returning. Outcomes are recorded here, each
// write taking every outcome already waiting, so that under load one
// statement records many sends; a send's slot is freed once its outcome is
// recorded, so that no more than concurrency sends are ever accepted but
// unrecorded (the messages a crash could send twice).
func (w *worker) run(ctx context.Context, drain time.Duration) {
	// Sends and their bookkeeping outlive ctx by up to drain, so that a
	// shutdown finishes what it started instead of leaving leases to expire.
	// The drain counts from the end of ctx even while this loop is recording
	// through an outage.
	sendCtx, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	context.AfterFunc(ctx, func() { time.AfterFunc(drain, cancelSends) })
	var renewing sync.WaitGroup
	renewing.Go(func() { w.renewLeases(sendCtx) })
	outcomes := make(chan *claimed, w.concurrency)
	w.purgeIdempotencyKeys(ctx)
	// Keys are purged at start and hourly, so that replicas restarted more
	// often than hourly still purge.
	housekeeping, poll := time.Tick(time.Hour), time.Tick(w.poll)
	for ctx.Err() == nil {
		// A slot is taken until the outcome is recorded, which happens in
		// this loop: a claim that fills every slot is the last until then.
		rows, err := w.claim(ctx, w.concurrency-len(w.inFlight))
		if err != nil && ctx.Err() == nil {
			w.log.Error("outbox: claim failed", "error", err)
		}
		for _, c := range rows {
			ctx := w.takeOff(sendCtx, c)
			go func() {
				w.send(ctx, c)
				outcomes <- c
			}()
		}
		select {
		case <-ctx.Done():
		case o := <-outcomes:
			w.record(sendCtx, o, outcomes)
		case <-w.wakeup:
		case <-poll:
		case <-housekeeping:
			w.purgeIdempotencyKeys(ctx)
		}
	}
	for len(w.inFlight) > 0 {
		w.record(sendCtx, <-outcomes, outcomes)
	}
	if sendCtx.Err() != nil {
		w.log.Warn("shutdown: the drain ended with sends under way or outcomes unrecorded; their rows will be retried after their lease")
	}
	cancelSends()
	renewing.Wait()
}

// claim leases up to n due rows, with what their senders need to render the
// message, leaving out the rows this worker has in flight (whose lease may
// have lapsed while it could not record their outcomes). The statement
// commits on its own, so the claim is visible to every replica before any
// message leaves.
func (w *worker) claim(ctx context.Context, n int) ([]*claimed, error) {
	if n == 0 {
		return nil, nil
	}
	inFlight := slices.AppendSeq(make([]int64, 0, len(w.inFlight)), maps.Keys(w.inFlight)) // never nil, which SQL would read as NULL
	leaseEnd := time.Now().Add(w.lease)
	rows, err := w.db.QueryContext(ctx, `
		UPDATE notifications n
		SET attempts = n.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
		FROM (
			SELECT id FROM notifications
			WHERE status = 'pending' AND next_attempt_at <= now() AND id <> ALL($3)
			ORDER BY next_attempt_at LIMIT $1
			FOR UPDATE SKIP LOCKED
		) due, orders o, customers c
		WHERE n.id = due.id AND o.id = n.order_id AND c.id = o.customer_id
		RETURNING n.id, n.attempts, n.channel, n.recipient, o.id, c.name, o.item, o.amount, o.currency, o.time`,
		n, w.lease.Seconds(), inFlight)
	return collect(rows, err, func(row scanner) (*claimed, error) {
		c := &claimed{leaseEnd: leaseEnd}
		err := row.Scan(&c.id, &c.attempts, &c.channel, &c.notice.To, &c.notice.OrderID, &c.notice.Name,
			&c.notice.Item, &c.notice.Amount, &c.notice.Currency, &c.notice.Time)
		return c, err
	})
}

// takeOff puts a claimed row in flight: its lease is renewed from now on, and
// the context its send gets ends a quarter lease before the lease does,
// unless a renewal moved it: another worker may claim the row then, and must
// not find this one still sending it.
func (w *worker) takeOff(sendCtx context.Context, c *claimed) context.Context {
	ctx, cancel := context.WithTimeout(sendCtx, sendTimeout)
	c.expiry = time.AfterFunc(time.Until(c.leaseEnd)-w.lease/4, cancel)
	w.inFlight[c.id] = c
	w.flights.Store(slices.Collect(maps.Values(w.inFlight)))
	return ctx
}

// renewLeases extends, every heartbeat, the leases of the rows in flight.
func (w *worker) renewLeases(ctx context.Context) {
	tick := time.Tick(w.heartbeat)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
		flights, _ := w.flights.Load().([]*claimed)
		ids, attempts := make([]int64, len(flights)), make([]int64, len(flights))
		for i, c := range flights {
			ids[i], attempts[i] = c.id, int64(c.attempts)
		}
		leaseEnd := time.Now().Add(w.lease)
		renewCtx, cancel := context.WithTimeout(ctx, w.heartbeat)
		_, err := w.db.ExecContext(renewCtx, `
			UPDATE notifications n SET next_attempt_at = now() + make_interval(secs => $3)
			FROM unnest($1::bigint[], $2::int[]) AS f (id, attempts)
			WHERE n.id = f.id AND n.attempts = f.attempts AND n.status = 'pending'`, ids, attempts, w.lease.Seconds())
		cancel()
		if err != nil {
			w.log.Warn("outbox: renewing leases failed; sends are cancelled a quarter lease before their lease ends", "error", err, "rows", len(ids))
			continue
		}
		for _, c := range flights {
			c.expiry.Reset(time.Until(leaseEnd) - w.lease/4)
		}
	}
}

// send delivers one claimed row and decides its outcome: sent; a retry after
// backoff (or after the time the provider named); or failed, after a
// permanent error or the last attempt, which comes sooner when a failure
// leaves the message possibly delivered.
func (w *worker) send(ctx context.Context, c *claimed) {
	c.status = "sent"
	if ch, ok := w.channels.byName[c.channel]; ok {
		c.providerID, c.err = ch.sender.Send(ctx, c.notice)
	} else {
		c.err = &SendError{Permanent: true, Reason: "channel " + c.channel + " is not configured on this server"}
	}
	// An error that is not a *SendError counts as a retryable one.
	se, _ := errors.AsType[*SendError](c.err)
	se = cmp.Or(se, &SendError{})
	switch {
	case c.err == nil:
	case se.Permanent, c.attempts >= w.maxAttempts:
		c.status = "failed"
	case se.Uncertain && c.attempts >= w.maxUncertain:
		c.status = "failed"
		c.err = &SendError{Reason: se.Reason + "; not retried again, as the provider may have accepted it", Err: se}
	default:
		c.status = "pending"
		c.retryIn = max(w.backoff(c.attempts), time.Until(se.RetryAt))
	}
}

// record stores the outcome o of a row in flight, with every outcome already
// waiting in waiting, in one statement, then takes their rows out of flight.
// An outcome applies only if the row still carries the attempt it was
// claimed with: when a lease ran out mid-send and another worker claimed the
// row, that worker's outcome counts. Recording happens even while shutting
// down: losing an outcome would resend a message that was delivered.
func (w *worker) record(ctx context.Context, o *claimed, waiting <-chan *claimed) {
	batch := []*claimed{o}
	for len(waiting) > 0 {
		batch = append(batch, <-waiting)
	}
	ids, attempts, retryIn := make([]int64, len(batch)), make([]int64, len(batch)), make([]float64, len(batch))
	statuses, providerIDs, lastErrors := make([]string, len(batch)), make([]string, len(batch)), make([]string, len(batch))
	// A provider's words are made storable here, whatever the sender: text
	// PostgreSQL cannot hold (a NUL) would fail the update, which is retried
	// until it lands, and so stop the worker.
	for i, o := range batch {
		ids[i], attempts[i], statuses[i], retryIn[i] = o.id, int64(o.attempts), o.status, o.retryIn.Seconds()
		providerIDs[i] = storable(o.providerID, "")
		if o.err != nil {
			lastErrors[i] = storable(o.err.Error(), "")
		}
	}
	// The update is guarded by the attempt number, so repeating it is safe.
	// It is retried until the database answers or the shutdown's drain ends,
	// because the process still knows these outcomes and dropping one would
	// resend a delivered message; meanwhile the rows stay out of this
	// worker's claims, and the heartbeat renews their leases when it can.
	var applied []int64
	err := retry(ctx, time.Time{}, func() error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		rows, err := w.db.QueryContext(ctx, `
			UPDATE notifications n SET
				status = u.status,
				sent_at = CASE WHEN u.status = 'sent' THEN now() END,
				provider_message_id = NULLIF(u.provider_id, ''),
				last_error = NULLIF(u.last_error, ''),
				next_attempt_at = CASE WHEN u.status = 'pending' THEN now() + make_interval(secs => u.retry_in) ELSE n.next_attempt_at END
			FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[], $6::float8[])
				AS u (id, attempts, status, provider_id, last_error, retry_in)
			WHERE n.id = u.id AND n.attempts = u.attempts
			RETURNING n.id`, ids, attempts, statuses, providerIDs, lastErrors, retryIn)
		applied, err = collect(rows, err, func(row scanner) (id int64, err error) { return id, row.Scan(&id) })
		return err
	}, func(err error, wait time.Duration) {
		w.log.Warn("outbox: recording outcomes failed; retrying", "error", err, "outcomes", len(batch), "retry_in", wait.String())
	})
	for _, o := range batch {
		o.expiry.Reset(0)
		delete(w.inFlight, o.id)
		level, msg := slog.LevelInfo, "notification "+o.status
		if err != nil {
			level, msg = slog.LevelError, msg+"; recording it failed, so the row falls due again after its lease"
		} else if !slices.Contains(applied, o.id) {
			// If both workers sent, this is the one duplicate the design allows.
			level, msg = slog.LevelWarn, msg+", but the lease had passed to another worker; outcome discarded"
		}
		w.log.Log(ctx, level, msg, "notification_id", o.id, "order_id", o.notice.OrderID, "channel", o.channel, "attempt", o.attempts,
			"provider_id", o.providerID, "error", o.err, "retry_in", o.retryIn.String(), "record_error", err)
	}
	w.flights.Store(slices.Collect(maps.Values(w.inFlight)))
}

// purgeIdempotencyKeys forgets keys older than 48 hours; the contract
// promises at least 24.
func (w *worker) purgeIdempotencyKeys(ctx context.Context) {
	if _, err := w.db.ExecContext(ctx, `DELETE FROM idempotency_keys WHERE created_at < now() - interval '48 hours'`); err != nil {
		w.log.Error("purging idempotency keys failed", "error", err)
	}
}

// report applies a delivery report to the SMS it describes, if it was sent
// and has no final report yet; an interim report, or one of an unknown
// message, changes nothing.
func (w *worker) report(ctx context.Context, r deliveryReport) error {
	_, err := w.db.ExecContext(ctx, `
		UPDATE notifications SET
			status = $2,
			delivered_at = CASE WHEN $2 = 'delivered' THEN now() END,
			last_error = CASE WHEN $2 = 'undelivered' THEN $3 ELSE last_error END
		WHERE provider_message_id = $1 AND channel = 'sms' AND status = 'sent' AND $2 <> ''`, r.providerID, r.status, r.reason)
	return err
}

// handleDeliveryReport takes Africa's Talking's delivery-report callback. The
// secret in the path is the only credential the gateway can present, so any
// other value, or none configured, is an unknown path. A well-formed report
// is answered 200, even for an unknown message, so that the gateway stops
// sending it.
func (s *server) handleDeliveryReport(w http.ResponseWriter, r *http.Request) {
	if s.callbackSecret == "" || subtle.ConstantTimeCompare([]byte(r.PathValue("secret")), []byte(s.callbackSecret)) != 1 {
		fail(w, r, &requestError{status: http.StatusNotFound, detail: "no route for " + r.Method + " /hooks/africastalking/…"})
		return
	}
	var err error
	if mediaType(r) != "application/x-www-form-urlencoded" {
		err = &requestError{status: http.StatusUnsupportedMediaType, detail: "Content-Type must be application/x-www-form-urlencoded"}
	} else if r.Body = http.MaxBytesReader(w, r.Body, 64<<10); r.ParseForm() != nil {
		err = malformed("the body is not a form of at most 64 KiB")
	} else if report, perr := parseDeliveryReport(r.PostForm); perr != nil {
		err = malformed(perr.Error())
	} else {
		err = s.outbox.report(r.Context(), report)
	}
	respond(w, r, http.StatusOK, map[string]string{"status": "recorded"}, err)
}
