package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"reflect"
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
	openapi        []byte
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
		{"GET /v1/customers", "customers:read", s.handleListCustomers},
		{"GET /v1/customers/{id}", "customers:read", s.handleGetCustomer},
		{"PATCH /v1/customers/{id}", "customers:write", s.handlePatchCustomer},
		{"DELETE /v1/customers/{id}", "customers:write", s.handleDeleteCustomer},
		{"POST /v1/customers/import", "customers:write", s.handleImportCustomers},

		{"POST /v1/orders", "orders:write", s.handleCreateOrder},
		{"GET /v1/orders", "orders:read", s.handleListOrders},
		{"GET /v1/orders/{id}", "orders:read", s.handleGetOrder},
		{"POST /v1/orders/import", "orders:write", s.handleImportOrders},

		{"GET /v1/numbers", "numbers:read", s.handleListNumbers},
		{"POST /v1/numbers", "numbers:write", s.handleCreateNumber},
		{"GET /v1/numbers/{id}", "numbers:read", s.handleGetNumber},
		{"PUT /v1/numbers/{id}", "numbers:write", s.handleReplaceNumber},
		{"PATCH /v1/numbers/{id}", "numbers:write", s.handlePatchNumber},
		{"DELETE /v1/numbers/{id}", "numbers:write", s.handleDeleteNumber},
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
		writeProblem(w, http.StatusServiceUnavailable, "the database does not answer", nil)
		return
	}
	writeJSON(w, r, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *server) handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(s.openapi)
}

// requestInfo travels in the request's context so that the single log line
// written when the request ends can name who made it and why it failed.
type requestInfo struct {
	id      string
	subject string
	cause   error  // an internal error, logged at level ERROR
	note    string // why a request was refused, when the status alone does not say
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
		info := &requestInfo{id: requestID(r.Header.Get("X-Request-Id"))}
		h := w.Header()
		h.Set("X-Request-Id", info.id)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		rec := &statusRecorder{ResponseWriter: w}
		r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info))

		handler, pattern := mux.Handler(r)
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				info.cause = fmt.Errorf("panic: %v", v)
				if rec.status == 0 {
					writeProblem(rec, http.StatusInternalServerError, "internal error; request id "+info.id, nil)
				}
			}
			s.logRequest(r, pattern, rec.status, time.Since(start), info)
		}()
		if pattern == "" {
			unrouted(rec, r, handler)
			return
		}
		mux.ServeHTTP(rec, r)
	})
}

// unrouted answers a request no pattern matched. The mux's own handler knows
// whether the path exists under another method (405, with Allow), but writes
// plain text, so it runs against a sink and only its verdict is kept.
func unrouted(w http.ResponseWriter, r *http.Request, muxAnswer http.Handler) {
	sink := &headerSink{header: http.Header{}}
	muxAnswer.ServeHTTP(sink, r)
	if sink.status == http.StatusMethodNotAllowed {
		allow := sink.header.Get("Allow")
		w.Header().Set("Allow", allow)
		writeProblem(w, http.StatusMethodNotAllowed, r.Method+" is not allowed here; allowed: "+allow, nil)
		return
	}
	writeProblem(w, http.StatusNotFound, "no route for "+r.Method+" "+r.URL.Path, nil)
}

