package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestOrdersCreate(t *testing.T) {
	ta := newTestApp(t, nil)
	c := ta.createCustomer("CUST-0007", "+254712345678", ptr("amina@example.com"))

	t.Run("by id with defaults", func(t *testing.T) {
		before := time.Now().UTC().Add(-time.Second)
		r := ta.do("POST", "/v1/orders", map[string]any{"customer_id": c.ID, "item": "whole-exome-sequencing", "amount": "1250.00"}).must(t, http.StatusCreated)
		var o order
		r.json(t, &o)
		if r.header.Get("Location") != fmt.Sprintf("/v1/orders/%d", o.ID) {
			t.Errorf("Location: got %q", r.header.Get("Location"))
		}
		if o.CustomerID != c.ID || o.Item != "whole-exome-sequencing" || o.Amount != 125000 || o.Currency != "KES" || o.CreatedBy != "staff-1" {
			t.Errorf("order: got %+v", o)
		}
		if o.Time.Before(before) || o.Time.After(time.Now().Add(time.Second)) || o.Time.Location() != time.UTC {
			t.Errorf("time: got %v, want now in UTC", o.Time)
		}
		if !strings.Contains(string(r.body), `"amount":"1250.00"`) {
			t.Errorf("amount is not a two-place string: %s", r.body)
		}
		if o.Notification == nil || o.Notification.Channel != "sms" || o.Notification.Status != "pending" {
			t.Errorf("notification: got %+v, want pending sms", o.Notification)
		}
		var again order
		ta.do("GET", r.header.Get("Location"), nil).must(t, http.StatusOK).json(t, &again)
		if again.Time != o.Time || again.Amount != o.Amount || again.Notification == nil {
			t.Errorf("read back: got %+v, want %+v", again, o)
		}
	})

	t.Run("by code with everything", func(t *testing.T) {
		var o order
		ta.do("POST", "/v1/orders", map[string]any{
			"customer_code": "CUST-0007", "item": "panel", "amount": 3.4, "currency": "USD",
			"time": "2026-11-21T12:30:00.123456789+03:00", "channel": "email",
		}).must(t, http.StatusCreated).json(t, &o)
		if o.CustomerID != c.ID || o.Amount != 340 || o.Currency != "USD" || o.Notification.Channel != "email" {
			t.Errorf("order: got %+v", o)
		}
		if want := time.Date(2026, 11, 21, 9, 30, 0, 123456000, time.UTC); !o.Time.Equal(want) || o.Time.Location() != time.UTC {
			t.Errorf("time: got %v, want %v in UTC, to the microsecond", o.Time, want)
		}
	})

	t.Run("channel none", func(t *testing.T) {
		r := ta.do("POST", "/v1/orders", map[string]any{"customer_id": c.ID, "item": "x", "amount": 0, "channel": "none"}).must(t, http.StatusCreated)
		if !strings.Contains(string(r.body), `"notification":null`) {
			t.Errorf("body: got %s, want notification null", r.body)
		}
	})

	orders, notifications := ta.count("orders"), ta.count("notifications")
	cases := []struct {
		name     string
		body     map[string]any
		pointers []string
		detail   string
	}{
		{"negative", map[string]any{"customer_id": c.ID, "item": "x", "amount": "-1.00"}, []string{"#/amount"}, "must not be negative"},
		{"three places", map[string]any{"customer_id": c.ID, "item": "x", "amount": "1.005"}, []string{"#/amount"}, "two decimal places"},
		{"too big", map[string]any{"customer_id": c.ID, "item": "x", "amount": "10000000000.00"}, []string{"#/amount"}, "9999999999.99"},
		{"exponent", map[string]any{"customer_id": c.ID, "item": "x", "amount": 1e21}, []string{"#/amount"}, "decimal"},
		{"missing amount and item", map[string]any{"customer_id": c.ID}, []string{"#/item", "#/amount"}, ""},
		{"no customer", map[string]any{"item": "x", "amount": "1"}, []string{"#/customer_id"}, "customer_code"},
		{"both references", map[string]any{"customer_id": c.ID, "customer_code": "CUST-0007", "item": "x", "amount": "1"}, []string{"#/customer_code"}, "not be given together"},
		{"unknown customer id", map[string]any{"customer_id": 99999, "item": "x", "amount": "1"}, []string{"#/customer_id"}, "no customer has id 99999"},
		{"unknown customer code", map[string]any{"customer_code": "NOPE", "item": "x", "amount": "1"}, []string{"#/customer_code"}, `no customer has code "NOPE"`},
		{"bad currency", map[string]any{"customer_id": c.ID, "item": "x", "amount": "1", "currency": "shilling"}, []string{"#/currency"}, "ISO 4217"},
		{"bad time", map[string]any{"customer_id": c.ID, "item": "x", "amount": "1", "time": "yesterday"}, []string{"#/time"}, "RFC 3339"},
		{"bad channel", map[string]any{"customer_id": c.ID, "item": "x", "amount": "1", "channel": "pigeon"}, []string{"#/channel"}, "sms, email, none"},
		{"long item", map[string]any{"customer_id": c.ID, "item": strings.Repeat("i", 201), "amount": "1"}, []string{"#/item"}, "200"},
		{"zero id", map[string]any{"customer_id": 0, "item": "x", "amount": "1"}, []string{"#/customer_id"}, "positive"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := ta.do("POST", "/v1/orders", tc.body).must(t, http.StatusUnprocessableEntity).problem(t)
			checkPointers(t, p, tc.pointers...)
			if !strings.Contains(p.Errors[0].Detail+p.Detail, tc.detail) {
				t.Errorf("detail: got %q / %q, want %q", p.Detail, p.Errors[0].Detail, tc.detail)
			}
		})
	}
	if ta.count("orders") != orders || ta.count("notifications") != notifications {
		t.Errorf("refused orders changed the database")
	}
	t.Run("email override without e-mail", func(t *testing.T) {
		plain := ta.createCustomer("PLAIN", "+254712345670", nil)
		p := ta.do("POST", "/v1/orders", map[string]any{"customer_id": plain.ID, "item": "x", "amount": "1", "channel": "email"}).must(t, http.StatusUnprocessableEntity).problem(t)
		checkPointers(t, p, "#/channel")
		if ta.count("orders") != orders {
			t.Error("the refused order was stored")
		}
	})
	t.Run("amount wrong type", func(t *testing.T) {
		p := ta.do("POST", "/v1/orders", map[string]any{"customer_id": c.ID, "item": "x", "amount": true}).must(t, http.StatusUnprocessableEntity).problem(t)
		checkPointers(t, p, "#/amount")
	})
	t.Run("customer id wrong type", func(t *testing.T) {
		p := ta.do("POST", "/v1/orders", map[string]any{"customer_id": "7", "item": "x", "amount": "1"}).must(t, http.StatusBadRequest).problem(t)
		checkPointers(t, p, "#/customer_id")
	})
}

