package main

import (
	"bytes"
	"context"
	"database/sql"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
)

//go:embed schema.sql
var schemaSQL string

// schemaLockID is the advisory lock that serialises schema changes between
// replicas starting at once; any constant unique to this service will do.
const schemaLockID = 7_210_411_903

// store holds all of the service's SQL. Every method takes the caller's
// context, so a client that goes away cancels its queries.
type store struct {
	db *sql.DB
}

// openStore connects to PostgreSQL and waits until it answers.
func openStore(ctx context.Context, url string) (*store, error) {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	// Two cores serve the API and the worker; more connections than this only
	// queue inside PostgreSQL instead of here.
	db.SetMaxOpenConns(24)
	db.SetMaxIdleConns(24)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

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

// inTx runs fn in a transaction, committing when it returns nil.
func (s *store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// pgCode returns err's SQLSTATE, or "".
func pgCode(err error) (code string, pgErr *pgconn.PgError) {
	if errors.As(err, &pgErr) {
		return pgErr.Code, pgErr
	}
	return "", nil
}

const (
	uniqueViolation     = "23505"
	foreignKeyViolation = "23503"
)

// conflictFrom names the duplicate from PostgreSQL's "Key (code)=(X) already
// exists." detail, or returns err unchanged when it is not a conflict.
func conflictFrom(err error, what string) error {
	code, pgErr := pgCode(err)
	if code != uniqueViolation {
		return err
	}
	detail := pgErr.Detail
	if open := strings.Index(detail, "=("); open >= 0 {
		if end := strings.LastIndex(detail, ")"); end > open {
			return &conflictError{detail: fmt.Sprintf("a %s with that %s already exists: %s", what, keyName(detail), detail[open+2:end])}
		}
	}
	return &conflictError{detail: "a " + what + " with the same key already exists"}
}

// keyName returns the column named in a "Key (col)=(value)" detail.
func keyName(detail string) string {
	if open, end := strings.Index(detail, "("), strings.Index(detail, ")"); open >= 0 && end > open {
		if name := detail[open+1 : end]; name == "digits" {
			return "value"
		} else {
			return name
		}
	}
	return "key"
}

// ---- customers ----

const customerColumns = `id, code, name, phone, email, created_by, created_at`

func scanCustomer(row interface{ Scan(...any) error }) (customer, error) {
	var c customer
	err := row.Scan(&c.ID, &c.Code, &c.Name, &c.Phone, &c.Email, &c.CreatedBy, &c.CreatedAt)
	c.CreatedAt = c.CreatedAt.UTC()
	c.Orders = []order{}
	return c, err
}

// createCustomer inserts c; a taken code is a conflictError.
func (s *store) createCustomer(ctx context.Context, c customerInput, by string) (customer, error) {
	row := s.db.QueryRowContext(ctx, `
		INSERT INTO customers (code, name, phone, email, created_by)
		VALUES ($1, $2, $3, $4, $5)
		RETURNING `+customerColumns,
		c.Code, c.Name, c.Phone, c.Email, by)
	created, err := scanCustomer(row)
	if err != nil {
		return customer{}, conflictFrom(err, "customer")
	}
	return created, nil
}

// importCustomers inserts every customer or none and returns their ids in
// input order; a code that is taken is a conflictError naming it.
func (s *store) importCustomers(ctx context.Context, cs []customerInput, by string) ([]int64, error) {
	codes, names, phones, emails := make([]string, len(cs)), make([]string, len(cs)), make([]string, len(cs)), make([]*string, len(cs))
	for i, c := range cs {
		codes[i], names[i], phones[i], emails[i] = c.Code, c.Name, c.Phone, c.Email
	}
	// One statement is atomic on its own: a failing row inserts nothing.
	rows, err := s.db.QueryContext(ctx, `
		INSERT INTO customers (code, name, phone, email, created_by)
		SELECT code, name, phone, email, $5
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS c (code, name, phone, email)
		RETURNING id, code`,
		codes, names, phones, emails, by)
	if err != nil {
		return nil, conflictFrom(err, "customer")
	}
	defer rows.Close()
	idOf := make(map[string]int64, len(cs))
	for rows.Next() {
		var id int64
		var code string
		if err := rows.Scan(&id, &code); err != nil {
			return nil, err
		}
		idOf[code] = id
	}
	if err := rows.Err(); err != nil {
		return nil, conflictFrom(err, "customer")
	}
	ids := make([]int64, len(cs))
	for i, c := range cs {
		ids[i] = idOf[c.Code]
	}
	return ids, nil
}

// getCustomer returns the customer with all of its orders, or errNotFound.
func (s *store) getCustomer(ctx context.Context, id int64) (customer, error) {
	c, err := scanCustomer(s.db.QueryRowContext(ctx, `SELECT `+customerColumns+` FROM customers WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return customer{}, errNotFound
	}
	if err != nil {
		return customer{}, err
	}
	cs := []customer{c}
	if err := s.attachOrders(ctx, cs); err != nil {
		return customer{}, err
	}
	return cs[0], nil
}

// listCustomers returns up to limit+1 customers by id after the cursor, each
// with all of its orders, in two queries whatever the page size.
func (s *store) listCustomers(ctx context.Context, p pageRequest) ([]customer, error) {
	var after int64
	if p.after != nil {
		after = p.after.ID
	}
	rows, err := s.db.QueryContext(ctx, `
		SELECT `+customerColumns+` FROM customers WHERE id > $1 ORDER BY id LIMIT $2`,
		after, p.limit+1)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cs []customer
	for rows.Next() {
		c, err := scanCustomer(rows)
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return cs, s.attachOrders(ctx, cs)
}

// attachOrders fills each customer's orders, newest first, with one query.
func (s *store) attachOrders(ctx context.Context, cs []customer) error {
	if len(cs) == 0 {
		return nil
	}
	ids := make([]int64, len(cs))
	byID := make(map[int64]*customer, len(cs))
	for i := range cs {
		ids[i] = cs[i].ID
		byID[cs[i].ID] = &cs[i]
	}
	rows, err := s.db.QueryContext(ctx, orderSelect+`
		WHERE o.customer_id = ANY($1)
		ORDER BY o.customer_id, o.time DESC, o.id DESC`, ids)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			return err
		}
		c := byID[o.CustomerID]
		c.Orders = append(c.Orders, o)
	}
	return rows.Err()
}

// patchCustomer changes the fields p sets and returns the customer with its
// orders, or errNotFound.
func (s *store) patchCustomer(ctx context.Context, id int64, p customerPatch) (customer, error) {
	_, err := scanCustomer(s.db.QueryRowContext(ctx, `
		UPDATE customers SET
			name = COALESCE($2, name),
			phone = COALESCE($3, phone),
			email = CASE WHEN $4 THEN $5 ELSE email END
		WHERE id = $1
		RETURNING `+customerColumns,
		id, p.Name.ptr(), p.Phone.ptr(), p.Email.Set, p.Email.ptr()))
	if errors.Is(err, sql.ErrNoRows) {
		return customer{}, errNotFound
	}
	if err != nil {
		return customer{}, err
	}
	return s.getCustomer(ctx, id)
}

// deleteCustomer deletes a customer without orders; one with orders is a
// conflictError, an unknown one errNotFound.
func (s *store) deleteCustomer(ctx context.Context, id int64) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM customers WHERE id = $1`, id)
	if code, _ := pgCode(err); code == foreignKeyViolation {
		return &conflictError{detail: fmt.Sprintf("customer %d has orders and cannot be deleted", id)}
	}
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errNotFound
	}
	return nil
}

// ---- phone numbers ----

const numberColumns = `id, value, monthly_price, setup_price, currency`

func scanNumber(row interface{ Scan(...any) error }) (phoneNumber, error) {
	var n phoneNumber
	err := row.Scan(&n.ID, &n.Value, &n.MonthlyPrice, &n.SetupPrice, &n.Currency)
	if errors.Is(err, sql.ErrNoRows) {
		return n, errNotFound
	}
	return n, err
}

// createNumber inserts n; a number with the same digits is a conflictError.
func (s *store) createNumber(ctx context.Context, n phoneNumber, by string) (phoneNumber, error) {
	created, err := scanNumber(s.db.QueryRowContext(ctx, `
		INSERT INTO phone_numbers (value, digits, monthly_price, setup_price, currency, created_by)
		VALUES ($1, $2, $3, $4, $5, $6)
		RETURNING `+numberColumns,
		n.Value, digitsOf(n.Value), n.MonthlyPrice, n.SetupPrice, n.Currency, by))
	return created, conflictFrom(err, "phone number")
}

// getNumber returns one number or errNotFound.
func (s *store) getNumber(ctx context.Context, id int64) (phoneNumber, error) {
	return scanNumber(s.db.QueryRowContext(ctx, `SELECT `+numberColumns+` FROM phone_numbers WHERE id = $1`, id))
}

// listNumbers returns up to limit+1 numbers by id after the cursor.
func (s *store) listNumbers(ctx context.Context, p pageRequest) ([]phoneNumber, error) {
	var after int64
	if p.after != nil {
		after = p.after.ID
	}
	rows, err := s.db.QueryContext(ctx, `
		SELECT `+numberColumns+` FROM phone_numbers WHERE id > $1 ORDER BY id LIMIT $2`,
		after, p.limit+1)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ns []phoneNumber
	for rows.Next() {
		n, err := scanNumber(rows)
		if err != nil {
			return nil, err
		}
		ns = append(ns, n)
	}
	return ns, rows.Err()
}

// updateNumber changes number id with apply, which sees the stored number
// (a PUT replaces it, a PATCH merges into it), in one transaction so that
// concurrent PATCHes of different fields all take effect. It returns
// errNotFound, apply's error, or a conflictError when the digits are taken.
func (s *store) updateNumber(ctx context.Context, id int64, apply func(*phoneNumber) error) (phoneNumber, error) {
	var out phoneNumber
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		n, err := scanNumber(tx.QueryRowContext(ctx, `SELECT `+numberColumns+` FROM phone_numbers WHERE id = $1 FOR UPDATE`, id))
		if err != nil {
			return err
		}
		if err := apply(&n); err != nil {
			return err
		}
		out, err = scanNumber(tx.QueryRowContext(ctx, `
			UPDATE phone_numbers
			SET value = $2, digits = $3, monthly_price = $4, setup_price = $5, currency = $6
			WHERE id = $1
			RETURNING `+numberColumns,
			id, n.Value, digitsOf(n.Value), n.MonthlyPrice, n.SetupPrice, n.Currency))
		return conflictFrom(err, "phone number")
	})
	return out, err
}

