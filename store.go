package main

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

//go:embed schema.sql
var schemaSQL string

// schemaLockID is the advisory lock that serialises schema changes between
// replicas starting at once; any constant unique to this service will do.
const schemaLockID = 7_210_411_903

// store holds the API's SQL; the outbox worker keeps its own beside it in
// outbox.go. Every method takes the caller's context, so a client that goes
// away cancels its queries.
type store struct {
	db   *sql.DB
	pool *pgxpool.Pool // db's connections
}

// openStore prepares the connection pool; it does not wait for the database.
func openStore(dsn string) (*store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	// A small pool: past a few connections per database core, more only queue
	// inside PostgreSQL, and several replicas must fit a managed database's
	// connection limit. It is pgx's pool, under database/sql, because
	// database/sql's own hands a freed connection to a random waiter, which
	// makes waits geometric: with 64 clients placing orders on 16
	// connections, p99 was 89 ms, against 43 ms with pgx's pool, which
	// serves waiters in turn. A connection idle for 5 minutes is closed, so
	// that a burst does not keep its connections from other replicas. Where
	// DATABASE_URL sets pool_max_conns or pool_max_conn_idle_time, its value
	// wins: the operator knows the database's limit.
	var given url.Values
	if u, err := url.Parse(dsn); err == nil {
		given = u.Query()
	}
	if !given.Has("pool_max_conns") {
		cfg.MaxConns = 16
	}
	if !given.Has("pool_max_conn_idle_time") {
		cfg.MaxConnIdleTime = 5 * time.Minute
	}
	// Times are read in UTC, as the API shows them, not in the process's
	// local zone.
	cfg.AfterConnect = func(_ context.Context, conn *pgx.Conn) error {
		conn.TypeMap().RegisterType(&pgtype.Type{Name: "timestamptz", OID: pgtype.TimestamptzOID, Codec: &pgtype.TimestamptzCodec{ScanLocation: time.UTC}})
		return nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	return &store{db: stdlib.OpenDBFromPool(pool), pool: pool}, nil
}

func (s *store) close() error {
	err := s.db.Close()
	s.pool.Close()
	return err
}

func (s *store) ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// migrate applies schema.sql while holding an advisory lock, so that replicas
// starting together apply it one at a time.
func (s *store) migrate(ctx context.Context) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, schemaLockID); err != nil {
		return fmt.Errorf("schema lock: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, schemaLockID)
	if _, err := conn.ExecContext(ctx, schemaSQL); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	return nil
}

// scanner is a row to scan: *sql.Row or *sql.Rows.
type scanner interface{ Scan(...any) error }

// collect scans every row the query returned.
func collect[T any](rows *sql.Rows, err error, scan func(scanner) (T, error)) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// notFound turns sql.ErrNoRows into errNotFound.
func notFound(err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return errNotFound
	}
	return err
}

const (
	uniqueViolation     = "23505"
	foreignKeyViolation = "23503"
)

// pgCode returns err's SQLSTATE, or "".
func pgCode(err error) string {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		return pgErr.Code
	}
	return ""
}

// conflictFrom turns a uniqueness violation into a conflictError naming
// the value taken, from PostgreSQL's "Key (code)=(X) already exists."; what
// and key say what the value is. Any other error is returned unchanged.
func conflictFrom(err error, what, key string) error {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	if !ok || pgErr.Code != uniqueViolation {
		return err
	}
	_, value, _ := strings.Cut(pgErr.Detail, ")=(")
	value, _, _ = strings.Cut(value, ") already exists")
	return &conflictError{detail: fmt.Sprintf("a %s with the same %s already exists: %s", what, key, value)}
}

// Customers.

const customerColumns = `id, code, name, phone, email, created_by, created_at`

func scanCustomer(row scanner) (customer, error) {
	var c customer
	err := row.Scan(&c.ID, &c.Code, &c.Name, &c.Phone, &c.Email, &c.CreatedBy, &c.CreatedAt)
	c.Orders = []order{}
	return c, notFound(err)
}

