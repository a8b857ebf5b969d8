package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// generatedID is the form of the request ids the service makes.
var generatedID = regexp.MustCompile(`^[0-9a-f]{32}$`)

// Every response, whatever its status, carries the request id and the
// safety headers. Every request but the 401 carries the token.
func TestAPIHeadersOnEveryResponse(t *testing.T) {
	ta := newTestApp(t, nil)
	cases := []struct {
		method, path string
		body         any
		status       int
	}{
		{"GET", "/healthz", nil, http.StatusOK},
		{"GET", "/v1/customers", nil, http.StatusOK},
		{"POST", "/v1/customers", map[string]any{"code": "H-1", "name": "A", "phone": "+254712345678"}, http.StatusCreated},
		{"GET", "/nope", nil, http.StatusNotFound},
		{"PUT", "/v1/customers", nil, http.StatusMethodNotAllowed},
		{"GET", "/v1/orders", nil, http.StatusUnauthorized},
		{"POST", "/v1/customers", map[string]any{"code": ""}, http.StatusUnprocessableEntity},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path+" "+http.StatusText(tc.status), func(t *testing.T) {
			headers := map[string]string{"Authorization": "Bearer " + ta.token}
			if tc.status == http.StatusUnauthorized {
				headers = nil
			}
			r := ta.request(tc.method, tc.path, tc.body, "application/json", headers).must(t, tc.status)
			for name, value := range map[string]string{"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"} {
				equal(t, name, r.header.Get(name), value)
			}
			if got := r.header.Get("X-Request-Id"); !generatedID.MatchString(got) {
				t.Errorf("X-Request-Id: got %q, want a generated 32-hex id", got)
			}
			if tc.status >= 400 {
				r.problem(t)
			} else if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type: got %q, want application/json", ct)
			}
		})
	}
}

// A sane X-Request-Id is kept, and names the request's log line; any other
// is replaced.
func TestAPIRequestID(t *testing.T) {
	ta := newTestApp(t, nil)
	cases := []struct {
		sent string
		keep bool
	}{
		{"abc-123_x.y:z", true},
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{"has space", false},
		{"line\tbreak", false},
		{`"quoted"`, false},
	}
	for _, tc := range cases {
		got := ta.request("GET", "/healthz", nil, "", map[string]string{"X-Request-Id": tc.sent}).header.Get("X-Request-Id")
		if tc.keep && got != tc.sent || !tc.keep && !generatedID.MatchString(got) {
			t.Errorf("sent %q: got %q, want it kept (%v), else a fresh 32-hex id", tc.sent, got, tc.keep)
		}
	}
	ta.request("GET", "/v1/customers", nil, "", map[string]string{"X-Request-Id": "trace-42", "Authorization": "Bearer " + ta.token}).must(t, http.StatusOK)
	line := ta.requestLog("trace-42")
	for key, want := range map[string]any{"method": "GET", "route": "GET /v1/customers", "status": float64(200), "sub": "staff-1"} {
		equal(t, "log "+key, line[key], want)
	}
	_, ok := line["duration_ms"]
	equal(t, "log line has duration_ms", ok, true)
}

func TestAPINotFoundAndMethodNotAllowed(t *testing.T) {
	ta := newTestApp(t, nil)
	// GET /v1/orders/import matches /v1/orders/{id} with id "import".
	for _, path := range []string{"/", "/nope", "/v1", "/v1/customers/", "/v1/customers/abc", "/v1/customers/0", "/v1/customers/99999", "/v1/orders/-1", "/v1/numbers/99999", "/v1/orders/import"} {
		ta.do("GET", path, nil).must(t, http.StatusNotFound).problem(t)
	}
	cases := []struct{ method, path, allow string }{
		{"PUT", "/v1/customers/1", "DELETE, GET, HEAD, PATCH"},
		{"DELETE", "/v1/orders/1", "GET, HEAD"},
		{"PATCH", "/v1/orders", "GET, HEAD, POST"},
		{"POST", "/healthz", "GET, HEAD"},
	}
	for _, tc := range cases {
		r := ta.do(tc.method, tc.path, nil).must(t, http.StatusMethodNotAllowed)
		r.problem(t)
		equal(t, tc.method+" "+tc.path+" Allow", r.header.Get("Allow"), tc.allow)
	}
	// Refusals read the body to the end, for a client still sending, but not past its byte limit.
	for _, tc := range []struct {
		path    string
		status  int
		drained bool
	}{{"/v1/customer/import", 404, true}, {"/healthz", 405, true}, {"/v1/customers", 413, false}} {
		unread := strings.NewReader(strings.Repeat("x", maxBody+300<<10))
		req := httptest.NewRequestWithContext(t.Context(), "POST", tc.path, unread) // which ends, giving back a large body's slot
		req.Header.Set("Authorization", "Bearer "+ta.token)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		ta.server.routes().ServeHTTP(rec, req)
		mustEqual(t, "POST "+tc.path, rec.Code, tc.status)
		equal(t, "POST "+tc.path+": the body read to the end", unread.Len() == 0, tc.drained)
	}
}

