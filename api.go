package main

import (
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
	"strconv"
	"strings"
	"time"
)

// Request body limits from the contract.
const (
	maxBody       = 1 << 20
	maxImportBody = 32 << 20
)

// server holds the handlers' dependencies; it has no other state.
type server struct {
	store    *store
	auth     *authenticator
	channels *channels
	wake     func() // tells the notification worker that an outbox row was committed
	log      *slog.Logger
	openapi  []byte
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
		if rt.scope == "" && strings.Contains(rt.pattern, " /v1/") {
			panic("route " + rt.pattern + " has no scope: every /v1/ route is authenticated")
		}
		if rt.scope != "" {
			h = s.auth.require(rt.scope, h)
		}
		mux.Handle(rt.pattern, h)
	}
	return s.observe(mux)
}

func (s *server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *server) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.ping(ctx); err != nil {
		s.log.Warn("not ready", "error", err)
		writeProblem(w, http.StatusServiceUnavailable, "the database does not answer", nil)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *server) handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(s.openapi)
}

// requestInfo travels in the request's context so that the single log line
// written when the request ends can name who made it and why it failed.
type requestInfo struct {
	id      string
	subject string
	cause   error
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
			s.unrouted(rec, r, handler)
			return
		}
		mux.ServeHTTP(rec, r)
	})
}

// unrouted answers a request no pattern matched. The mux's own handler knows
// whether the path exists under another method (405, with Allow), but writes
// plain text, so it runs against a sink and only its verdict is kept.
func (s *server) unrouted(w http.ResponseWriter, r *http.Request, muxAnswer http.Handler) {
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
	if status == 0 {
		status = http.StatusOK
	}
	level := slog.LevelInfo
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("route", pattern),
		slog.Int("status", status),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.String("request_id", info.id),
	}
	if info.subject != "" {
		attrs = append(attrs, slog.String("sub", info.subject))
	}
	if info.cause != nil {
		level = slog.LevelError
		attrs = append(attrs, slog.String("error", info.cause.Error()))
	}
	s.log.LogAttrs(r.Context(), level, "request", attrs...)
}

// requestID keeps a client's id when it is short and plainly printable, so it
// cannot forge log lines; otherwise it makes a new one.
func requestID(given string) string {
	if len(given) > 0 && len(given) <= 128 {
		ok := true
		for i := 0; i < len(given) && ok; i++ {
			c := given[i]
			ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':'
		}
		if ok {
			return given
		}
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
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

// writeJSON writes v with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// mediaType returns the request's media type, lower-cased, without parameters.
func mediaType(r *http.Request) string {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return ""
	}
	return mt
}

// decodeJSON reads exactly one JSON value from the body into v: the body
// must be application/json, at most limit bytes, with no unknown fields and
// nothing after the value. Every failure is a requestError saying where.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	if mt := mediaType(r); mt != "application/json" {
		return &requestError{status: http.StatusUnsupportedMediaType, detail: "Content-Type must be application/json"}
	}
	return decodeJSONBody(http.MaxBytesReader(w, r.Body, limit), v)
}

// decodeJSONBody is decodeJSON without the media type check, for bodies that
// were already read or checked.
func decodeJSONBody(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return jsonError(err)
		}
		return &requestError{status: http.StatusBadRequest, detail: "the body must hold a single JSON value"}
	}
	return nil
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
		detail := fmt.Sprintf("must be a JSON %s, not %s", jsonKind(typ.Type.Kind().String()), typ.Value)
		if typ.Field == "" {
			return bad("the body "+detail, fieldError{Pointer: "#", Detail: detail})
		}
		field := strings.ReplaceAll(typ.Field, ".", "/")
		return bad(field+" "+detail, fieldError{Pointer: "#/" + field, Detail: detail})
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return bad("unknown field "+strconv.Quote(name), fieldError{Pointer: "#/" + name, Detail: "is not a known field"})
	}
	return bad("malformed JSON: " + err.Error())
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int", "int64", "int32", "uint", "uint64", "float64":
		return "number"
	case "string":
		return "string"
	case "slice", "array":
		return "array"
	case "struct", "map":
		return "object"
	case "bool":
		return "boolean"
	}
	return goKind
}

// pathID parses the {id} path value; an id that cannot exist is not found.
func pathID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, errNotFound
	}
	return id, nil
}
