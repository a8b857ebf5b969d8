package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestCustomersCreateGetPatchDelete(t *testing.T) {
	ta := newTestApp(t, nil)
	r := ta.do("POST", "/v1/customers", map[string]any{
		"code": "CUST-0007", "name": "Amina Njoroge", "phone": "+254712345678", "email": "amina@example.com",
	}).must(t, http.StatusCreated)
	var c customer
	r.json(t, &c)
	equal(t, "Location", r.header.Get("Location"), fmt.Sprintf("/v1/customers/%d", c.ID))
	if c.Code != "CUST-0007" || c.Name != "Amina Njoroge" || c.Phone != "+254712345678" || c.Email == nil || *c.Email != "amina@example.com" || c.CreatedBy != "staff-1" {
		t.Errorf("created: got %+v", c)
	}
	if time.Since(c.CreatedAt) > time.Minute || c.CreatedAt.Location() != time.UTC {
		t.Errorf("created_at: got %v, want now in UTC", c.CreatedAt)
	}
	contains(t, "a new customer", string(r.body), `"orders":[]`)

	var got customer
	ta.do("GET", r.header.Get("Location"), nil).must(t, http.StatusOK).json(t, &got)
	equal(t, "id read back", got.ID, c.ID)
	equal(t, "code read back", got.Code, c.Code)

	t.Run("duplicate code", func(t *testing.T) {
		r := ta.do("POST", "/v1/customers", map[string]any{"code": "CUST-0007", "name": "Other", "phone": "+254700000000"})
		p := r.must(t, http.StatusConflict).problem(t)
		contains(t, "detail", p.Detail, "CUST-0007")
	})

	t.Run("patch", func(t *testing.T) {
		var p customer
		ta.do("PATCH", r.header.Get("Location"), map[string]any{"name": "Amina W. Njoroge", "phone": "+254700000001"}).must(t, http.StatusOK).json(t, &p)
		if p.Name != "Amina W. Njoroge" || p.Phone != "+254700000001" || p.Email == nil || p.Code != "CUST-0007" {
			t.Errorf("after patch: got %+v", p)
		}
		ta.do("PATCH", r.header.Get("Location"), map[string]any{"email": nil}).must(t, http.StatusOK).json(t, &p)
		equal(t, "e-mail after email: null", p.Email, nil)
		equal(t, "name after email: null, which clears only the e-mail", p.Name, "Amina W. Njoroge")
		ta.do("PATCH", r.header.Get("Location"), map[string]any{"email": "a@example.org"}).must(t, http.StatusOK).json(t, &p)
		if p.Email == nil || *p.Email != "a@example.org" {
			t.Errorf("email: got %v", p.Email)
		}
	})

	t.Run("patch refusals change nothing", func(t *testing.T) {
		cases := []struct {
			body     any
			status   int
			pointers []string
		}{
			{map[string]any{}, 422, []string{"#"}},
			{map[string]any{"name": "", "phone": "0712345678", "email": "nope"}, 422, []string{"#/name", "#/phone", "#/email"}},
			{map[string]any{"name": nil}, 422, []string{"#/name"}},
			{map[string]any{"code": "NEW"}, 400, []string{"#/code"}},
		}
		for _, tc := range cases {
			p := ta.do("PATCH", r.header.Get("Location"), tc.body).must(t, tc.status).problem(t)
			checkPointers(t, p, tc.pointers...)
		}
		var now customer
		ta.do("GET", r.header.Get("Location"), nil).must(t, http.StatusOK).json(t, &now)
		equal(t, "name after the refused patches", now.Name, "Amina W. Njoroge")
		equal(t, "phone after the refused patches", now.Phone, "+254700000001")
		ta.do("PATCH", "/v1/customers/99999", map[string]any{"name": "X"}).must(t, http.StatusNotFound).problem(t)
	})

	t.Run("delete", func(t *testing.T) {
		ta.do("DELETE", r.header.Get("Location"), nil).must(t, http.StatusNoContent)
		ta.do("GET", r.header.Get("Location"), nil).must(t, http.StatusNotFound)
		ta.do("DELETE", r.header.Get("Location"), nil).must(t, http.StatusNotFound)
	})
}

// checkPointers fails unless the problem names exactly these JSON pointers,
// each with a detail, a phone's with an example of the right form.
func checkPointers(t *testing.T, p problem, pointers ...string) {
	t.Helper()
	var got []string
	for _, e := range p.Errors {
		if e.Detail == "" || e.Pointer == "#/phone" && !strings.Contains(e.Detail, "+254712345678") {
			t.Errorf("error at %s: detail %q, want one, with an example for a phone", e.Pointer, e.Detail)
		}
		got = append(got, e.Pointer)
	}
	equal(t, fmt.Sprintf("pointers (problem %+v)", p), strings.Join(got, " "), strings.Join(pointers, " "))
}

