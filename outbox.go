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

func newWorker(db *sql.DB, cs *channels, log *slog.Logger) *worker {
	return &worker{
		db:          db,
		channels:    cs,
		log:         log,
		poll:        500 * time.Millisecond,
		lease:       2 * time.Minute,
		sendTimeout: 30 * time.Second,
		concurrency: 64,
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
	id       int64
	attempts int
	channel  string
	msg      Message
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
				defer func() {
					<-slots
					inFlight.Done()
					select {
					case freed <- struct{}{}:
					default:
					}
				}()
				w.deliver(sendCtx, c)
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
		var c claimed
		if err := rows.Scan(&c.id, &c.attempts, &c.channel, &c.msg.OrderID, &c.msg.To, &c.msg.Subject, &c.msg.Body); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// deliver sends one claimed row and records the outcome: sent, a retry after
// backoff, or failed after a permanent error or the last attempt.
func (w *worker) deliver(ctx context.Context, c claimed) {
	ch, ok := w.channels.byName[c.channel]
	var (
		providerID string
		err        error
	)
	if !ok {
		err = &SendError{Permanent: true, Reason: "channel " + c.channel + " is not configured on this server"}
	} else {
		sendCtx, cancel := context.WithTimeout(ctx, w.sendTimeout)
		providerID, err = ch.sender.Send(sendCtx, c.msg)
		cancel()
	}
	log := w.log.With("notification_id", c.id, "order_id", c.msg.OrderID, "channel", c.channel, "attempt", c.attempts)
	var se *SendError
	permanent := errors.As(err, &se) && se.Permanent
	// Outcomes are recorded even while shutting down: losing one would
	// resend a message that was delivered.
	recordCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var (
		res     sql.Result
		recErr  error
		outcome string
	)
	switch {
	case err == nil:
		outcome = "notification sent"
		res, recErr = w.db.ExecContext(recordCtx, `
			UPDATE notifications
			SET status = 'sent', sent_at = now(), provider_message_id = $3, last_error = NULL, locked_until = NULL
			WHERE id = $1 AND attempts = $2`, c.id, c.attempts, providerID)
		log = log.With("provider_id", providerID)
	case permanent || c.attempts >= w.maxAttempts:
		outcome = "notification failed"
		res, recErr = w.db.ExecContext(recordCtx, `
			UPDATE notifications SET status = 'failed', last_error = $3, locked_until = NULL
			WHERE id = $1 AND attempts = $2`, c.id, c.attempts, err.Error())
		log = log.With("error", err, "permanent", permanent)
	default:
		retryIn := w.backoff(c.attempts)
		outcome = "notification will be retried"
		res, recErr = w.db.ExecContext(recordCtx, `
			UPDATE notifications
			SET next_attempt_at = now() + make_interval(secs => $3), last_error = $4, locked_until = NULL
			WHERE id = $1 AND attempts = $2`, c.id, c.attempts, retryIn.Seconds(), err.Error())
		log = log.With("error", err, "retry_in", retryIn.String())
	}
	if recErr != nil {
		log.Error(outcome+"; recording it failed, so the row falls due again after its lease", "record_error", recErr)
		return
	}
	if n, _ := res.RowsAffected(); n == 0 {
		// The lease ran out mid-send and another worker claimed the row: its
		// outcome is the one that counts. If both sent, this is the one
		// duplicate the design allows.
		log.Warn(outcome + ", but the lease had passed to another worker; outcome discarded")
		return
	}
	if err == nil {
		log.Info(outcome)
	} else {
		log.Warn(outcome)
	}
}

// purgeIdempotencyKeys forgets keys older than 48 hours; the contract
// promises at least 24.
func (w *worker) purgeIdempotencyKeys(ctx context.Context) {
	if _, err := w.db.ExecContext(ctx, `DELETE FROM idempotency_keys WHERE created_at < now() - interval '48 hours'`); err != nil {
		w.log.Error("purging idempotency keys failed", "error", err)
	}
}
