package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// Every response, whatever its status, carries the request id and the
// safety headers.
func TestAPIHeadersOnEveryResponse(t *testing.T) {
	ta := newTestApp(t, nil)
	cases := []struct {
		name   string
		method string
		path   string
		body   any
		auth   bool
		status int
	}{
		{"health", "GET", "/healthz", nil, false, http.StatusOK},
		{"list", "GET", "/v1/customers", nil, true, http.StatusOK},
		{"create", "POST", "/v1/customers", map[string]any{"code": "H-1", "name": "A", "phone": "+254712345678"}, true, http.StatusCreated},
		{"unknown path", "GET", "/nope", nil, false, http.StatusNotFound},
		{"wrong method", "PUT", "/v1/customers", nil, true, http.StatusMethodNotAllowed},
		{"no token", "GET", "/v1/orders", nil, false, http.StatusUnauthorized},
		{"invalid", "POST", "/v1/customers", map[string]any{"code": ""}, true, http.StatusUnprocessableEntity},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			headers := map[string]string{}
			if tc.auth {
				headers["Authorization"] = "Bearer " + ta.token
			}
			r := ta.request(tc.method, tc.path, tc.body, "application/json", headers).must(t, tc.status)
			if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options: got %q, want nosniff", got)
			}
			if got := r.header.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control: got %q, want no-store", got)
			}
			if got := r.header.Get("X-Request-Id"); len(got) != 32 {
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
		r := ta.request("GET", "/healthz", nil, "", map[string]string{"X-Request-Id": tc.sent})
		got := r.header.Get("X-Request-Id")
		if tc.keep && got != tc.sent {
			t.Errorf("sent %q: got %q, want it kept", tc.sent, got)
		}
		if !tc.keep && (got == tc.sent || len(got) != 32) {
			t.Errorf("sent %q: got %q, want a fresh id", tc.sent, got)
		}
	}
	r := ta.request("GET", "/v1/customers", nil, "", map[string]string{"X-Request-Id": "trace-42", "Authorization": "Bearer " + ta.token})
	r.must(t, http.StatusOK)
	line := logLine(t, ta.logs.String(), "trace-42")
	for key, want := range map[string]any{"method": "GET", "route": "GET /v1/customers", "status": float64(200), "sub": "staff-1"} {
		if line[key] != want {
			t.Errorf("log %s: got %v, want %v", key, line[key], want)
		}
	}
	if _, ok := line["duration_ms"]; !ok {
		t.Errorf("log line has no duration_ms: %v", line)
	}
}

// logLine returns the request log line with the request id.
func logLine(t *testing.T, logs, requestID string) map[string]any {
	t.Helper()
	for _, l := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "request" && m["request_id"] == requestID {
			return m
		}
	}
	t.Fatalf("no request log line with request_id %s in:\n%s", requestID, logs)
	return nil
}

func TestAPINotFoundAndMethodNotAllowed(t *testing.T) {
	ta := newTestApp(t, nil)
	for _, path := range []string{"/", "/nope", "/v1", "/v1/customers/", "/v1/customers/abc", "/v1/customers/0", "/v1/customers/99999", "/v1/orders/-1", "/v1/numbers/99999"} {
		r := ta.do("GET", path, nil).must(t, http.StatusNotFound)
		r.problem(t)
	}
	cases := []struct{ method, path, allow string }{
		{"PUT", "/v1/customers/1", "DELETE, GET, HEAD, PATCH"},
		{"DELETE", "/v1/orders/1", "GET, HEAD"},
		{"PATCH", "/v1/orders", "GET, HEAD, POST"},
		{"POST", "/healthz", "GET, HEAD"},
		{"GET", "/v1/orders/import", "GET, HEAD, POST"},
	}
	for _, tc := range cases {
		r := ta.do(tc.method, tc.path, nil)
		if tc.path == "/v1/orders/import" {
			// GET matches /v1/orders/{id} with id "import": not found.
			r.must(t, http.StatusNotFound).problem(t)
			continue
		}
		r.must(t, http.StatusMethodNotAllowed).problem(t)
		if got := r.header.Get("Allow"); got != tc.allow {
			t.Errorf("%s %s Allow: got %q, want %q", tc.method, tc.path, got, tc.allow)
		}
	}
}