// deleteNumber deletes one number, or returns errNotFound.
func (s *store) deleteNumber(ctx context.Context, id int64) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM phone_numbers WHERE id = $1`, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errNotFound
	}
	return nil
}

// ---- orders ----

const orderSelect = `
	SELECT o.id, o.customer_id, o.item, o.amount, o.currency, o.time, o.created_by,
	       n.channel, n.status, n.attempts, n.last_error, n.sent_at
	FROM orders o LEFT JOIN notifications n ON n.order_id = o.id`

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
	channel, recipient, subject, message string
}

// placeOrders is the one way orders come into being. In one transaction it
// finds each order's customer, inserts the orders and queues their
// notifications, so an order is never stored without its notification nor a
// notification sent for an order that was rolled back. With an idempotency key
// already used for the same request it returns that order and replayed true;
// used for a different request, a validationError.
func (s *store) placeOrders(ctx context.Context, p placement) (placed []order, replayed bool, err error) {
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if p.idempotency != nil {
			var orderID int64
			orderID, err = claimIdempotencyKey(ctx, tx, p.by, p.idempotency)
			if err != nil || orderID != 0 {
				if err == nil {
					replayed = true
					var o order
					o, err = scanOrder(tx.QueryRowContext(ctx, orderSelect+` WHERE o.id = $1`, orderID))
					placed = []order{o}
				}
				return err
			}
		}
		customers, err := findCustomers(ctx, tx, p.drafts)
		if err != nil {
			return err
		}
		ids, err := nextOrderIDs(ctx, tx, len(p.drafts))
		if err != nil {
			return err
		}
		placed = make([]order, len(p.drafts))
		var (
			bad                                          []fieldError
			orderIDs, customerIDs                        = make([]int64, len(p.drafts)), make([]int64, len(p.drafts))
			items, amounts, currencies                   = make([]string, len(p.drafts)), make([]string, len(p.drafts)), make([]string, len(p.drafts))
			times                                        = make([]time.Time, len(p.drafts))
			outOrders                                    []int64
			outChannels, outRecipients, outSubj, outMsgs []string
		)
		for i, d := range p.drafts {
			c, found := customers.byID[d.CustomerID], true
			if d.CustomerCode != "" {
				c, found = customers.byCode[d.CustomerCode]
			} else {
				_, found = customers.byID[d.CustomerID]
			}
			if !found {
				ch := p.at(i)
				if d.CustomerCode != "" {
					ch.add("customer_code", "no customer has code %q", d.CustomerCode)
				} else {
					ch.add("customer_id", "no customer has id %d", d.CustomerID)
				}
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
					o.Notification = &notificationView{Channel: row.channel, Status: "pending"}
					outOrders = append(outOrders, o.ID)
					outChannels = append(outChannels, row.channel)
					outRecipients = append(outRecipients, row.recipient)
					outSubj = append(outSubj, row.subject)
					outMsgs = append(outMsgs, row.message)
				}
			}
			placed[i] = o
			orderIDs[i], customerIDs[i], items[i], amounts[i], currencies[i], times[i] = o.ID, o.CustomerID, o.Item, o.Amount.String(), o.Currency, o.Time
		}
		if len(bad) > 0 {
			return &validationError{detail: "the orders refer to what does not exist; nothing was placed", fields: bad}
		}
		// Orders and their outbox rows go in with one statement.
		_, err = tx.ExecContext(ctx, `
			WITH placed AS (
				INSERT INTO orders (id, customer_id, item, amount, currency, time, created_by)
				SELECT id, customer_id, item, amount, currency, time, $7
				FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::numeric[], $5::text[], $6::timestamptz[])
					AS o (id, customer_id, item, amount, currency, time)
			)
			INSERT INTO notifications (order_id, channel, recipient, subject, message)
			SELECT * FROM unnest($8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[])`,
			orderIDs, customerIDs, items, amounts, currencies, times, p.by,
			outOrders, outChannels, outRecipients, outSubj, outMsgs)
		if code, _ := pgCode(err); code == foreignKeyViolation {
			return &validationError{detail: "a customer was deleted while its order was placed", fields: []fieldError{{Pointer: "#/customer_id", Detail: "no such customer"}}}
		}
		if err != nil {
			return err
		}
		if p.idempotency != nil {
			_, err = tx.ExecContext(ctx, `UPDATE idempotency_keys SET order_id = $3 WHERE subject = $1 AND key = $2`, p.by, p.idempotency.key, orderIDs[0])
		}
		return err
	})
	return placed, replayed, err
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

// findCustomers loads, in one query, every customer the drafts name. The
// rows are share-locked so that none is deleted before the orders commit.
func findCustomers(ctx context.Context, tx *sql.Tx, drafts []orderDraft) (customerIndex, error) {
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
	rows, err := tx.QueryContext(ctx, `SELECT `+customerColumns+` FROM customers
		WHERE id = ANY($1) OR code = ANY($2) FOR KEY SHARE`, ids, codes)
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

// nextOrderIDs takes n ids from the orders sequence, so that the outbox rows
// can name their orders in the same statement that inserts them.
func nextOrderIDs(ctx context.Context, tx *sql.Tx, n int) ([]int64, error) {
	rows, err := tx.QueryContext(ctx, `SELECT nextval(pg_get_serial_sequence('orders', 'id')) FROM generate_series(1, $1)`, n)
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
