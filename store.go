package main

import (
	"context"
	"database/sql"
	_ "embed"
	"errors"
	"fmt"
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

// openStore prepares the connection pool; it does not wait for the database
// (waitForDatabase does).
func openStore(ctx context.Context, url string) (*store, error) {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	// A small pool: past a few connections per database core, more only queue
	// inside PostgreSQL, and several replicas must fit a managed database's
	// connection limit.
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
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

// Customers.

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
	// The row past the limit only shows that a next page exists; its orders
	// are never shown.
	return cs, s.attachOrders(ctx, cs[:min(len(cs), p.limit)])
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

// Phone numbers.

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