func TestAPIBodyErrors(t *testing.T) {
	ta := newTestApp(t, nil)
	auth := map[string]string{"Authorization": "Bearer " + ta.token}
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
			r := ta.request("POST", "/v1/customers", tc.body, tc.contentType, auth).must(t, tc.status)
			if tc.status == 201 {
				return
			}
			p := r.problem(t)
			if !strings.Contains(p.Detail, tc.detail) {
				t.Errorf("detail: got %q, want it to contain %q", p.Detail, tc.detail)
			}
			if tc.pointer != "" && (len(p.Errors) != 1 || p.Errors[0].Pointer != tc.pointer) {
				t.Errorf("errors: got %+v, want one at %s", p.Errors, tc.pointer)
			}
			if after := ta.count("customers"); after != before {
				t.Errorf("customers: got %d after a refused request, want %d", after, before)
			}
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
	p := r.problem(t)
	id := r.header.Get("X-Request-Id")
	if p.Detail != "internal error; request id "+id {
		t.Errorf("detail: got %q, want only the request id", p.Detail)
	}
	line := logLine(t, ta.logs.String(), id)
	if line["level"] != "ERROR" || !strings.Contains(line["error"].(string), "database is closed") {
		t.Errorf("log line: got %v, want level ERROR with the cause", line)
	}
	ta.do("GET", "/readyz", nil).must(t, http.StatusServiceUnavailable).problem(t)
	ta.do("GET", "/healthz", nil).must(t, http.StatusOK)
}

// The OpenAPI document describes exactly the routes the server has.
func TestAPIOpenAPIMatchesRoutes(t *testing.T) {
	ta := newTestApp(t, nil)
	r := ta.do("GET", "/openapi.yaml", nil).must(t, http.StatusOK)
	if ct := r.header.Get("Content-Type"); ct != "application/yaml" {
		t.Errorf("Content-Type: got %q, want application/yaml", ct)
	}
	if !bytes.Equal(r.body, openapiYAML) {
		t.Fatal("served document differs from openapi.yaml")
	}
	documented, docScopes := openapiOperations(string(openapiYAML))
	var served []string
	for _, rt := range ta.server.routeTable() {
		served = append(served, rt.pattern)
		if rt.scope != "" && !slices.Contains(docScopes[rt.pattern], rt.scope) {
			t.Errorf("%s: the document's security %v lacks scope %s", rt.pattern, docScopes[rt.pattern], rt.scope)
		}
	}
	if len(documented) < 19 {
		t.Fatalf("found %d operations in the document, want at least 19: %v", len(documented), documented)
	}
	sort.Strings(documented)
	sort.Strings(served)
	if !slices.Equal(documented, served) {
		t.Errorf("routes differ:\n served:     %v\n documented: %v", served, documented)
	}
}

func TestRequestIDShape(t *testing.T) {
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(requestID("")) {
		t.Error("a generated id is not 32 hex digits")
	}
}

// openapiOperations lists the document's "METHOD /path" operations and the
// scopes each one's security requirements name. It reads the document's
// layout (paths at two spaces, methods at four) rather than pulling in a YAML
// library for one test.
func openapiOperations(doc string) (ops []string, scopes map[string][]string) {
	scopes = map[string][]string{}
	inPaths := false
	path, op := "", ""
	scopeRE := regexp.MustCompile(`^        - \w+: \[(.*)\]$`)
	for _, line := range strings.Split(doc, "\n") {
		switch {
		case line == "paths:":
			inPaths = true
		case inPaths && line != "" && !strings.HasPrefix(line, " "):
			inPaths = false
		case !inPaths:
		case strings.HasPrefix(line, "  /") && strings.HasSuffix(line, ":"):
			path, op = strings.TrimSuffix(strings.TrimSpace(line), ":"), ""
		case strings.HasPrefix(line, "    ") && !strings.HasPrefix(line, "     "):
			method := strings.TrimSuffix(strings.TrimSpace(line), ":")
			op = ""
			if slices.Contains([]string{"get", "post", "put", "patch", "delete"}, method) {
				op = strings.ToUpper(method) + " " + path
				ops = append(ops, op)
			}
		case op != "" && scopeRE.MatchString(line):
			for _, sc := range strings.Split(scopeRE.FindStringSubmatch(line)[1], ",") {
				scopes[op] = append(scopes[op], strings.Trim(strings.TrimSpace(sc), "'\""))
			}
		}
	}
	return ops, scopes
}