// createCustomer inserts c; a taken code is a conflictError.
func (s *store) createCustomer(ctx context.Context, c customerInput, by string) (customer, error) {
	created, err := scanCustomer(s.db.QueryRowContext(ctx, `
		INSERT INTO customers (code, name, phone, email, created_by)
		VALUES ($1, $2, $3, $4, $5)
		RETURNING `+customerColumns,
		c.Code, c.Name, c.Phone, c.Email, by))
	return created, conflictFrom(err, "customer", "code")
}

// importCustomers inserts every customer or none, in one statement, and
// returns their ids in input order; a code that is taken is a conflictError
// naming it.
func (s *store) importCustomers(ctx context.Context, cs []customerInput, by string) ([]int64, error) {
	codes, names, phones, emails := make([]string, len(cs)), make([]string, len(cs)), make([]string, len(cs)), make([]*string, len(cs))
	for i, c := range cs {
		codes[i], names[i], phones[i], emails[i] = c.Code, c.Name, c.Phone, c.Email
	}
	rows, err := s.db.QueryContext(ctx, `
		WITH added AS (
			INSERT INTO customers (code, name, phone, email, created_by)
			SELECT code, name, phone, email, $5
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS c (code, name, phone, email)
			RETURNING id, code
		)
		SELECT added.id FROM unnest($1::text[]) WITH ORDINALITY AS i (code, n) JOIN added USING (code) ORDER BY i.n`,
		codes, names, phones, emails, by)
	ids, err := collect(rows, err, func(row scanner) (id int64, err error) { return id, row.Scan(&id) })
	return ids, conflictFrom(err, "customer", "code")
}

// getCustomer returns the customer with its newest orders, or errNotFound.
func (s *store) getCustomer(ctx context.Context, id int64) (customer, error) {
	cs, err := s.customers(ctx, `WHERE id = $1`, id)
	if err != nil || len(cs) == 0 {
		return customer{}, cmp.Or(err, errNotFound)
	}
	return cs[0], nil
}

// listCustomers returns up to limit+1 customers by id after the cursor, each
// with its newest orders.
func (s *store) listCustomers(ctx context.Context, p pageRequest) ([]customer, error) {
	return s.customers(ctx, `WHERE id > $1 ORDER BY id LIMIT $2`, p.after.ID, p.limit+1)
}

// customers returns the customers a WHERE clause selects, each with its
// newest orders, in two queries however many there are: the second reads one
// order more than a customer embeds, to tell whether there are others.
func (s *store) customers(ctx context.Context, where string, args ...any) ([]customer, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+customerColumns+` FROM customers `+where, args...)
	cs, err := collect(rows, err, scanCustomer)
	if err != nil || len(cs) == 0 {
		return cs, err
	}
	ids := make([]int64, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	rows, err = s.db.QueryContext(ctx, `
		SELECT o.* FROM unnest($1::bigint[]) AS c (id) CROSS JOIN LATERAL (`+orderSelect+`
			WHERE o.customer_id = c.id ORDER BY o.time DESC, o.id DESC LIMIT $2
		) o
		ORDER BY o.customer_id, o.time DESC, o.id DESC`, ids, embeddedOrders+1)
	orders, err := collect(rows, err, scanOrder)
	byID := make(map[int64][]order, len(cs))
	for _, o := range orders {
		byID[o.CustomerID] = append(byID[o.CustomerID], o)
	}
	for i := range cs {
		cs[i].embed(byID[cs[i].ID])
	}
	return cs, err
}

