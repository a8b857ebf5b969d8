package main

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// worker delivers the outbox. Each round it claims due rows with FOR UPDATE
// SKIP LOCKED, which commits at once and moves the rows past a lease, so that
// replicas never claim the same row and a worker that dies leaves rows that
// fall due again when the lease ends. Sends happen outside any transaction,
// with no connection held, up to a bounded number at once.
//
// A message can be sent twice in one case only: the provider accepted it and
// the worker died (or lost the database) before recording that, so the row
// falls due again after the lease.
type worker struct {
	db       *sql.DB
	channels *channels
	log      *slog.Logger

	poll        time.Duration // how often to look for rows committed by other replicas
	lease       time.Duration // how long a claim lasts; longer than any send
	sendTimeout time.Duration
	concurrency int
	maxAttempts int
	backoff     func(attempt int) time.Duration

	wakeup chan struct{}
}

// maxConcurrentSends bounds the sends under way in one process; providers'
// HTTP clients keep as many idle connections, so that sends reuse them.
const maxConcurrentSends = 64

func newWorker(db *sql.DB, cs *channels, log *slog.Logger) *worker {
	return &worker{
		db:          db,
		channels:    cs,
		log:         log,
		poll:        500 * time.Millisecond,
		lease:       2 * time.Minute,
		sendTimeout: 30 * time.Second,
		concurrency: maxConcurrentSends,
		maxAttempts: 20,
		backoff:     backoff,
		wakeup:      make(chan struct{}, 1),
	}
}

// backoff is exponential with jitter: about 2 s, 4 s, 8 s ... capped at 30
// minutes (each wait is drawn from the upper half of its step), so twenty
// attempts ride out a provider outage of three to five hours, spread so that
// a burst of failures does not retry in lockstep.
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

// claimed is an outbox row a worker has leased.
type claimed struct {
	id        int64
	attempts  int
	channel   string
	msg       Message
	claimedAt time.Time // when the lease began, by this process's clock
}

// run delivers until ctx ends, then waits up to drain for sends under way and
// records their outcomes before returning.
func (w *worker) run(ctx context.Context, drain time.Duration) {
	// Sends and their bookkeeping outlive ctx by up to drain, so that a
	// shutdown finishes what it started instead of leaving leases to expire.
	sendCtx, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSends()
	slots := make(chan struct{}, w.concurrency)
	freed := make(chan struct{}, 1) // a send finished while every slot was busy
	var inFlight sync.WaitGroup
	outcomes := make(chan outcome, w.concurrency)
	recorded := make(chan struct{})
	go func() { defer close(recorded); w.record(sendCtx, outcomes) }()
	defer func() {
		done := make(chan struct{})
		go func() { inFlight.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(drain):
			w.log.Warn("shutdown: sends still under way were cancelled; they will be retried after their lease")
			cancelSends()
			<-done
		}
		close(outcomes)
		<-recorded
	}()
	// Keys are purged at start and hourly, so that replicas restarted more
	// often than hourly still purge.
	w.purgeIdempotencyKeys(ctx)
	housekeeping := time.NewTicker(time.Hour)
	defer housekeeping.Stop()
	poll := time.NewTimer(0)
	defer poll.Stop()
	for {
		free := w.concurrency - len(slots)
		var rows []claimed
		if free > 0 {
			var err error
			rows, err = w.claim(ctx, free)
			if err != nil && ctx.Err() == nil {
				w.log.Error("outbox: claim failed", "error", err)
			}
		}
		for _, c := range rows {
			slots <- struct{}{}
			inFlight.Add(1)
			go func() {
				o := w.send(sendCtx, c)
				// The slot is freed once the outcome is recorded, so that no
				// more than concurrency sends are ever accepted but unrecorded
				// (the messages a crash could send twice).
				o.release = func() {
					<-slots
					inFlight.Done()
					select {
					case freed <- struct{}{}:
					default:
					}
				}
				outcomes <- o
			}()
		}
		if len(rows) == free && free > 0 {
			continue // there may be more due rows
		}
		var whenFreed <-chan struct{}
		if len(slots) == w.concurrency {
			whenFreed = freed
		}
		poll.Reset(w.poll)
		select {
		case <-ctx.Done():
			return
		case <-whenFreed:
		case <-w.wakeup:
		case <-poll.C:
		case <-housekeeping.C:
			w.purgeIdempotencyKeys(ctx)
		}
	}
}

