package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
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
	       n.channel, n.status, n.attempts, n.last_error, n.sent_at, n.delivered_at
	FROM orders o
	LEFT JOIN LATERAL (
		SELECT channel, status, attempts, last_error, sent_at, delivered_at FROM notifications
		WHERE order_id = o.id LIMIT 1
	) n ON true`

func scanOrder(row scanner) (order, error) {
	var (
		o               order
		n               notificationView
		channel, status *string // null, as attempts, when the order has no notification
		attempts        *int
	)
	err := row.Scan(&o.ID, &o.CustomerID, &o.Item, &o.Amount, &o.Currency, &o.Time, &o.CreatedBy,
		&channel, &status, &attempts, &n.LastError, &n.SentAt, &n.DeliveredAt)
	o.Time = o.Time.UTC()
	if channel != nil {
		n.Channel, n.Status, n.Attempts = *channel, *status, *attempts
		n.SentAt, n.DeliveredAt = utc(n.SentAt), utc(n.DeliveredAt)
		o.Notification = &n
	}
	return o, notFound(err)
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	return new(t.UTC())
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
	if p.after.ID != 0 {
		where = append(where, "(o.time, o.id) < ("+arg(p.after.Time)+", "+arg(p.after.ID)+")")
	}
	query := orderSelect
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY o.time DESC, o.id DESC LIMIT " + arg(p.limit+1)
	rows, err := s.db.QueryContext(ctx, query, args...)
	return collect(rows, err, scanOrder)
}

// newOrder is an order to place, checked; placeSQL reads it as JSON.
type newOrder struct {
	CustomerID   int64     `json:"customer_id"`   // 0 when the order names its customer by code
	CustomerCode string    `json:"customer_code"` // "" when it names it by id
	Item         string    `json:"item"`
	Amount       Money     `json:"amount"`
	Currency     string    `json:"currency"`
	Time         time.Time `json:"time"`
	Channel      string    `json:"channel"`  // the channel to notify on, channelNone for none
	Address      string    `json:"address"`  // the customer field the channel sends to: "phone", "email"
	Explicit     bool      `json:"explicit"` // the order named its channel, so it must reach the customer on it
}

// placement is a request to place orders, all or none: one from POST
// /v1/orders, many from an import.
type placement struct {
	by     string
	orders []newOrder
	// checkOnly asks only which orders could not be placed, for a request
	// that is refused anyway.
	checkOnly bool
	// key and fingerprint are the request's Idempotency-Key, "" for none,
	// and the checked request's fingerprint.
	key         string
	fingerprint []byte
}

// unplacedError reports the orders that cannot be placed.
type unplacedError struct{ orders []unplaced }

// unplaced is an order that names a customer that does not exist, or whose
// customer cannot be reached on the channel it names.
type unplaced struct {
	index         int
	customerFound bool
}

func (e *unplacedError) Error() string {
	return strconv.Itoa(len(e.orders)) + " orders cannot be placed"
}

// errKeyReused is an idempotency key used before with a different request.
var errKeyReused = errors.New("the idempotency key was used for a different request")

// placeSQL places orders in one statement, so one round trip: it finds each
// order's customer (by id or code) and its address on the order's channel
// (falling back to SMS when a rule chose a channel the customer has no
// address for), and only when every order can be placed (and an idempotency
// key, if given, was not used before) inserts the orders, their outbox rows
// and the key. A statement is atomic, so an order never exists without its
// notification, nor a notification without its order. It answers one row per
// order, in input order, saying what became of it.
//
// The orders come as one JSON array, $1: one parameter to encode rather than
// an array per column, and jsonb_to_recordset's row estimate is the same for
// every input, so PostgreSQL keeps one generic plan instead of planning six
// CTEs afresh at every call, which costs more than running them.
const placeSQL = `
WITH found AS (
	SELECT i.ordinality AS n, i.item, i.amount, i.currency, i.time, c.id AS customer_id, i.channel = 'none' AS silent,
		CASE WHEN a.recipient IS NULL AND NOT i.explicit THEN 'sms' ELSE i.channel END AS channel,
		COALESCE(a.recipient, CASE WHEN NOT i.explicit THEN c.phone END) AS recipient
	FROM ROWS FROM (jsonb_to_recordset($1) AS (customer_id bigint, customer_code text, item text,
		amount numeric, currency text, time timestamptz, channel text, address text, explicit bool)) WITH ORDINALITY AS i
	LEFT JOIN customers c ON c.id = i.customer_id OR c.code = i.customer_code
	LEFT JOIN LATERAL (SELECT CASE i.address WHEN 'phone' THEN c.phone WHEN 'email' THEN c.email END AS recipient) a ON true
), verdict AS (
	SELECT NOT $2 AND bool_and(customer_id IS NOT NULL AND (silent OR recipient IS NOT NULL)) AS ok FROM found
), routed AS MATERIALIZED (
	-- Order ids are taken only for orders that will be placed.
	SELECT found.*, CASE WHEN ok THEN nextval('orders_id_seq') END AS id FROM found, verdict
), key AS (
	INSERT INTO idempotency_keys (subject, key, request_hash, order_id)
	SELECT $3, $4, $5, (SELECT id FROM routed WHERE n = 1) FROM verdict WHERE ok AND $4 <> ''
	ON CONFLICT DO NOTHING
	RETURNING order_id
), placed AS (
	INSERT INTO orders (id, customer_id, item, amount, currency, time, created_by)
	SELECT id, customer_id, item, amount, currency, time, $3 FROM routed
	WHERE id IS NOT NULL AND ($4 = '' OR EXISTS (SELECT FROM key))
	RETURNING id
), queued AS (
	INSERT INTO notifications (order_id, channel, recipient)
	SELECT id, channel, recipient FROM routed WHERE NOT silent AND id IN (SELECT id FROM placed)
)
SELECT r.customer_id, r.silent OR r.recipient IS NOT NULL, CASE WHEN r.silent THEN 'none' ELSE r.channel END,
	p.id, r.id IS NOT NULL