// patchCustomer changes the fields p sets and returns the customer with its
// orders, or errNotFound.
func (s *store) patchCustomer(ctx context.Context, id int64, p customerPatch) (customer, error) {
	err := rowAffected(s.db.ExecContext(ctx, `
		UPDATE customers SET
			name = COALESCE($2, name),
			phone = COALESCE($3, phone),
			email = CASE WHEN $4 THEN $5 ELSE email END
		WHERE id = $1`,
		id, p.Name.ptr(), p.Phone.ptr(), p.Email.Set, p.Email.ptr()))
	if err != nil {
		return customer{}, err
	}
	return s.getCustomer(ctx, id)
}

// deleteCustomer deletes a customer without orders; one with orders is a
// conflictError, an unknown one errNotFound.
func (s *store) deleteCustomer(ctx context.Context, id int64) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM customers WHERE id = $1`, id)
	if pgCode(err) == foreignKeyViolation {
		return &conflictError{detail: fmt.Sprintf("customer %d has orders and cannot be deleted", id)}
	}
	return rowAffected(res, err)
}

// rowAffected is errNotFound when a statement that changes one row changed none.
func rowAffected(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errNotFound
	}
	return nil
}

// Phone numbers.

const numberColumns = `id, value, monthly_price, setup_price, currency`

func scanNumber(row scanner) (phoneNumber, error) {
	var n phoneNumber
	err := row.Scan(&n.ID, &n.Value, &n.MonthlyPrice, &n.SetupPrice, &n.Currency)
	return n, notFound(err)
}

// createNumber inserts the number p describes (every field set); a number
// with the same digits is a conflictError.
func (s *store) createNumber(ctx context.Context, p numberPatch, by string) (phoneNumber, error) {
	created, err := scanNumber(s.db.QueryRowContext(ctx, `
		INSERT INTO phone_numbers (value, digits, monthly_price, setup_price, currency, created_by)
		VALUES ($1, $2, $3, $4, $5, $6)
		RETURNING `+numberColumns,
		p.value, p.digits, p.monthly, p.setup, p.currency, by))
	return created, conflictFrom(err, "phone number", "digits")
}

// getNumber returns one number or errNotFound.
func (s *store) getNumber(ctx context.Context, id int64) (phoneNumber, error) {
	return scanNumber(s.db.QueryRowContext(ctx, `SELECT `+numberColumns+` FROM phone_numbers WHERE id = $1`, id))
}

// listNumbers returns up to limit+1 numbers by id after the cursor.
func (s *store) listNumbers(ctx context.Context, p pageRequest) ([]phoneNumber, error) {
	rows, err := s.db.QueryContext(ctx, `
		SELECT `+numberColumns+` FROM phone_numbers WHERE id > $1 ORDER BY id LIMIT $2`,
		p.after.ID, p.limit+1)
	return collect(rows, err, scanNumber)
}

// updateNumber sets the fields p sets, in one statement, so that concurrent
// PATCHes of different fields all take effect. It returns errNotFound, or a
// conflictError when the digits are taken.
func (s *store) updateNumber(ctx context.Context, id int64, p numberPatch) (phoneNumber, error) {
	n, err := scanNumber(s.db.QueryRowContext(ctx, `
		UPDATE phone_numbers SET value = COALESCE($2, value), digits = COALESCE($3, digits),
			monthly_price = COALESCE($4, monthly_price), setup_price = COALESCE($5, setup_price), currency = COALESCE($6, currency)
		WHERE id = $1
		RETURNING `+numberColumns,
		id, p.value, p.digits, p.monthly, p.setup, p.currency))
	return n, conflictFrom(err, "phone number", "digits")
}

// deleteNumber deletes one number, or returns errNotFound.
func (s *store) deleteNumber(ctx context.Context, id int64) error {
	return rowAffected(s.db.ExecContext(ctx, `DELETE FROM phone_numbers WHERE id = $1`, id))
}

// Orders: reading them, and placing them with their outbox rows.

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
	if channel != nil {
		n.Channel, n.Status, n.Attempts = *channel, *status, *attempts
		o.Notification = &n
	}
	return o, notFound(err)
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
