package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"time"
)

// The SQL of orders: reading them, and placing them with their outbox rows.

// orderSelect reads orders with their notifications. The notification is a
// lateral lookup by order id (LIMIT 1 keeps the planner from turning it into
// a join): a plain join lets the planner, expecting many orders for a page of
// customers, hash the whole notifications table instead of probing its index
// once per order.
const orderSelect = `
	SELECT o.id, o.customer_id, o.item, o.amount, o.currency, o.time, o.created_by,
	       n.channel, n.status, n.attempts, n.last_error, n.sent_at
	FROM orders o
	LEFT JOIN LATERAL (
		SELECT channel, status, attempts, last_error, sent_at FROM notifications
		WHERE order_id = o.id LIMIT 1
	) n ON true`

func scanOrder(row interface{ Scan(...any) error }) (order, error) {
	var (
		o        order
		channel  sql.NullString
		status   sql.NullString
		attempts sql.NullInt64
		lastErr  sql.NullString
		sentAt   sql.NullTime
	)
	err := row.Scan(&o.ID, &o.CustomerID, &o.Item, &o.Amount, &o.Currency, &o.Time, &o.CreatedBy,
		&channel, &status, &attempts, &lastErr, &sentAt)
	if errors.Is(err, sql.ErrNoRows) {
		return o, errNotFound
	}
	o.Time = o.Time.UTC()
	if channel.Valid {
		n := &notificationView{Channel: channel.String, Status: status.String, Attempts: int(attempts.Int64)}
		if lastErr.Valid {
			n.LastError = &lastErr.String
		}
		if sentAt.Valid {
			t := sentAt.Time.UTC()
			n.SentAt = &t
		}
		o.Notification = n
	}
	return o, err
}

// getOrder returns one order with its notification, or errNotFound.
func (s *store) getOrder(ctx context.Context, id int64) (order, error) {
	return scanOrder(s.db.QueryRowContext(ctx, orderSelect+` WHERE o.id = $1`, id))
}

// orderFilter narrows a list of orders; zero values do not filter.
type orderFilter struct {
	customerID   int64
	customerCode string
}

// listOrders returns up to limit+1 orders, newest first, after the cursor.
func (s *store) listOrders(ctx context.Context, f orderFilter, p pageRequest) ([]order, error) {
	// The query is assembled from fixed fragments so that each filter
	// combination gets a plan that uses the matching index.
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.customerID != 0 {
		where = append(where, "o.customer_id = "+arg(f.customerID))
	}
	if f.customerCode != "" {
		where = append(where, "o.customer_id = (SELECT id FROM customers WHERE code = "+arg(f.customerCode)+")")
	}
	if p.after != nil {
		where = append(where, "(o.time, o.id) < ("+arg(p.after.Time)+", "+arg(p.after.ID)+")")
	}
	query := orderSelect
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY o.time DESC, o.id DESC LIMIT " + arg(p.limit+1)
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var os []order
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			return nil, err
		}
		os = append(os, o)
	}
	return os, rows.Err()
}

// placement is a request to place orders: one from POST /v1/orders, many
// from an import.
type placement struct {
	by     string
	drafts []orderDraft
	// outbox returns the notification to queue for a placed order, nil for
	// none, or a validationError's detail for the channel field. A nil
	// outbox queues nothing (an import with notify=false).
	outbox func(d orderDraft, o order, c customer) (*outboxRow, string)
	// at returns the checker that names draft i in errors.
	at          func(i int) *checker
	idempotency *idempotency
}

// idempotency is a client's Idempotency-Key and the fingerprint of the
// request that came with it.
type idempotency struct {
	key         string
	fingerprint []byte
}

// outboxRow is a notification waiting in the outbox.
type outboxRow struct {
	orderID                              int64
	channel, recipient, subject, message string
}