FROM routed r LEFT JOIN placed p USING (id)
ORDER BY r.n`

// placeOrders is the one way orders come into being: all of p's orders or
// none, in one statement. It returns them in input order, or an
// unplacedError naming the orders that name an unknown customer or one that
// their channel cannot reach, or errKeyReused for a key used before with a
// different request; a key used before for the same request returns the
// order that request placed, as it is now.
func (s *store) placeOrders(ctx context.Context, p placement) ([]order, error) {
	input, err := json.Marshal(p.orders)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, placeSQL, string(input), p.checkOnly, p.by, p.key, p.fingerprint)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var (
		placed  []order
		refused []unplaced
		ok      bool
	)
	for i := 0; rows.Next(); i++ {
		var (
			customerID sql.NullInt64
			reachable  bool
			channel    string
			id         sql.NullInt64
		)
		if err := rows.Scan(&customerID, &reachable, &channel, &id, &ok); err != nil {
			return nil, err
		}
		o := p.orders[i]
		if !customerID.Valid && (o.CustomerID != 0 || o.CustomerCode != "") || customerID.Valid && !reachable {
			refused = append(refused, unplaced{index: i, customerFound: customerID.Valid})
		}
		placed = append(placed, order{ID: id.Int64, CustomerID: customerID.Int64, Item: o.Item, Amount: o.Amount,
			Currency: o.Currency, Time: o.Time, CreatedBy: p.by})
		if channel != channelNone {
			placed[i].Notification = &notificationView{Channel: channel, Status: "pending"}
		}
	}
	err = rows.Err()
	switch {
	case pgCode(err) == foreignKeyViolation:
		return nil, &conflictError{detail: "a customer was deleted while its orders were placed; nothing was placed"}
	case err != nil:
		return nil, err
	case len(refused) > 0:
		return nil, &unplacedError{orders: refused}
	case ok && p.key != "" && placed[0].ID == 0:
		return s.replay(ctx, p)
	}
	return placed, nil
}

// replay returns the order an idempotency key already placed, or
// errKeyReused when the key came with a different request.
func (s *store) replay(ctx context.Context, p placement) ([]order, error) {
	var (
		fingerprint []byte
		orderID     int64
	)
	err := s.db.QueryRowContext(ctx, `SELECT request_hash, order_id FROM idempotency_keys WHERE subject = $1 AND key = $2`,
		p.by, p.key).Scan(&fingerprint, &orderID)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return s.placeOrders(ctx, p) // purged since the conflict: the key is free again
	case err != nil:
		return nil, err
	case !bytes.Equal(fingerprint, p.fingerprint):
		return nil, errKeyReused
	}
	o, err := s.getOrder(ctx, orderID)
	return []order{o}, err
}