func TestAPIBodyErrors(t *testing.T) {
	ta := newTestApp(t, nil)
	cases := []struct {
		name        string
		body        string
		contentType string
		status      int
		pointer     string
		detail      string
	}{
		{"malformed", `{"code":`, "application/json", 400, "", "malformed JSON"},
		{"syntax", `{"code" "x"}`, "application/json", 400, "", "malformed JSON at byte"},
		{"empty", ``, "application/json", 400, "", "must not be empty"},
		{"two values", `{"code":"A"} {"code":"B"}`, "application/json", 400, "", "after top-level value"},
		{"unknown field", `{"code":"A","name":"B","phone":"+254712345678","nickname":"x"}`, "application/json", 400, "#/nickname", `"nickname" is not a known member`},
		{"wrong case", `{"code":"A","name":"B","PHONE":"+254712345678"}`, "application/json", 400, "#/PHONE", `case-sensitive: "phone"`},
		{"a member twice", `{"code":"A","name":"B","phone":"+254712345678","phone":"+254700000000"}`, "application/json", 400, "#/phone", "appears twice"},
		{"invalid UTF-8", "{\"code\":\"A\",\"name\":\"\xff\xfe\",\"phone\":\"+254712345678\"}", "application/json", 400, "", "not valid UTF-8"},
		{"wrong type", `{"code":7,"name":"B","phone":"+254712345678"}`, "application/json", 400, "#/code", "must be a JSON string"},
		{"array", `[]`, "application/json", 400, "#", "the body must be a JSON object"},
		{"text/plain", `{}`, "text/plain", 415, "", "application/json"},
		{"no content type", `{}`, "", 415, "", "application/json"},
		{"charset is fine", `{"code":"CS-1","name":"B","phone":"+254712345678"}`, "application/json; charset=utf-8", 201, "", ""},
		{"too large", `{"name":"` + strings.Repeat("x", maxBody) + `"}`, "application/json", 413, "", "must not exceed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := ta.count("customers")
			r := ta.send("POST", "/v1/customers", tc.body, tc.contentType).must(t, tc.status)
			if tc.status == 201 {
				return
			}
			p := r.problem(t)
			contains(t, "detail", p.Detail, tc.detail)
			if tc.pointer != "" && (len(p.Errors) != 1 || p.Errors[0].Pointer != tc.pointer) {
				t.Errorf("errors: got %+v, want one at %s", p.Errors, tc.pointer)
			}
			equal(t, "customers after a refused request", ta.count("customers"), before)
		})
	}
}

// An internal error says only "internal error" and the request id; the
// cause goes to that request's log line.
func TestAPIInternalErrorAndReadiness(t *testing.T) {
	ta := newTestApp(t, nil)
	ta.do("GET", "/readyz", nil).must(t, http.StatusOK)
	ta.store.db.Close()
	r := ta.do("GET", "/v1/customers", nil).must(t, http.StatusInternalServerError)
	id := r.header.Get("X-Request-Id")
	equal(t, "detail", r.problem(t).Detail, "internal error; request id "+id)
	line := ta.requestLog(id)
	equal(t, "log level", line["level"], any("ERROR"))
	contains(t, "logged error", line["error"].(string), "database is closed")
	ready := ta.do("GET", "/readyz", nil).must(t, http.StatusServiceUnavailable)
	equal(t, "readyz detail", ready.problem(t).Detail, "the database does not answer")
	equal(t, "readyz Retry-After", ready.header.Get("Retry-After"), "5")
	ta.do("GET", "/healthz", nil).must(t, http.StatusOK)
}

// The OpenAPI document describes exactly the routes the server has.
func TestAPIOpenAPIMatchesRoutes(t *testing.T) {
	ta := newTestApp(t, nil)
	r := ta.do("GET", "/openapi.yaml", nil).must(t, http.StatusOK)
	equal(t, "Content-Type", r.header.Get("Content-Type"), "application/yaml")
	if !bytes.Equal(r.body, openapiYAML) {
		t.Fatal("served document differs from openapi.yaml")
	}
	doc := contract{doc: readYAML(t, string(openapiYAML))}
	var documented, served []string
	for path, item := range doc.get(doc.doc, "paths") {
		for method := range doc.get(item) {
			if slices.Contains([]string{"get", "post", "put", "patch", "delete"}, method) {
				documented = append(documented, strings.ToUpper(method)+" "+path)
			}
		}
	}
	for _, rt := range ta.server.routeTable() {
		served = append(served, rt.pattern)
		method, path, _ := strings.Cut(rt.pattern, " ")
		security, _ := doc.get(doc.doc, "paths", path, strings.ToLower(method))["security"].([]any)
		var scopes []any
		for _, requirement := range security {
			scopes = append(scopes, requirement.(map[string]any)["bearer"].([]any)...)
		}
		if rt.scope != "" && !slices.Contains(scopes, any(rt.scope)) {
			t.Errorf("%s: the document's security %v lacks scope %s", rt.pattern, security, rt.scope)
		}
	}
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Errorf("routes differ:\n served:     %v\n documented: %v", served, documented)
	}
}

// A body past smallBody bytes needs one of largeBodies' slots, given back
// when its request ends; with every slot taken it is 503, while a body of a
// normal size is still served.
func TestAPILargeBodiesAreBounded(t *testing.T) {
	ta := newTestApp(t, nil)
	for range cap(largeBodies) {
		largeBodies <- struct{}{}
	}
	large := `{"code":"L-1","phone":"+254712345678","name":"` + strings.Repeat("x", smallBody) + `"}`
	r := ta.do("POST", "/v1/customers", large).must(t, http.StatusServiceUnavailable)
	equal(t, "Retry-After", r.header.Get("Retry-After"), "5")
	ta.do("POST", "/v1/customers", map[string]any{"code": "L-2", "name": "A", "phone": "+254712345678"}).must(t, http.StatusCreated)

	<-largeBodies
	ta.do("POST", "/v1/customers", large).must(t, http.StatusUnprocessableEntity)
	eventually(t, 5*time.Second, "the slot given back", func() bool { return len(largeBodies) == cap(largeBodies)-1 })
	for range cap(largeBodies) - 1 {
		<-largeBodies
	}
	equal(t, "customers, only the one with a small body", ta.count("customers"), 1)
}