func TestOrdersListAndFilters(t *testing.T) {
	ta := newTestApp(t, nil)
	a := ta.createCustomer("A", "+254712345678", nil)
	b := ta.createCustomer("B", "+254712345679", nil)
	for i, cust := range []customer{a, b, a, b, a} {
		ta.do("POST", "/v1/orders", map[string]any{"customer_id": cust.ID, "item": fmt.Sprint("item-", i), "amount": "1", "time": fmt.Sprintf("2026-01-0%dT00:00:00Z", i+1)}).must(t, http.StatusCreated)
	}
	items := func(path string) string {
		var page listPage[order]
		ta.do("GET", path, nil).must(t, http.StatusOK).json(t, &page)
		var got []string
		for _, o := range page.Data {
			got = append(got, o.Item)
		}
		return strings.Join(got, ",")
	}
	cases := []struct{ path, want string }{
		{"/v1/orders", "item-4,item-3,item-2,item-1,item-0"},
		{fmt.Sprintf("/v1/orders?customer_id=%d", a.ID), "item-4,item-2,item-0"},
		{"/v1/orders?customer_code=B", "item-3,item-1"},
		{fmt.Sprintf("/v1/orders?customer_code=B&customer_id=%d", b.ID), "item-3,item-1"},
		{fmt.Sprintf("/v1/orders?customer_code=B&customer_id=%d", a.ID), ""},
		{"/v1/orders?customer_code=NOBODY", ""},
	}
	for _, tc := range cases {
		if got := items(tc.path); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.path, got, tc.want)
		}
	}
	for _, path := range []string{"/v1/orders?customer_id=abc", "/v1/orders?customer_id=0", "/v1/orders?customer_code=bad%20code"} {
		p := ta.do("GET", path, nil).must(t, http.StatusUnprocessableEntity).problem(t)
		if len(p.Errors) != 1 || p.Errors[0].Parameter == "" {
			t.Errorf("%s: errors %+v, want one naming the parameter", path, p.Errors)
		}
	}
	var o order
	ta.do("GET", "/v1/orders/1", nil).must(t, http.StatusOK).json(t, &o)
	if o.ID != 1 || o.Notification == nil || o.Notification.Attempts != 0 || o.Notification.SentAt != nil || o.Notification.LastError != nil {
		t.Errorf("get: got %+v", o)
	}
	ta.do("GET", "/v1/orders/999", nil).must(t, http.StatusNotFound).problem(t)
}