// refusal is a body that a create answers with a 422 naming pointers.
type refusal struct {
	name     string
	body     map[string]any
	pointers []string
}

// checkRefusals posts each refusal's body to path and checks its 422.
func checkRefusals(t *testing.T, ta *testApp, path string, refusals []refusal) {
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			checkPointers(t, ta.do("POST", path, tc.body).must(t, http.StatusUnprocessableEntity).problem(t), tc.pointers...)
		})
	}
}

func TestCustomersValidation(t *testing.T) {
	ta := newTestApp(t, nil)
	checkRefusals(t, ta, "/v1/customers", []refusal{
		{"everything wrong", map[string]any{"code": "bad code!", "name": "  ", "phone": "0712 345 678", "email": "not-an-email"}, []string{"#/code", "#/name", "#/phone", "#/email"}},
		{"missing all", map[string]any{}, []string{"#/code", "#/name", "#/phone"}},
		{"code too long", map[string]any{"code": strings.Repeat("A", 33), "name": "A", "phone": "+254712345678"}, []string{"#/code"}},
		{"name too long", map[string]any{"code": "A", "name": strings.Repeat("n", 201), "phone": "+254712345678"}, []string{"#/name"}},
		{"control characters", map[string]any{"code": "A", "name": "Amina\nNjoroge", "phone": "+254712345678"}, []string{"#/name"}},
		{"zero-width characters only", map[string]any{"code": "A", "name": "\u200b\u200c\u2060", "phone": "+254712345678"}, []string{"#/name"}},
		{"bidi override", map[string]any{"code": "A", "name": "Amina \u202egnirojN", "phone": "+254712345678"}, []string{"#/name"}},
		{"line separator", map[string]any{"code": "A", "name": "Amina\u2028Njoroge", "phone": "+254712345678"}, []string{"#/name"}},
		{"non-ASCII code", map[string]any{"code": "CÜST", "name": "A", "phone": "+254712345678"}, []string{"#/code"}},
		{"non-ASCII e-mail", map[string]any{"code": "A", "name": "A", "phone": "+254712345678", "email": "amina@exämple.com"}, []string{"#/email"}},
		{"phone without plus", map[string]any{"code": "A", "name": "A", "phone": "254712345678"}, []string{"#/phone"}},
		{"phone too short", map[string]any{"code": "A", "name": "A", "phone": "+2547123"}, []string{"#/phone"}},
		{"phone too long", map[string]any{"code": "A", "name": "A", "phone": "+2547123456789012"}, []string{"#/phone"}},
		{"display-name e-mail", map[string]any{"code": "A", "name": "A", "phone": "+254712345678", "email": "Amina <a@example.com>"}, []string{"#/email"}},
	})
	equal(t, "customers after refused creates", ta.count("customers"), 0)
	// The shortest and longest E.164 numbers, an empty e-mail and names in
	// scripts that join with zero-width characters are fine.
	ta.createCustomer("MIN", "+25471234", nil)
	ta.createCustomer("MAX", "+254712345678901", ptr(""))
	ta.do("POST", "/v1/customers", map[string]any{"code": "FA", "name": "می\u200cخواهم", "phone": "+254712345678"}).must(t, http.StatusCreated)
}