// placeOrders is the one way orders come into being. It finds each order's
// customer, then inserts the orders and queues their notifications in one
// statement, so an order is never stored without its notification nor a
// notification sent for an order that does not exist. With an idempotency
// key the whole runs in a transaction that also records the key; a key
// already used for the same request returns that order and replayed true,
// for a different request a validationError.
func (s *store) placeOrders(ctx context.Context, p placement) (placed []order, replayed bool, err error) {
	if p.idempotency == nil {
		placed, err = insertOrders(ctx, s.db, p)
		return placed, false, err
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		orderID, err := claimIdempotencyKey(ctx, tx, p.by, p.idempotency)
		if err != nil {
			return err
		}
		if orderID != 0 {
			replayed = true
			o, err := scanOrder(tx.QueryRowContext(ctx, orderSelect+` WHERE o.id = $1`, orderID))
			placed = []order{o}
			return err
		}
		if placed, err = insertOrders(ctx, tx, p); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE idempotency_keys SET order_id = $3 WHERE subject = $1 AND key = $2`,
			p.by, p.idempotency.key, placed[0].ID)
		return err
	})
	return placed, replayed, err
}

// querier is what insertOrders needs: the database or a transaction.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// insertOrders checks that every draft's customer exists and inserts the
// orders with their outbox rows. A customer deleted between the check and
// the insert fails the insert's foreign key, so nothing is written.
func insertOrders(ctx context.Context, q querier, p placement) ([]order, error) {
	customers, err := findCustomers(ctx, q, p.drafts)
	if err != nil {
		return nil, err
	}
	ids, err := nextOrderIDs(ctx, q, len(p.drafts))
	if err != nil {
		return nil, err
	}
	placed := make([]order, len(p.drafts))
	var (
		bad    []fieldError
		outbox []*outboxRow
	)
	for i, d := range p.drafts {
		c, found := customers.byID[d.CustomerID]
		if d.CustomerCode != "" {
			c, found = customers.byCode[d.CustomerCode]
		}
		if !found {
			ch := p.at(i)
			ch.add(d.customerField())
			bad = append(bad, ch.fields...)
			continue
		}
		o := order{ID: ids[i], CustomerID: c.ID, Item: d.Item, Amount: d.Amount, Currency: d.Currency, Time: d.Time, CreatedBy: p.by}
		if p.outbox != nil {
			row, problem := p.outbox(d, o, c)
			if problem != "" {
				ch := p.at(i)
				ch.add("channel", "%s", problem)
				bad = append(bad, ch.fields...)
				continue
			}
			if row != nil {
				row.orderID = o.ID
				outbox = append(outbox, row)
				o.Notification = &notificationView{Channel: row.channel, Status: "pending"}
			}
		}
		placed[i] = o
	}
	if len(bad) > 0 {
		return nil, &validationError{detail: "the orders refer to what does not exist; nothing was placed", fields: bad}
	}
	err = insertOrderRows(ctx, q, p.by, placed, outbox)
	if code, _ := pgCode(err); code == foreignKeyViolation {
		return nil, &validationError{detail: "a customer was deleted while its order was placed", fields: []fieldError{{Pointer: "#/customer_id", Detail: "no such customer"}}}
	}
	if err != nil {
		return nil, err
	}
	return placed, nil
}

// insertOrderRows writes orders and their outbox rows with one statement,
// column by column.
func insertOrderRows(ctx context.Context, q querier, by string, orders []order, outbox []*outboxRow) error {
	n := len(orders)
	ids, customerIDs, times := make([]int64, n), make([]int64, n), make([]time.Time, n)
	items, amounts, currencies := make([]string, n), make([]string, n), make([]string, n)
	for i, o := range orders {
		ids[i], customerIDs[i], items[i], amounts[i], currencies[i], times[i] = o.ID, o.CustomerID, o.Item, o.Amount.String(), o.Currency, o.Time
	}
	m := len(outbox)
	orderIDs, channels, recipients, subjects, messages := make([]int64, m), make([]string, m), make([]string, m), make([]string, m), make([]string, m)
	for i, r := range outbox {
		orderIDs[i], channels[i], recipients[i], subjects[i], messages[i] = r.orderID, r.channel, r.recipient, r.subject, r.message
	}
	_, err := q.ExecContext(ctx, `
		WITH placed AS (
			INSERT INTO orders (id, customer_id, item, amount, currency, time, created_by)
			SELECT id, customer_id, item, amount, currency, time, $7
			FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::numeric[], $5::text[], $6::timestamptz[])
				AS o (id, customer_id, item, amount, currency, time)
		)
		INSERT INTO notifications (order_id, channel, recipient, subject, message)
		SELECT * FROM unnest($8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[])`,
		ids, customerIDs, items, amounts, currencies, times, by,
		orderIDs, channels, recipients, subjects, messages)
	return err
}

// claimIdempotencyKey records key for subject and returns 0, or, when the
// key was used before, the order it created. A concurrent request with the
// same key waits here until the first commits, then sees its order.
func claimIdempotencyKey(ctx context.Context, tx *sql.Tx, subject string, k *idempotency) (int64, error) {
	res, err := tx.ExecContext(ctx, `
		INSERT INTO idempotency_keys (subject, key, request_hash) VALUES ($1, $2, $3)
		ON CONFLICT DO NOTHING`, subject, k.key, k.fingerprint)
	if err != nil {
		return 0, err
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return 0, nil
	}
	var (
		fingerprint []byte
		orderID     int64
	)
	err = tx.QueryRowContext(ctx, `SELECT request_hash, order_id FROM idempotency_keys WHERE subject = $1 AND key = $2`,
		subject, k.key).Scan(&fingerprint, &orderID)
	if err != nil {
		return 0, err
	}
	if !bytes.Equal(fingerprint, k.fingerprint) {
		return 0, &validationError{fields: []fieldError{{Parameter: "Idempotency-Key", Detail: "this Idempotency-Key was used with a different request body"}}}
	}
	return orderID, nil
}

// customerIndex is the customers some drafts refer to.
type customerIndex struct {
	byID   map[int64]customer
	byCode map[string]customer
}

// findCustomers loads, in one query, every customer the drafts name.
func findCustomers(ctx context.Context, q querier, drafts []orderDraft) (customerIndex, error) {
	var ids []int64
	var codes []string
	for _, d := range drafts {
		if d.CustomerCode != "" {
			codes = append(codes, d.CustomerCode)
		} else {
			ids = append(ids, d.CustomerID)
		}
	}
	idx := customerIndex{byID: map[int64]customer{}, byCode: map[string]customer{}}
	rows, err := q.QueryContext(ctx, `SELECT `+customerColumns+` FROM customers
		WHERE id = ANY($1) OR code = ANY($2)`, ids, codes)
	if err != nil {
		return idx, err
	}
	defer rows.Close()
	for rows.Next() {
		c, err := scanCustomer(rows)
		if err != nil {
			return idx, err
		}
		idx.byID[c.ID], idx.byCode[c.Code] = c, c
	}
	return idx, rows.Err()
}

// unknownCustomers returns the indexes of the drafts whose customer does not
// exist; drafts without a usable reference are not looked up.
func (s *store) unknownCustomers(ctx context.Context, drafts []orderDraft) (map[int]bool, error) {
	idx, err := findCustomers(ctx, s.db, drafts)
	if err != nil {
		return nil, err
	}
	unknown := map[int]bool{}
	for i, d := range drafts {
		_, byID := idx.byID[d.CustomerID]
		_, byCode := idx.byCode[d.CustomerCode]
		if (d.CustomerCode != "" && !byCode && checkCode(d.CustomerCode) == "") || (d.CustomerCode == "" && d.CustomerID > 0 && !byID) {
			unknown[i] = true
		}
	}
	return unknown, nil
}

// nextOrderIDs takes n ids from the orders sequence, so that the outbox rows
// can name their orders in the same statement that inserts them.
func nextOrderIDs(ctx context.Context, q querier, n int) ([]int64, error) {
	rows, err := q.QueryContext(ctx, `SELECT nextval(pg_get_serial_sequence('orders', 'id')) FROM generate_series(1, $1)`, n)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	ids := make([]int64, 0, n)
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}