// claim leases up to n due rows. The statement commits on its own, so the
// claim is visible to every replica before any message leaves.
func (w *worker) claim(ctx context.Context, n int) ([]claimed, error) {
	claimedAt := time.Now()
	rows, err := w.db.QueryContext(ctx, `
		UPDATE notifications n
		SET attempts = n.attempts + 1,
		    locked_until = now() + make_interval(secs => $2),
		    next_attempt_at = now() + make_interval(secs => $2)
		FROM (
			SELECT id FROM notifications
			WHERE status = 'pending' AND next_attempt_at <= now()
			ORDER BY next_attempt_at
			LIMIT $1
			FOR UPDATE SKIP LOCKED
		) due
		WHERE n.id = due.id
		RETURNING n.id, n.attempts, n.channel, n.order_id, n.recipient, n.subject, n.message`,
		n, w.lease.Seconds())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []claimed
	for rows.Next() {
		c := claimed{claimedAt: claimedAt}
		if err := rows.Scan(&c.id, &c.attempts, &c.channel, &c.msg.OrderID, &c.msg.To, &c.msg.Subject, &c.msg.Body); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// outcome is what became of one send.
type outcome struct {
	claimed
	status     string // sent, failed, or pending for a retry after retryIn
	providerID string
	err        error
	retryIn    time.Duration
	release    func() // called once the outcome is recorded (or given up)
}

// send delivers one claimed row and decides its outcome: sent, a retry after
// backoff, or failed after a permanent error or the last attempt.
func (w *worker) send(ctx context.Context, c claimed) outcome {
	o := outcome{claimed: c, status: "sent"}
	ch, ok := w.channels.byName[c.channel]
	if !ok {
		o.err = &SendError{Permanent: true, Reason: "channel " + c.channel + " is not configured on this server"}
	} else {
		sendCtx, cancel := context.WithTimeout(ctx, w.sendTimeout)
		o.providerID, o.err = ch.sender.Send(sendCtx, c.msg)
		cancel()
	}
	var se *SendError
	switch {
	case o.err == nil:
	case errors.As(o.err, &se) && se.Permanent, c.attempts >= w.maxAttempts:
		o.status = "failed"
	default:
		o.status = "pending"
		o.retryIn = w.backoff(c.attempts)
	}
	return o
}

// deliver sends one claimed row and records its outcome at once.
func (w *worker) deliver(ctx context.Context, c claimed) {
	w.recordBatch(ctx, []outcome{w.send(ctx, c)})
}

// record writes outcomes as they come, each write taking every outcome
// already waiting, so that under load one statement records many sends.
// Retries of a failed write stop when ctx ends (the shutdown's drain time).
func (w *worker) record(ctx context.Context, outcomes <-chan outcome) {
	for o := range outcomes {
		batch := []outcome{o}
	gather:
		for len(batch) < 256 {
			select {
			case more, ok := <-outcomes:
				if !ok {
					break gather
				}
				batch = append(batch, more)
			default:
				break gather
			}
		}
		w.recordBatch(ctx, batch)
		for _, o := range batch {
			o.release()
		}
	}
}

// applyOutcomes runs the guarded update once and returns the ids it applied to.
func (w *worker) applyOutcomes(ids, attempts []int64, statuses, providerIDs, lastErrors []string, retryIn []float64) (map[int64]bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	applied := make(map[int64]bool, len(ids))
	rows, err := w.db.QueryContext(ctx, `
		UPDATE notifications n SET
			status = u.status,
			sent_at = CASE WHEN u.status = 'sent' THEN now() END,
			provider_message_id = NULLIF(u.provider_id, ''),
			last_error = NULLIF(u.last_error, ''),
			next_attempt_at = CASE WHEN u.status = 'pending' THEN now() + make_interval(secs => u.retry_in) ELSE n.next_attempt_at END,
			locked_until = NULL
		FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[], $6::float8[])
			AS u (id, attempts, status, provider_id, last_error, retry_in)
		WHERE n.id = u.id AND n.attempts = u.attempts
		RETURNING n.id`, ids, attempts, statuses, providerIDs, lastErrors, retryIn)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		applied[id] = true
	}
	return applied, rows.Err()
}

var outcomeMessages = map[string]string{
	"sent":    "notification sent",
	"failed":  "notification failed",
	"pending": "notification will be retried",
}

// recordBatch stores outcomes in one statement. An outcome applies only if
// the row still carries the attempt it was claimed with: when a lease ran out
// mid-send and another worker claimed the row, that worker's outcome counts.
// Recording happens even while shutting down: losing an outcome would resend
// a message that was delivered.
func (w *worker) recordBatch(ctx context.Context, batch []outcome) {
	n := len(batch)
	ids, attempts, retryIn := make([]int64, n), make([]int64, n), make([]float64, n)
	statuses, providerIDs, lastErrors := make([]string, n), make([]string, n), make([]string, n)
	for i, o := range batch {
		ids[i], attempts[i], statuses[i], providerIDs[i], retryIn[i] = o.id, int64(o.attempts), o.status, o.providerID, o.retryIn.Seconds()
		if o.err != nil {
			lastErrors[i] = o.err.Error()
		}
	}
	// The update is guarded by the attempt number, so repeating it is safe;
	// it is retried through a database restart, because the process still
	// knows these outcomes and dropping one would resend a delivered message
	// when its lease ends. The retries stop well before any lease can.
	deadline := batch[0].claimedAt
	for _, o := range batch {
		if o.claimedAt.Before(deadline) {
			deadline = o.claimedAt
		}
	}
	deadline = deadline.Add(w.lease * 3 / 4)
	var (
		applied map[int64]bool
		err     error
	)
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		applied, err = w.applyOutcomes(ids, attempts, statuses, providerIDs, lastErrors, retryIn)
		if err == nil || time.Now().Add(wait).After(deadline) {
			break
		}
		w.log.Warn("outbox: recording outcomes failed; retrying", "error", err, "outcomes", n, "retry_in", wait.String())
		select {
		case <-ctx.Done():
		case <-time.After(wait):
			continue
		}
		break
	}
	for _, o := range batch {
		log := w.log.With("notification_id", o.id, "order_id", o.msg.OrderID, "channel", o.channel, "attempt", o.attempts)
		what := outcomeMessages[o.status]
		switch {
		case o.status == "sent":
			log = log.With("provider_id", o.providerID)
		case o.status == "pending":
			log = log.With("error", o.err, "retry_in", o.retryIn.String())
		default:
			log = log.With("error", o.err)
		}
		switch {
		case err != nil:
			log.Error(what+"; recording it failed, so the row falls due again after its lease", "record_error", err)
		case !applied[o.id]:
			// If both workers sent, this is the one duplicate the design allows.
			log.Warn(what + ", but the lease had passed to another worker; outcome discarded")
		case o.status == "sent":
			log.Info(what)
		default:
			log.Warn(what)
		}
	}
}

// purgeIdempotencyKeys forgets keys older than 48 hours; the contract
// promises at least 24.
func (w *worker) purgeIdempotencyKeys(ctx context.Context) {
	if _, err := w.db.ExecContext(ctx, `DELETE FROM idempotency_keys WHERE created_at < now() - interval '48 hours'`); err != nil {
		w.log.Error("purging idempotency keys failed", "error", err)
	}
}