func (s *server) logRequest(r *http.Request, pattern string, status int, d time.Duration, info *requestInfo) {
	level := slog.LevelInfo
	attrs := []any{"method", r.Method, "route", pattern, "status", max(status, http.StatusOK),
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
	ok := len(given) > 0 && len(given) <= 128
	for i := 0; i < len(given) && ok; i++ {
		c := given[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_.:", c) >= 0
	}
	if ok {
		return given
	}
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// statusRecorder remembers the status for the log line.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

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
	b, err := json.Marshal(v)
	if err != nil {
		fail(w, r, fmt.Errorf("encoding the response: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
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
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return jsonError(err)
	}
	return decodeStrict(body, v)
}

// decodeStrict decodes data, which must hold exactly one JSON value in valid
// UTF-8, into the struct v points to. An object member must be named exactly
// as one of v's fields, once: encoding/json would match names ignoring case
// and let the last of two equal names win, so what a proxy or a log shows of
// a request could differ from what is stored.
func decodeStrict(data []byte, v any) error {
	if !utf8.Valid(data) {
		return &requestError{status: http.StatusBadRequest, detail: "the body is not valid UTF-8"}
	}
	if err := checkMembers(data, reflect.TypeOf(v).Elem()); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &requestError{status: http.StatusBadRequest, detail: "the body must hold a single JSON value"}
	}
	return nil
}

// checkMembers refuses, in the object data holds, a member name that is not
// exactly one of the JSON names of struct type t, or that repeats. Anything
// else (not an object, a syntax error) is left for the decoder to report.
func checkMembers(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	bad := func(name, detail string) error {
		return &requestError{status: http.StatusBadRequest, detail: strconv.Quote(name) + " " + detail,
			fields: []fieldError{{Pointer: "#/" + name, Detail: detail}}}
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		name := tok.(string)
		if seen[name] {
			return bad(name, "appears twice")
		}
		seen[name] = true
		if known := memberName(t, name); known != name {
			if known != "" {
				return bad(name, "is not a known member; names are case-sensitive: "+strconv.Quote(known))
			}
			return bad(name, "is not a known member")
		}
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return nil
		}
	}
	return nil
}

// memberName returns the JSON name of t's field that name spells, ignoring
// case, or "".
func memberName(t reflect.Type, name string) string {
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if strings.EqualFold(tag, name) {
			return tag
		}
	}
	return ""
}

// jsonError turns a decoding failure into a requestError that tells the
// client what and where.
func jsonError(err error) error {
	var (
		syntax *json.SyntaxError
		typ    *json.UnmarshalTypeError
		tooBig *http.MaxBytesError
	)
	bad := func(detail string, fields ...fieldError) error {
		return &requestError{status: http.StatusBadRequest, detail: detail, fields: fields}
	}
	switch {
	case errors.As(err, &tooBig):
		return &requestError{status: http.StatusRequestEntityTooLarge, detail: fmt.Sprintf("the body must not exceed %d bytes", tooBig.Limit)}
	case errors.As(err, &syntax):
		return bad(fmt.Sprintf("malformed JSON at byte %d: %s", syntax.Offset, syntax.Error()))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return bad("malformed JSON: the body ends early")
	case errors.Is(err, io.EOF):
		return bad("the body must not be empty")
	case errors.As(err, &typ):
		kind := map[reflect.Kind]string{reflect.Int64: "number", reflect.String: "string", reflect.Struct: "object"}[typ.Type.Kind()]
		detail := "must be a JSON " + cmp.Or(kind, typ.Type.String()) + ", not " + typ.Value
		if typ.Field == "" {
			return bad("the body "+detail, fieldError{Pointer: "#", Detail: detail})
		}
		field := strings.ReplaceAll(typ.Field, ".", "/")
		return bad(field+" "+detail, fieldError{Pointer: "#/" + field, Detail: detail})
	}
	return bad("malformed JSON: " + err.Error())
}

// pathID parses the {id} path value; an id that cannot exist is not found.
func pathID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, errNotFound
	}
	return id, nil
}

// withID runs get with the request's {id}.
func withID[T any](r *http.Request, get func(context.Context, int64) (T, error)) (T, error) {
	id, err := pathID(r)
	if err != nil {
		var zero T
		return zero, err
	}
	return get(r.Context(), id)
}

// respond answers with v, or with err as a problem when it is not nil.
func respond(w http.ResponseWriter, r *http.Request, status int, v any, err error) {
	if err != nil {
		fail(w, r, err)
		return
	}
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return
	}
	writeJSON(w, r, status, v)
}