func TestCustomersCarryTheirNewestOrders(t *testing.T) {
	ta := newTestApp(t, nil)
	a := ta.createCustomer("A", "+254712345678", nil)
	b := ta.createCustomer("B", "+254712345679", nil)
	for _, tm := range []string{"2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z", "2026-02-01T00:00:00Z"} {
		ta.place(map[string]any{"customer_id": a.ID, "item": "kit", "amount": "1.00", "time": tm})
	}
	var got customer
	ta.do("GET", fmt.Sprintf("/v1/customers/%d", a.ID), nil).must(t, http.StatusOK).json(t, &got)
	mustEqual(t, "orders", len(got.Orders), 3)
	mustEqual(t, "more_orders", got.MoreOrders, nil)
	for i, want := range []string{"2026-03-01T00:00:00Z", "2026-02-01T00:00:00Z", "2026-01-01T00:00:00Z"} {
		equal(t, fmt.Sprint("order ", i, " time"), got.Orders[i].Time.Format(time.RFC3339), want)
	}
	var page listPage[customer]
	ta.do("GET", "/v1/customers", nil).must(t, http.StatusOK).json(t, &page)
	if len(page.Data) != 2 || len(page.Data[0].Orders) != 3 || len(page.Data[1].Orders) != 0 || page.Data[1].ID != b.ID {
		t.Errorf("list: got %+v", page.Data)
	}
	p := ta.do("DELETE", fmt.Sprintf("/v1/customers/%d", a.ID), nil).must(t, http.StatusConflict).problem(t)
	contains(t, "refused delete", p.Detail, "has orders")
	equal(t, "customers after the refused delete", ta.count("customers"), 2)

	// Past embeddedOrders, the newest are embedded and more_orders lists the
	// rest, exactly.
	ta.importOrders("B", embeddedOrders+7, false)
	r := ta.do("GET", fmt.Sprintf("/v1/customers/%d", b.ID), nil).must(t, http.StatusOK)
	var one customer
	r.json(t, &one)
	ta.do("GET", "/v1/customers?after="+cursor{Kind: 'c', ID: a.ID}.encode(), nil).must(t, http.StatusOK).json(t, &page)
	contains(t, "more_orders, in plain JSON", string(r.body), `&after=`)
	for path, c := range map[string]customer{"get": one, "list": page.Data[0]} {
		if len(c.Orders) != embeddedOrders || c.MoreOrders == nil {
			t.Fatalf("%s: got %d orders and more_orders %v, want %d and a link", path, len(c.Orders), c.MoreOrders, embeddedOrders)
		}
		rest := walk(t, ta, *c.MoreOrders, func(o order) int64 { return o.ID })
		seen := map[int64]bool{}
		for _, o := range c.Orders {
			seen[o.ID] = true
		}
		for _, id := range rest {
			if seen[id] {
				t.Errorf("%s: order %d both embedded and in more_orders", path, id)
			}
			seen[id] = true
		}
		equal(t, path+": embedded and linked orders", len(seen), embeddedOrders+7)
		equal(t, path+": linked orders", len(rest), 7)
	}
}

