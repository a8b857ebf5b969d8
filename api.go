package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Request limits from the contract.
const (
	maxBody        = 1 << 20
	maxImportBody  = 32 << 20
	maxHeaderBytes = 64 << 10
)

// server holds the handlers' dependencies; it has no other state.
type server struct {
	store          *store
	auth           *authenticator
	channels       *channels
	outbox         *worker // told of committed outbox rows and of delivery reports
	log            *slog.Logger
	callbackSecret string        // AT_CALLBACK_SECRET; "" disables delivery reports
	imports        chan struct{} // a slot per import that may run at once
}

// route is one entry of the API: a ServeMux pattern, the scope a token must
// carry to use it ("" for the unauthenticated ones), and its handler.
type route struct {
	pattern string
	scope   string
	handler http.HandlerFunc
}

// routeTable is the whole API and its access policy at a glance.
func (s *server) routeTable() []route {
	return []route{
		{"GET /healthz", "", s.handleHealth},
		{"GET /readyz", "", s.handleReady},
		{"GET /openapi.yaml", "", s.handleOpenAPI},
		{"POST /hooks/africastalking/{secret}", "", s.handleDeliveryReport},

		{"POST /v1/customers", "customers:write", s.handleCreateCustomer},
		{"GET /v1/customers", "customers:read", list('c', s.store.listCustomers, customerCursor)},
		{"GET /v1/customers/{id}", "customers:read", one(s.store.getCustomer)},
		{"PATCH /v1/customers/{id}", "customers:write", s.handlePatchCustomer},
		{"DELETE /v1/customers/{id}", "customers:write", remove(s.store.deleteCustomer)},
		{"POST /v1/customers/import", "customers:write", s.handleImportCustomers},

		{"POST /v1/orders", "orders:write", s.handleCreateOrder},
		{"GET /v1/orders", "orders:read", s.handleListOrders},
		{"GET /v1/orders/{id}", "orders:read", one(s.store.getOrder)},
		{"POST /v1/orders/import", "orders:write", s.handleImportOrders},

		{"GET /v1/numbers", "numbers:read", list('n', s.store.listNumbers, numberCursor)},
		{"POST /v1/numbers", "numbers:write", s.handleCreateNumber},
		{"GET /v1/numbers/{id}", "numbers:read", one(s.store.getNumber)},
		{"PUT /v1/numbers/{id}", "numbers:write", s.updateNumber(false)},
		{"PATCH /v1/numbers/{id}", "numbers:write", s.updateNumber(true)},
		{"DELETE /v1/numbers/{id}", "numbers:write", remove(s.store.deleteNumber)},
	}
}

// routes returns the service's handler: the route table on a ServeMux, each
// authenticated route behind its scope check, all behind observe.
func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.routeTable() {
		var h http.Handler = rt.handler
		if rt.scope != "" {
			h = s.auth.require(rt.scope, h)
		}
		mux.Handle(rt.pattern, h)
	}
	return s.observe(mux)
}

func (s *server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, r, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *server) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.ping(ctx); err != nil {
		s.log.Warn("not ready", "error", err)
		fail(w, r, &requestError{status: http.StatusServiceUnavailable, detail: "the database does not answer"})
		return
	}
	writeJSON(w, r, http.StatusOK, map[string]string{"status": "ready"})
}

//go:embed openapi.yaml
var openapiYAML []byte

func (s *server) handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(openapiYAML)
}

// requestInfo is what the single log line written when a request ends says
// of it. It travels in the request's context, so that handlers can record who
// made the request and why it failed, and it is the ResponseWriter they write
// to, so that it learns the status.
type requestInfo struct {
	http.ResponseWriter
	status  int // the first status written; 0 means an implicit 200, or nothing written yet
	id      string
	subject string
	cause   error  // an internal error, logged at level ERROR
	note    string // why a request was refused, when the status alone does not say
}

// WriteHeader records the status before writing it.
func (info *requestInfo) WriteHeader(code int) {
	if info.status == 0 {
		info.status = code
	}
	info.ResponseWriter.WriteHeader(code)
}

type requestInfoKey struct{}

// requestInfoFrom returns the request's info; outside a request (in tests of
// a lone handler) it returns a throwaway value rather than nil.
func requestInfoFrom(ctx context.Context) *requestInfo {
	if info, ok := ctx.Value(requestInfoKey{}).(*requestInfo); ok {
		return info
	}
	return &requestInfo{}
}

// observe wraps the mux with what every response needs: the request id and
// safety headers, problem+json answers for unknown paths and wrong methods,
// recovery from panics, and one log line per request.
func (s *server) observe(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		info := &requestInfo{ResponseWriter: w, id: requestID(r.Header.Get("X-Request-Id"))}
		w.Header().Set("X-Request-Id", info.id)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "no-store")
		r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info))

		handler, pattern := mux.Handler(r)
		defer func() {
			switch v := recover(); {
			case v == http.ErrAbortHandler:
				panic(v)
			case v != nil && info.status == 0:
				fail(info, r, fmt.Errorf("panic: %v", v))
			case v != nil:
				info.cause = fmt.Errorf("panic: %v", v) // too late to answer 500
			}
			s.logRequest(r, pattern, time.Since(start), info)
		}()
		if pattern == "" {
			unrouted(info, r, handler)
			return
		}
		mux.ServeHTTP(info, r)
	})
}

