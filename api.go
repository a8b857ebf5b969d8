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
	if len(given) > 0 && len(given) <= 128 && strings.Trim(given, alphanumeric+"-_.:") == "" {
		return given
	}
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

const alphanumeric = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// statusRecorder remembers the status for the log line; 0 means an implicit
// 200, or nothing written yet.
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
	switch {
	case len(bytes.TrimSpace(data)) == 0:
		return &requestError{status: http.StatusBadRequest, detail: "the body must not be empty"}
	case !utf8.Valid(data):
		return &requestError{status: http.StatusBadRequest, detail: "the body is not valid UTF-8"}
	case !json.Valid(data):
		return jsonError(json.Unmarshal(data, v))
	}
	seen := map[string]bool{}
	for _, name := range memberNames(data) {
		bad := func(detail string) error {
			return &requestError{status: http.StatusBadRequest, detail: strconv.Quote(name) + " " + detail,
				fields: []fieldError{{Pointer: "#/" + name, Detail: detail}}}
		}
		switch known := memberName(reflect.TypeOf(v).Elem(), name); {
		case seen[name]:
			return bad("appears twice")
		case known == "":
			return bad("is not a known member")
		case known != name:
			return bad("is not a known member; names are case-sensitive: " + strconv.Quote(known))
		}
		seen[name] = true
	}
	return jsonError(json.Unmarshal(data, v))
}

// memberNames returns the names of the members of the object that data, valid
// JSON, holds, unescaped; none when it holds something else. It reads data in
// place: a body of a megabyte is not copied to learn its few names.
func memberNames(data []byte) []string {
	if bytes.TrimSpace(data)[0] != '{' {
		return nil
	}
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
	if err == nil {
		return nil
	}
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
		if err != nil {
			fail(w, r, err)
			return
		}
		writePage(w, r, rows, p.limit, at)
	}
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