func TestCustomersImport(t *testing.T) {
	ta := newTestApp(t, nil)
	importCSV := func(body string) response { return ta.send("POST", "/v1/customers/import", body, "text/csv") }

	t.Run("json", func(t *testing.T) {
		var res importResult
		ta.do("POST", "/v1/customers/import", []map[string]any{
			{"code": "J-1", "name": "One", "phone": "+254700000001"},
			{"code": "J-2", "name": "Two", "phone": "+254700000002", "email": "two@example.com"},
		}).must(t, http.StatusCreated).json(t, &res)
		mustEqual(t, "imported", res.Imported, 2)
		mustEqual(t, "ids", len(res.IDs), 2)
		var c customer
		ta.do("GET", fmt.Sprintf("/v1/customers/%d", res.IDs[1]), nil).must(t, http.StatusOK).json(t, &c)
		if c.Code != "J-2" || c.Email == nil || c.CreatedBy != "staff-1" {
			t.Errorf("ids are not in input order: got %+v for the second id", c)
		}
	})

	t.Run("csv", func(t *testing.T) {
		var res importResult
		importCSV("\ufeffCode, Name,phone,email\r\nC-1,\"Njoroge, Amina\",+254700000011,\nC-2,Baraka,+254700000012,b@example.com\n").must(t, http.StatusCreated).json(t, &res)
		var c customer
		ta.do("GET", fmt.Sprintf("/v1/customers/%d", res.IDs[0]), nil).must(t, http.StatusOK).json(t, &c)
		if res.Imported != 2 || c.Name != "Njoroge, Amina" || c.Email != nil {
			t.Errorf("got %+v and %+v", res, c)
		}
	})

	// Everything refused below must leave the table as it is.
	before := ta.count("customers")
	t.Run("json bad rows named", func(t *testing.T) {
		rows := []map[string]any{
			{"code": "OK-1", "name": "Fine", "phone": "+254700000021"},
			{"code": "OK-2", "name": "", "phone": "+254700000022"},
			{"code": "OK-3", "name": "Fine", "phone": "+254700000023"},
			{"code": "OK-4", "name": "Fine", "phone": "0700000024", "email": "x"},
			{"code": "OK-1", "name": "Again", "phone": "+254700000025"},
			{"code": "bad code", "name": "Fine", "phone": "+254700000026"},
			{"code": "bad code", "name": "Fine", "phone": "+254700000027"}, // a bad code is not also a repeat
		}
		p := ta.do("POST", "/v1/customers/import", rows).must(t, http.StatusUnprocessableEntity).problem(t)
		checkPointers(t, p, "#/1/name", "#/3/phone", "#/3/email", "#/4/code", "#/5/code", "#/6/code")
	})
	t.Run("csv bad rows named", func(t *testing.T) {
		p := importCSV("code,name,phone\nR-1,Fine,+254700000031\nR-2,Fine,0700\nR-3,,+254700000033\nR-4,Fine,+254700000034\n").must(t, http.StatusUnprocessableEntity).problem(t)
		if len(p.Errors) != 2 || p.Errors[0].Detail != "row 2: phone "+e164Example || p.Errors[0].Row != 2 || p.Errors[0].Field != "phone" ||
			!strings.HasPrefix(p.Errors[1].Detail, "row 3: name ") {
			t.Errorf("errors: got %+v", p.Errors)
		}
	})
	refusals := []struct {
		name, body, contentType string
		status                  int
		detail                  string
		pointers                []string // when set, the problem's exact pointers
	}{
		{"existing code conflicts", "code,name,phone\nNEW-1,Fine,+254700000041\nJ-1,Taken,+254700000042\n", "text/csv", 409, "J-1", nil},
		{"unknown column", "code,name,phone,age\nX,Y,+254700000051,3\n", "text/csv", 400, `unknown CSV column "age"`, nil},
		{"repeated column", "code,name,name\nX,Y,Z\n", "text/csv", 400, "appears twice", nil},
		{"ragged row", "code,name,phone\nX,Y\n", "text/csv", 400, "line 2", nil},
		{"a line over 64 KiB", "code,name,phone\nX,\"" + strings.Repeat("n", 70<<10), "text/csv", 400, "longer than 64 KiB", nil},
		{"bad quoting", "code,name,phone\n\"X,Y,+254700000051\n", "text/csv", 400, "malformed CSV", nil},
		{"no header", "", "text/csv", 400, "header row", nil},
		{"header only", "code,name,phone\n", "text/csv", 422, "at least one row", nil},
		{"empty array", "[]", "application/json", 422, "at least one row", nil},
		{"not an array", `{"code":"X"}`, "application/json", 400, "array", nil},
		{"unknown field in element", `[{"code":"X","name":"Y","phone":"+254700000051"},{"code":"Z","nick":"n"}]`, "application/json", 400, "element 1", []string{"#/1/nick"}},
		{"member twice in element", `[{"code":"X","name":"Y","phone":"+254700000051","code":"Z"}]`, "application/json", 400, `element 0: "code" appears twice`, nil},
		{"invalid UTF-8 in element", "[{\"code\":\"X\",\"name\":\"Y\xff\",\"phone\":\"+254700000051\"}]", "application/json", 400, "not valid UTF-8", nil},
		{"invalid UTF-8 in CSV", "code,name,phone\nX,Y\xff,+254700000051\n", "text/csv", 422, "row 1: name", nil},
		{"xml", "<a/>", "application/xml", 415, "text/csv", nil},
		{"over 32 MiB", "code,name,phone\n" + strings.Repeat("X,"+strings.Repeat("n", 1000)+",+254700000051\n", 33*1024), "text/csv", 413, "", nil},
		{"over the row limit", "code,name,phone\n" + strings.Repeat("X,Y,+254700000051\n", maxImportRows+1), "text/csv", 413, "10000 rows", nil},
		{"over the row limit in JSON", "[" + strings.Repeat("{},", maxImportRows) + "{}]", "application/json", 413, "", nil},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			p := ta.send("POST", "/v1/customers/import", tc.body, tc.contentType).must(t, tc.status).problem(t)
			contains(t, "detail", p.Detail, tc.detail)
			if tc.pointers != nil {
				checkPointers(t, p, tc.pointers...)
			}
		})
	}
	equal(t, "customers after refused imports", ta.count("customers"), before)
	t.Run("errors are capped and counted", func(t *testing.T) {
		p := ta.do("POST", "/v1/customers/import", "["+strings.Repeat("{},", maxImportRows-1)+"{}]").must(t, http.StatusUnprocessableEntity).problem(t)
		if len(p.Errors) != maxFieldErrors || p.Detail != "30000 problems; the first 100 are listed" || p.Errors[99].Pointer != "#/33/code" {
			t.Errorf("got %d errors, the last at %s, and %q; want 100, the last at #/33/code, and the total", len(p.Errors), p.Errors[len(p.Errors)-1].Pointer, p.Detail)
		}
	})
	t.Run("too many at once", func(t *testing.T) {
		for range maxImports {
			ta.server.imports <- struct{}{}
		}
		r := importCSV("code,name,phone\nBUSY,Y,+254700000051\n").must(t, http.StatusServiceUnavailable)
		if r.problem(t); r.header.Get("Retry-After") == "" {
			t.Error("a refused import has no Retry-After")
		}
		for range maxImports {
			<-ta.server.imports
		}
		importCSV("code,name,phone\nBUSY,Y,+254700000051\n").must(t, http.StatusCreated)
	})
}