// unrouted answers a request no pattern matched. The mux's own handler knows
// whether the path exists under another method (405, with Allow), but writes
// plain text, so it runs against a sink and only its verdict is kept.
func unrouted(w http.ResponseWriter, r *http.Request, muxAnswer http.Handler) {
	sink := &headerSink{header: http.Header{}}
	muxAnswer.ServeHTTP(sink, r)
	if sink.status != http.StatusMethodNotAllowed {
		fail(w, r, &requestError{status: http.StatusNotFound, detail: "no route for " + r.Method + " " + r.URL.Path})
		return
	}
	allow := sink.header.Get("Allow")
	w.Header().Set("Allow", allow)
	fail(w, r, &requestError{status: http.StatusMethodNotAllowed, detail: r.Method + " is not allowed here; allowed: " + allow})
}

// logRequest writes the request's log line; the cause of an internal error
// makes it an ERROR.
func (s *server) logRequest(r *http.Request, pattern string, d time.Duration, info *requestInfo) {
	level := slog.LevelInfo
	attrs := []any{"method", r.Method, "route", pattern, "status", max(info.status, http.StatusOK),
		"duration_ms", float64(d.Microseconds()) / 1000, "request_id", info.id}
	if info.subject != "" {
		attrs = append(attrs, "sub", info.subject)
	}
	if info.note != "" {
		attrs = append(attrs, "reason", info.note)
	}
	if info.cause != nil {
		level, attrs = slog.LevelError, append(attrs, "error", info.cause.Error())
	}
	s.log.Log(r.Context(), level, "request", attrs...)
}

