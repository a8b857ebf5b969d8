package main

import (
	"cmp"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// The handlers, the store and the authenticator report failures with these
// few error types; fail is the one place that turns them into responses, so
// no handler chooses a status on its own.

var errNotFound = errors.New("not found")

// conflictError is a uniqueness conflict or a change that would orphan rows.
type conflictError struct{ detail string }

func (e *conflictError) Error() string { return e.detail }

// requestError is a request refused for what it holds: a path or method
// with no route, malformed JSON, an unknown member, a body too large or of
// the wrong type (4xx), the service too busy to take it or its database not
// answering (503), or, with status 422, well-formed input that breaks a
// rule, naming every bad field (the first maxFieldErrors of them).
type requestError struct {
	status int
	detail string
	fields []fieldError
}

func (e *requestError) Error() string { return e.detail }

// malformed is a 400: a body that cannot be read as a request, as detail says.
func malformed(detail string, fields ...fieldError) *requestError {
	return &requestError{status: http.StatusBadRequest, detail: detail, fields: fields}
}

// invalid is a 422 naming one bad input.
func invalid(f fieldError) *requestError {
	return &requestError{status: http.StatusUnprocessableEntity, detail: describe(f), fields: []fieldError{f}}
}

// fieldError names one bad input: Pointer is an RFC 6901 JSON pointer into the
// body ("#/amount", "#/3/phone"), Parameter a query parameter, Header a request
// header, Row and Field a CSV cell, rows counted from 1 after the header.
type fieldError struct {
	Pointer   string `json:"pointer,omitempty"`
	Parameter string `json:"parameter,omitempty"`
	Header    string `json:"header,omitempty"`
	Row       int    `json:"row,omitempty"`
	Field     string `json:"field,omitempty"`
	Detail    string `json:"detail"`
	index     int    // the import row it belongs to, which orders the list
}

// maxFieldErrors bounds the errors one answer lists: a bad import of 10,000
// rows must not answer with a problem bigger than the import.
const maxFieldErrors = 100

// checker collects what is wrong with an input, so that a client learns of
// every bad field in one round trip. It keeps the first maxFieldErrors and
// counts the rest.
type checker struct {
	prefix string // JSON pointer of the object checked: "#", or "#/3" in an import
	index  int    // the import row checked
	csv    bool   // whether that row is a CSV record, named "row index+1"
	fields []fieldError
	total  int
}

func newChecker() *checker { return &checker{prefix: "#"} }

// at moves the checker to row i of an import, named "#/i" in JSON and
// "row i+1" in CSV.
func (c *checker) at(i int, csv bool) {
	c.index, c.prefix, c.csv = i, "#/"+strconv.Itoa(i), csv
}

// add records that the member name is bad, as detail says, and reports
// whether it is good: an empty detail, what the rules return for a good
// value, records nothing.
func (c *checker) add(name, detail string) bool {
	if detail == "" {
		return true
	}
	f := fieldError{Pointer: c.prefix + "/" + name, Detail: detail}
	if c.csv {
		f = fieldError{Row: c.index + 1, Field: name, Detail: c.row(c.index) + ": " + name + " " + detail}
	}
	c.addError(f)
	return false
}

// row names import row i as the checker's errors do: "row 4" in CSV, "#/3"
// in JSON.
func (c *checker) row(i int) string {
	if c.csv {
		return "row " + strconv.Itoa(i+1)
	}
	return "#/" + strconv.Itoa(i)
}

// addError records f for the current row. Rows are checked in order, and
// errors found later for an earlier row (by the store) are put in their
// place, so that the list holds the first errors by row.
func (c *checker) addError(f fieldError) {
	c.total++
	f.index = c.index
	at, _ := slices.BinarySearchFunc(c.fields, f.index+1, func(e fieldError, i int) int { return cmp.Compare(e.index, i) })
	c.fields = slices.Insert(c.fields, at, f)
	c.fields = c.fields[:min(len(c.fields), maxFieldErrors)]
}

// err returns nil when nothing was added, else a 422 whose detail is the
// lone error's or a count.
func (c *checker) err() error {
	switch {
	case c.total == 0:
		return nil
	case c.total == 1:
		return invalid(c.fields[0])
	case c.total > len(c.fields):
		return &requestError{http.StatusUnprocessableEntity, fmt.Sprintf("%d problems; the first %d are listed", c.total, len(c.fields)), c.fields}
	}
	return &requestError{http.StatusUnprocessableEntity, strconv.Itoa(c.total) + " problems; see errors", c.fields}
}

// describe is a lone field error as a problem's detail: its own detail, with
// the member's name in front when the detail does not already say where.
func describe(f fieldError) string {
	switch {
	case f.Row > 0 || f.Parameter != "" || f.Header != "":
		return f.Detail
	case f.Pointer == "#":
		return "the body " + f.Detail
	}
	return strings.TrimPrefix(f.Pointer, "#/") + " " + f.Detail
}

// problem is an RFC 9457 problem details body.
type problem struct {
	Type   string       `json:"type"`
	Title  string       `json:"title"`
	Status int          `json:"status"`
	Detail string       `json:"detail"`
	Errors []fieldError `json:"errors,omitempty"`
}

// writeProblem writes a problem of type about:blank, whose title is the
// status's reason phrase.
func writeProblem(w http.ResponseWriter, status int, detail string, fields []fieldError) {
	b, _ := json.Marshal(problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: detail, Errors: fields})
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// fail answers r with err as a problem. It is the one table from error to
// status. The cause of an internal error goes to the request's log line,
// never to the client, who gets the request id to quote.
func fail(w http.ResponseWriter, r *http.Request, err error) {
	info := requestInfoFrom(r.Context())
	auth, isAuth := errors.AsType[*authError](err)
	conflict, isConflict := errors.AsType[*conflictError](err)
	request, isRequest := errors.AsType[*requestError](err)
	// The rest of the body, up to the import limit, is read into nothing. An
	// answer given before the body was read (an unknown path, a refused
	// token, a wrong media type, no slot for a large body) would otherwise
	// reach a client still sending as a reset, since net/http closes a
	// connection on more than 256 KiB left unread. A client that asked for
	// 100-continue is told to go on and sends a body that is thrown away;
	// that costs it an upload, where the reset cost it the answer. A body past
	// its byte limit is not read on: it was refused for its size.
	if !isRequest || request.status != http.StatusRequestEntityTooLarge || request == errTooManyRows {
		io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, maxImportBody))
	}
	switch {
	case errors.Is(err, errNotFound):
		writeProblem(w, http.StatusNotFound, "no such resource: "+r.URL.Path, nil)
	case isAuth:
		info.note = auth.reason
		w.Header().Set("WWW-Authenticate", auth.challenge)
		writeProblem(w, auth.status, auth.detail, nil)
	case isConflict:
		writeProblem(w, http.StatusConflict, conflict.detail, nil)
	case isRequest:
		if request.status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "5")
		}
		writeProblem(w, request.status, request.detail, request.fields)
	case databaseUnavailable(err):
		info.cause = err
		w.Header().Set("Retry-After", "2")
		writeProblem(w, http.StatusServiceUnavailable, "the database is unavailable; retry shortly (request id "+info.id+")", nil)
	default:
		info.cause = err
		writeProblem(w, http.StatusInternalServerError, "internal error; request id "+info.id, nil)
	}
}

// databaseUnavailable reports whether err means the database could not be
// reached or dropped the connection (a restart, a failover), which a client
// may retry, as opposed to a fault in the service.
func databaseUnavailable(err error) bool {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		// Connection exceptions, and operator intervention: shutdown, crash,
		// cannot connect now.
		return strings.HasPrefix(pgErr.Code, "08") || strings.HasPrefix(pgErr.Code, "57P")
	}
	// A connection the network dropped mid-reply ends in an unexpected EOF.
	_, connect := errors.AsType[*pgconn.ConnectError](err)
	_, network := errors.AsType[net.Error](err)
	return connect || network || errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.ErrUnexpectedEOF)
}
