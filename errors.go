package main

import (
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// The store and the decoders report failures with these few error types; one
// table, statusOf, turns them into HTTP statuses, so no handler chooses a
// status for a failure on its own.
var errNotFound = errors.New("not found")

// conflictError is a uniqueness conflict or a change that would orphan rows.
type conflictError struct{ detail string }

func (e *conflictError) Error() string { return e.detail }

// requestError is a request the server refuses before looking at its meaning:
// malformed JSON, an unknown field, a body too large or of the wrong type.
type requestError struct {
	status int
	detail string
	fields []fieldError
}

func (e *requestError) Error() string { return e.detail }

// fieldError names one bad field. Pointer is an RFC 6901 JSON pointer into the
// body ("#/amount", "#/3/phone"); Parameter names a query parameter; Row and
// Field locate a CSV cell, rows counted from 1 after the header.
type fieldError struct {
	Pointer   string `json:"pointer,omitempty"`
	Parameter string `json:"parameter,omitempty"`
	Row       int    `json:"row,omitempty"`
	Field     string `json:"field,omitempty"`
	Detail    string `json:"detail"`
}

// validationError is well-formed input that breaks a rule; it names every
// bad field at once.
type validationError struct {
	detail string
	fields []fieldError
}

// Error is the problem's detail: the summary when there is one, else the
// lone field's error prefixed with the field's name.
func (e *validationError) Error() string {
	if e.detail != "" || len(e.fields) != 1 {
		return e.detail
	}
	f := e.fields[0]
	switch {
	case f.Row > 0 || f.Parameter != "":
		return f.Detail // already names its row or parameter
	case f.Pointer == "#":
		return "the body " + f.Detail
	}
	return strings.TrimPrefix(f.Pointer, "#/") + " " + f.Detail
}

// checker collects field errors so that a client learns about every bad field
// in one round trip.
type checker struct {
	prefix string // JSON pointer prefix for array elements, "#/3"
	row    int    // CSV row, when checking a CSV record
	fields []fieldError
}

// add records that the field named by name (a JSON member name) is bad.
func (c *checker) add(name, format string, args ...any) {
	detail := fmt.Sprintf(format, args...)
	if c.row > 0 {
		c.fields = append(c.fields, fieldError{Row: c.row, Field: name, Detail: "row " + strconv.Itoa(c.row) + ": " + name + " " + detail})
		return
	}
	c.fields = append(c.fields, fieldError{Pointer: c.prefix + "/" + name, Detail: detail})
}

// err returns nil when nothing was added, or a validationError.
func (c *checker) err() error {
	if len(c.fields) == 0 {
		return nil
	}
	if len(c.fields) == 1 {
		return &validationError{fields: c.fields}
	}
	return &validationError{detail: strconv.Itoa(len(c.fields)) + " fields are invalid; see errors", fields: c.fields}
}

func newChecker() *checker { return &checker{prefix: "#"} }

// problem is an RFC 9457 problem details body.
type problem struct {
	Type   string       `json:"type"`
	Title  string       `json:"title"`
	Status int          `json:"status"`
	Detail string       `json:"detail"`
	Errors []fieldError `json:"errors,omitempty"`
}

// writeProblem writes a problem with type about:blank, whose title is the
// status's reason phrase.
func writeProblem(w http.ResponseWriter, status int, detail string, fields []fieldError) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(problem{
		Type:   "about:blank",
		Title:  http.StatusText(status),
		Status: status,
		Detail: detail,
		Errors: fields,
	})
}

// statusOf maps the service's error types to HTTP statuses; anything else is
// an internal error.
func statusOf(err error) int {
	var (
		ce *conflictError
		re *requestError
		ve *validationError
	)
	switch {
	case errors.Is(err, errNotFound):
		return http.StatusNotFound
	case databaseUnavailable(err):
		return http.StatusServiceUnavailable
	case errors.As(err, &ce):
		return http.StatusConflict
	case errors.As(err, &re):
		return re.status
	case errors.As(err, &ve):
		return http.StatusUnprocessableEntity
	}
	return http.StatusInternalServerError
}

// fail answers r with err as a problem. An internal error's cause goes to the
// request's log line, never to the client, who gets the request id to quote.
func fail(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	switch status {
	case http.StatusInternalServerError:
		info := requestInfoFrom(r.Context())
		info.cause = err
		writeProblem(w, status, "internal error; request id "+info.id, nil)
	case http.StatusServiceUnavailable:
		info := requestInfoFrom(r.Context())
		info.cause = err
		w.Header().Set("Retry-After", "2")
		writeProblem(w, status, "the database is unavailable; retry shortly (request id "+info.id+")", nil)
	case http.StatusNotFound:
		writeProblem(w, status, "no such resource: "+r.URL.Path, nil)
	default:
		var (
			re *requestError
			ve *validationError
		)
		switch {
		case errors.As(err, &re):
			writeProblem(w, status, re.detail, re.fields)
		case errors.As(err, &ve):
			writeProblem(w, status, ve.Error(), ve.fields)
		default:
			writeProblem(w, status, err.Error(), nil)
		}
	}
}

// databaseUnavailable reports whether err means the database could not be
// reached or dropped the connection (a restart, a failover), which a client
// may retry, as opposed to a fault in the service.
func databaseUnavailable(err error) bool {
	var (
		connect *pgconn.ConnectError
		netErr  net.Error
	)
	code, _ := pgCode(err)
	return errors.As(err, &connect) || errors.As(err, &netErr) || errors.Is(err, driver.ErrBadConn) ||
		strings.HasPrefix(code, "08") || // connection exception
		strings.HasPrefix(code, "57P") // operator intervention: shutdown, crash, cannot connect now
}