// requestID keeps a client's id when it is short and plainly printable, so it
// cannot forge log lines; otherwise it makes a new one.
func requestID(given string) string {
	if len(given) > 0 && len(given) <= 128 && strings.Trim(given, alphanumeric+"-_.:") == "" {
		return given
	}
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

const alphanumeric = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// headerSink is a ResponseWriter that keeps only the status and headers.
type headerSink struct {
	header http.Header
	status int
}

func (s *headerSink) Header() http.Header         { return s.header }
func (s *headerSink) Write(b []byte) (int, error) { return len(b), nil }
func (s *headerSink) WriteHeader(code int)        { s.status = code }

// writeJSON answers with v. The body is encoded before anything is written,
// so that a value that cannot be encoded is a logged 500, never a 200 with an
// empty body.
func writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // the answer is JSON, never HTML: a link's & stays &
	if err := enc.Encode(v); err != nil {
		fail(w, r, fmt.Errorf("encoding the response: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

// mediaType returns the request's media type, lower-cased, without parameters.
func mediaType(r *http.Request) string {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return mt
}

// decodeJSON reads r's body, which must be application/json of at most
// maxBody bytes, into v with decodeStrict.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if mediaType(r) != "application/json" {
		return &requestError{status: http.StatusUnsupportedMediaType, detail: "Content-Type must be application/json"}
	}
	body, err := readBody(w, r)
	if err != nil {
		return err
	}
	return decodeStrict(body, v)
}

// largeBodies has a slot for each JSON body past smallBody bytes that may be
// in memory at once. A body of a megabyte costs about three while decoded,
// so that however many clients send them together (Fly's proxy lets 250
// requests through), the service stays within its memory; bodies of a
// normal size never wait for a slot.
var largeBodies = make(chan struct{}, 16)

const smallBody = 64 << 10

// readBody reads r's body of at most maxBody bytes. Past smallBody bytes it
// takes a slot of largeBodies, until the request ends, or answers 503.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, maxBody)
	head, err := io.ReadAll(io.LimitReader(body, smallBody))
	if err != nil || len(head) < smallBody {
		return head, jsonError(err)
	}
	select {
	case largeBodies <- struct{}{}:
		context.AfterFunc(r.Context(), func() { <-largeBodies })
	default:
		return nil, &requestError{status: http.StatusServiceUnavailable, detail: "too many large bodies are being read; retry shortly"}
	}
	buf := bytes.NewBuffer(head)
	_, err = buf.ReadFrom(body)
	return buf.Bytes(), jsonError(err)
}

// decodeChecked decodes r's body into v with decodeJSON, then has check
// report to a checker every rule the body breaks, so that one answer names
// them all.
func decodeChecked(w http.ResponseWriter, r *http.Request, v any, check func(*checker)) error {
	if err := decodeJSON(w, r, v); err != nil {
		return err
	}
	c := newChecker()
	check(c)
	return c.err()
}

// decodeStrict decodes data, which must hold exactly one JSON value in valid
// UTF-8, into the struct v points to. An object member must be named exactly
// as one of v's fields, once: encoding/json would match names ignoring case
// and let the last of two equal names win, so what a proxy or a log shows of
// a request could differ from what is stored.
func decodeStrict(data []byte, v any) error {
	switch {
	case len(bytes.TrimSpace(data)) == 0:
		return malformed("the body must not be empty")
	case !utf8.Valid(data):
		return malformed("the body is not valid UTF-8")
	case !json.Valid(data):
		return jsonError(json.Unmarshal(data, v))
	}
	names := memberNames(data)
	for i, name := range names {
		if detail := memberProblem(reflect.TypeOf(v).Elem(), names, i); detail != "" {
			return malformed(strconv.Quote(name)+" "+detail, fieldError{Pointer: "#/" + name, Detail: detail})
		}
	}
	return jsonError(json.Unmarshal(data, v))
}

// memberNames returns the names of the members of the object that data, valid
// JSON, holds, unescaped: its strings at depth 1 followed by a colon, so none
// when it holds something else. It reads data in place: a body of a megabyte
// is not copied to learn its few names.
func memberNames(data []byte) []string {
	var names []string
	depth := 0
	for i := 0; i < len(data); i++ {
		switch data[i] {
		case '{', '[':
			depth++
		case '}', ']':
			depth--
		case '"':
			end := i + 1
			for ; data[end] != '"'; end++ {
				if data[end] == '\\' {
					end++ // an escaped character, perhaps a quote
				}
			}
			// A string of the top object followed by a colon is a name.
			if depth == 1 && bytes.TrimSpace(data[end+1:])[0] == ':' {
				var name string
				json.Unmarshal(data[i:end+1], &name)
				names = append(names, name)
			}
			i = end
		}
	}
	return names
}

// memberProblem says what is wrong with names[i], the name of a member of an
// object decoded into the struct type t, whose fields all have JSON names, or
// returns "": a name must be one of those, exactly, and appear once. The
// names before i passed, so they are few: at most t's fields.
func memberProblem(t reflect.Type, names []string, i int) string {
	if slices.Contains(names[:i], names[i]) {
		return "appears twice"
	}
	for f := range t.NumField() {
		switch tag, _, _ := strings.Cut(t.Field(f).Tag.Get("json"), ","); {
		case tag == names[i]:
			return ""
		case strings.EqualFold(tag, names[i]):
			return "is not a known member; names are case-sensitive: " + strconv.Quote(tag)
		}
	}
	return "is not a known member"
}

// jsonError turns a decoding failure into a requestError that tells the
// client what and where.
func jsonError(err error) error {
	tooBig, isTooBig := errors.AsType[*http.MaxBytesError](err)
	syntax, isSyntax := errors.AsType[*json.SyntaxError](err)
	typ, isType := errors.AsType[*json.UnmarshalTypeError](err)
	switch {
	case err == nil:
		return nil
	case isTooBig:
		return &requestError{status: http.StatusRequestEntityTooLarge, detail: fmt.Sprintf("the body must not exceed %d bytes", tooBig.Limit)}
	case isSyntax:
		return malformed(fmt.Sprintf("malformed JSON at byte %d: %s", syntax.Offset, syntax.Error()))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return malformed("malformed JSON: the body ends early")
	case errors.Is(err, io.EOF):
		return malformed("the body must not be empty")
	case isType:
		kind := map[reflect.Kind]string{reflect.Int64: "number", reflect.String: "string", reflect.Struct: "object"}[typ.Type.Kind()]
		f := fieldError{Pointer: strings.TrimSuffix("#/"+strings.ReplaceAll(typ.Field, ".", "/"), "/"),
			Detail: "must be a JSON " + cmp.Or(kind, typ.Type.String()) + ", not " + typ.Value}
		return malformed(describe(f), f)
	}
	return malformed("malformed JSON: " + err.Error())
}

// pathID parses the {id} path value; an id that cannot exist is not found.
func pathID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, errNotFound
	}
	return id, nil
}

// one serves a GET of the resource get finds by the path's {id}.
func one[T any](get func(context.Context, int64) (T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var v T
		id, err := pathID(r)
		if err == nil {
			v, err = get(r.Context(), id)
		}
		respond(w, r, http.StatusOK, v, err)
	}
}

// remove serves a DELETE of the resource with the path's {id}.
func remove(del func(context.Context, int64) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r)
		if err == nil {
			err = del(r.Context(), id)
		}
		respond(w, r, http.StatusNoContent, nil, err)
	}
}

// list serves a list of kind's cursors that takes no filter: fetch returns up
// to the page's limit+1 rows, at names the cursor of a row.
func list[T any](kind byte, fetch func(context.Context, pageRequest) ([]T, error), at func(T) cursor) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c := newChecker()
		p := parsePage(r.URL.Query(), kind, c)
		rows, err := []T(nil), c.err()
		if err == nil {
			rows, err = fetch(r.Context(), p)
		}
		respondPage(w, r, rows, err, p.limit, at)
	}
}

// respond answers with v, or with err as a problem when it is not nil.
func respond(w http.ResponseWriter, r *http.Request, status int, v any, err error) {
	switch {
	case err != nil:
		fail(w, r, err)
	case status == http.StatusNoContent:
		w.WriteHeader(status)
	default:
		writeJSON(w, r, status, v)
	}
}