func TestOrdersImport(t *testing.T) {
	ta := newTestApp(t, nil)
	auth := map[string]string{"Authorization": "Bearer " + ta.token}
	a := ta.createCustomer("A", "+254712345678", ptr("a@example.com"))
	ta.createCustomer("B", "+254712345679", nil)
	csvImport := func(query, body string) response {
		return ta.request("POST", "/v1/orders/import"+query, body, "text/csv", auth)
	}

	var res importResult
	csvImport("", "customer_code,item,amount\nA,kit,12.50\nB,panel,3\n").must(t, http.StatusCreated).json(t, &res)
	if res.Imported != 2 || ta.count("notifications") != 2 {
		t.Fatalf("got %+v and %d notifications, want 2 and 2", res, ta.count("notifications"))
	}
	var o order
	ta.do("GET", fmt.Sprintf("/v1/orders/%d", res.IDs[0]), nil).must(t, http.StatusOK).json(t, &o)
	if o.CustomerID != a.ID || o.Item != "kit" || o.Amount != 1250 {
		t.Errorf("first imported order: got %+v", o)
	}

	csvImport("?notify=false", "customer_id,item,amount,currency,time,channel\n"+fmt.Sprint(a.ID)+",kit,1,USD,2026-01-01T00:00:00Z,email\n").must(t, http.StatusCreated).json(t, &res)
	if ta.count("notifications") != 2 {
		t.Errorf("notify=false queued a notification")
	}
	ta.do("POST", "/v1/orders/import", []map[string]any{{"customer_code": "A", "item": "j", "amount": 2}}).must(t, http.StatusCreated)
	if ta.count("orders") != 4 || ta.count("notifications") != 3 {
		t.Errorf("after JSON import: %d orders, %d notifications; want 4 and 3", ta.count("orders"), ta.count("notifications"))
	}

	before := ta.count("orders")
	p := csvImport("", "customer_code,item,amount\nA,kit,1\nNOPE,kit,1\nB,kit,-1\nB,kit,1\nB,,x\n").must(t, http.StatusUnprocessableEntity).problem(t)
	var details []string
	for _, e := range p.Errors {
		details = append(details, e.Detail)
	}
	want := []string{`row 2: customer_code no customer has code "NOPE"`, "row 3: amount must not be negative", "row 5: item", "row 5: amount"}
	for _, w := range want {
		if !strings.Contains(strings.Join(details, "|"), w) {
			t.Errorf("errors %q lack %q", details, w)
		}
	}
	if len(p.Errors) != 4 || p.Errors[0].Row != 2 {
		t.Errorf("errors: got %q, want 4 in row order", details)
	}
	// With every row well-formed, the unknown customer alone is reported.
	p = csvImport("", "customer_code,item,amount\nA,kit,1\nNOPE,kit,1\n").must(t, http.StatusUnprocessableEntity).problem(t)
	if len(p.Errors) != 1 || p.Errors[0].Detail != `row 2: customer_code no customer has code "NOPE"` {
		t.Errorf("errors: got %+v", p.Errors)
	}
	p = ta.do("POST", "/v1/orders/import", []map[string]any{{"customer_code": "A", "item": "j", "amount": 2}, {"customer_id": 4242, "item": "j", "amount": 2}}).must(t, http.StatusUnprocessableEntity).problem(t)
	checkPointers(t, p, "#/1/customer_id")
	csvImport("?notify=maybe", "customer_code,item,amount\nA,kit,1\n").must(t, http.StatusUnprocessableEntity).problem(t)
	csvImport("", "customer_id,item,amount\nabc,kit,1\n").must(t, http.StatusUnprocessableEntity).problem(t)
	if ta.count("orders") != before {
		t.Errorf("orders after refused imports: got %d, want %d", ta.count("orders"), before)
	}
}
