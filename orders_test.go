package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

func TestOrdersCreate(t *testing.T) {
	ta := newTestApp(t, nil)
	c := ta.createCustomer("CUST-0007", "+254712345678", ptr("amina@example.com"))

	t.Run("by id with defaults", func(t *testing.T) {
		before := time.Now().UTC().Add(-time.Second)
		r := ta.do("POST", "/v1/orders", map[string]any{"customer_id": c.ID, "item": "whole-exome-sequencing", "amount": "1250.00"}).must(t, http.StatusCreated)
		var o order
		r.json(t, &o)
		equal(t, "Location", r.header.Get("Location"), fmt.Sprintf("/v1/orders/%d", o.ID))
		if o.CustomerID != c.ID || o.Item != "whole-exome-sequencing" || o.Amount != 125000 || o.Currency != "KES" || o.CreatedBy != "staff-1" {
			t.Errorf("order: got %+v", o)
		}
		if o.Time.Before(before) || o.Time.After(time.Now().Add(time.Second)) || o.Time.Location() != time.UTC {
			t.Errorf("time: got %v, want now in UTC", o.Time)
		}
		contains(t, "the order, its amount a two-place string", string(r.body), `"amount":"1250.00"`)
		if o.Notification == nil || o.Notification.Channel != "sms" || o.Notification.Status != "pending" {
			t.Errorf("notification: got %+v, want pending sms", o.Notification)
		}
		if again := ta.getOrder(o.ID); again.Time != o.Time || again.Amount != o.Amount || again.Notification == nil ||
			again.Notification.Attempts != 0 || again.Notification.SentAt != nil || again.Notification.LastError != nil {
			t.Errorf("read back: got %+v, want %+v", again, o)
		}
	})

	t.Run("by code with everything", func(t *testing.T) {
		o := ta.place(map[string]any{
			"customer_code": "CUST-0007", "item": "panel", "amount": 3.4, "currency": "USD",
			"time": "2026-11-21T12:30:00.123456789+03:00", "channel": "email",
		})
		if o.CustomerID != c.ID || o.Amount != 340 || o.Currency != "USD" || o.Notification.Channel != "email" {
			t.Errorf("order: got %+v", o)
		}
		if want := time.Date(2026, 11, 21, 9, 30, 0, 123456000, time.UTC); !o.Time.Equal(want) || o.Time.Location() != time.UTC {
			t.Errorf("time: got %v, want %v in UTC, to the microsecond", o.Time, want)
		}
	})

	t.Run("channel none", func(t *testing.T) {
		r := ta.do("POST", "/v1/orders", map[string]any{"customer_id": c.ID, "item": "x", "amount": 0, "channel": "none"}).must(t, http.StatusCreated)
		contains(t, "body", string(r.body), `"notification":null`)
	})

	t.Run("the edges of the time range", func(t *testing.T) {
		for _, tm := range []string{"1900-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "1900-01-01T01:00:00+01:00"} {
			ta.place(map[string]any{"customer_id": c.ID, "item": "x", "amount": "1", "time": tm})
		}
	})

	plain := ta.createCustomer("PLAIN", "+254712345670", nil)
	last := ta.place(map[string]any{"customer_id": c.ID, "item": "x", "amount": "1"})
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
		{"amount wrong type", map[string]any{"customer_id": c.ID, "item": "x", "amount": true}, []string{"#/amount"}, "decimal"},
		{"missing amount and item", map[string]any{"customer_id": c.ID}, []string{"#/item", "#/amount"}, "2 problems"},
		{"no customer", map[string]any{"item": "x", "amount": "1"}, []string{"#/customer_id"}, "customer_code"},
		{"both references", map[string]any{"customer_id": c.ID, "customer_code": "CUST-0007", "item": "x", "amount": "1"}, []string{"#/customer_code"}, "not be given together"},
		{"unknown customer id", map[string]any{"customer_id": 99999, "item": "x", "amount": "1"}, []string{"#/customer_id"}, "must name a customer; none has id 99999"},
		{"unknown customer code", map[string]any{"customer_code": "NOPE", "item": "x", "amount": "1"}, []string{"#/customer_code"}, `must name a customer; none has code "NOPE"`},
		{"unknown customer and a bad field", map[string]any{"customer_code": "NOPE", "item": "", "amount": "1"}, []string{"#/item", "#/customer_code"}, "2 problems"},
		{"bad currency", map[string]any{"customer_id": c.ID, "item": "x", "amount": "1", "currency": "shilling"}, []string{"#/currency"}, "ISO 4217"},
		{"bad time", map[string]any{"customer_id": c.ID, "item": "x", "amount": "1", "time": "yesterday"}, []string{"#/time"}, "RFC 3339"},
		{"past year 9999 in UTC", map[string]any{"customer_id": c.ID, "item": "x", "amount": "1", "time": "9999-12-31T23:59:59-23:59"}, []string{"#/time"}, "9999-12-31"},
		{"before year 1 in UTC", map[string]any{"customer_id": c.ID, "item": "x", "amount": "1", "time": "0000-01-01T00:00:00+23:59"}, []string{"#/time"}, "1900-01-01"},
		{"before 1900", map[string]any{"customer_id": c.ID, "item": "x", "amount": "1", "time": "1899-12-31T23:59:59Z"}, []string{"#/time"}, "1900-01-01"},
		{"bad channel", map[string]any{"customer_id": c.ID, "item": "x", "amount": "1", "channel": "pigeon"}, []string{"#/channel"}, "email, sms, none"},
		{"email override without e-mail", map[string]any{"customer_id": plain.ID, "item": "x", "amount": "1", "channel": "email"}, []string{"#/channel"}, "no email"},
		{"long item", map[string]any{"customer_id": c.ID, "item": strings.Repeat("i", 201), "amount": "1"}, []string{"#/item"}, "200"},
		{"zero id", map[string]any{"customer_id": 0, "item": "x", "amount": "1"}, []string{"#/customer_id"}, "positive"},
		{"NUL in item and currency, kept from the store that is still asked for the customer", map[string]any{"customer_code": "NOPE", "item": "a\u0000b", "amount": "1", "currency": "K\u0000S"},
			[]string{"#/item", "#/currency", "#/customer_code"}, "3 problems"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := ta.do("POST", "/v1/orders", tc.body).must(t, http.StatusUnprocessableEntity).problem(t)
			checkPointers(t, p, tc.pointers...)
			if !strings.Contains(p.Detail, tc.detail) && !strings.Contains(p.Errors[0].Detail, tc.detail) {
				t.Errorf("detail: got %q / %q, want %q", p.Detail, p.Errors[0].Detail, tc.detail)
			}
		})
	}
	// Malformed bodies are TestAPIBodyErrors's; an integer member is the orders'.
	p := ta.do("POST", "/v1/orders", `{"customer_id":"7","item":"x","amount":"1"}`).must(t, http.StatusBadRequest).problem(t)
	if p.Detail != `customer_id must be a JSON number, not string` || len(p.Errors) != 1 || p.Errors[0].Pointer != "#/customer_id" {
		t.Errorf("customer_id as a string: got %q %+v, want a JSON number at #/customer_id", p.Detail, p.Errors)
	}
	equal(t, "orders after the refused ones", ta.count("orders"), orders)
	equal(t, "notifications after the refused orders", ta.count("notifications"), notifications)
	// Nor did they take order ids: the next order's id follows the last one's.
	equal(t, "the next order id", ta.place(map[string]any{"customer_id": c.ID, "item": "x", "amount": "1"}).ID, last.ID+1)
}

// statementCounter counts the statements a connection sends.
type statementCounter struct{ n atomic.Int64 }

func (c *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// Placing an order takes one statement, with or without an Idempotency-Key,
// for a single order and for an import alike; only a replay takes more.
func TestOrdersPlacedInOneStatement(t *testing.T) {
	ta := newTestApp(t, nil)
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	cfg, err := pgxpool.ParseConfig(ta.cfg.databaseURL)
	fatalIf(t, err)
	counter := &statementCounter{}
	cfg.ConnConfig.Tracer = counter
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	fatalIf(t, err)
	traced := *ta.server
	traced.store = &store{db: stdlib.OpenDBFromPool(pool), pool: pool}
	defer traced.store.close()
	srv := httptest.NewServer(traced.routes())
	defer srv.Close()
	via := *ta // the app, served on the traced connections
	via.url = srv.URL
	body := fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00"}`, c.ID)
	for _, tc := range []struct {
		name, path, body, key string
		want                  int64
	}{
		{"no key", "/v1/orders", body, "", 1},
		{"a new key", "/v1/orders", body, "key-1", 1},
		{"a replay reads the first order", "/v1/orders", body, "key-1", 3},
		{"an import of three", "/v1/orders/import", "[" + body + "," + body + "," + body + "]", "", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			headers := map[string]string{"Authorization": "Bearer " + ta.token}
			if tc.key != "" {
				headers["Idempotency-Key"] = tc.key
			}
			before := counter.n.Load()
			via.request("POST", tc.path, tc.body, "application/json", headers).must(t, http.StatusCreated)
			equal(t, "statements", counter.n.Load()-before, tc.want)
		})
	}
}

func TestOrdersListAndFilters(t *testing.T) {
	ta := newTestApp(t, nil)
	a := ta.createCustomer("A", "+254712345678", nil)
	b := ta.createCustomer("B", "+254712345679", nil)
	for i, cust := range []customer{a, b, a, b, a} {
		ta.place(map[string]any{"customer_id": cust.ID, "item": fmt.Sprint("item-", i), "amount": "1", "time": fmt.Sprintf("2026-01-0%dT00:00:00Z", i+1)})
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
	for _, tc := range []struct{ path, want string }{
		{"/v1/orders", "item-4,item-3,item-2,item-1,item-0"},
		{fmt.Sprintf("/v1/orders?customer_id=%d", a.ID), "item-4,item-2,item-0"},
		{"/v1/orders?customer_code=B", "item-3,item-1"},
		{fmt.Sprintf("/v1/orders?customer_code=B&customer_id=%d", b.ID), "item-3,item-1"},
		{fmt.Sprintf("/v1/orders?customer_code=B&customer_id=%d", a.ID), ""},
		{"/v1/orders?customer_code=NOBODY", ""},
	} {
		equal(t, tc.path, items(tc.path), tc.want)
	}
	for _, path := range []string{"/v1/orders?customer_id=abc", "/v1/orders?customer_id=0", "/v1/orders?customer_code=bad%20code"} {
		p := ta.do("GET", path, nil).must(t, http.StatusUnprocessableEntity).problem(t)
		if len(p.Errors) != 1 || p.Errors[0].Parameter == "" {
			t.Errorf("%s: errors %+v, want one naming the parameter", path, p.Errors)
		}
	}
	ta.do("GET", "/v1/orders/999", nil).must(t, http.StatusNotFound).problem(t)

	// A stored time that RFC 3339 cannot show (written before the range was
	// enforced) is a logged 500, never a 200 with an empty body.
	ta.exec(`UPDATE orders SET time = '10000-01-01' WHERE item = 'item-0'`)
	for _, path := range []string{"/v1/orders", fmt.Sprint("/v1/customers/", a.ID), "/v1/customers"} {
		r := ta.do("GET", path, nil).must(t, http.StatusInternalServerError)
		contains(t, path+": the logged error", fmt.Sprint(ta.requestLog(r.header.Get("X-Request-Id"))["error"]), "encoding the response")
	}
}

func TestOrdersImport(t *testing.T) {
	ta := newTestApp(t, nil)
	a := ta.createCustomer("A", "+254712345678", ptr("a@example.com"))
	ta.createCustomer("B", "+254712345679", nil)
	csvImport := func(query, body string) response { return ta.send("POST", "/v1/orders/import"+query, body, "text/csv") }

	var res importResult
	csvImport("", "customer_code,item,amount\nA,kit,12.50\nB,panel,3\n").must(t, http.StatusCreated).json(t, &res)
	mustEqual(t, "imported", res.Imported, 2)
	mustEqual(t, "notifications", ta.count("notifications"), 2)
	if o := ta.getOrder(res.IDs[0]); o.CustomerID != a.ID || o.Item != "kit" || o.Amount != 1250 {
		t.Errorf("first imported order: got %+v", o)
	}
	csvImport("?notify=false", "customer_id,item,amount,currency,time,channel\n"+fmt.Sprint(a.ID)+",kit,1,USD,2026-01-01T00:00:00Z,email\n").must(t, http.StatusCreated).json(t, &res)
	equal(t, "notifications after an import with notify=false", ta.count("notifications"), 2)
	ta.do("POST", "/v1/orders/import", []map[string]any{{"customer_code": "A", "item": "j", "amount": 2}}).must(t, http.StatusCreated)
	equal(t, "orders after the JSON import", ta.count("orders"), 4)
	equal(t, "notifications after the JSON import", ta.count("notifications"), 3)

	before := ta.count("orders")
	p := csvImport("", "customer_code,item,amount,time\nA,kit,1,\nNOPE,kit,1,\nB,kit,-1,\nB,kit,1,10000-01-01T00:00:00Z\nB,,x,\n").must(t, http.StatusUnprocessableEntity).problem(t)
	var details []string
	for _, e := range p.Errors {
		details = append(details, e.Detail)
	}
	want := []string{`row 2: customer_code must name a customer; none has code "NOPE"`, "row 3: amount must not be negative", "row 4: time must be",
		"row 5: item", "row 5: amount"}
	if len(details) != len(want) || p.Errors[0].Row != 2 || p.Errors[0].Field != "customer_code" {
		t.Errorf("errors: got %q, want %d in row order", details, len(want))
	}
	for i, w := range want {
		if i < len(details) && !strings.HasPrefix(details[i], w) {
			t.Errorf("error %d: got %q, want %q", i, details[i], w)
		}
	}
	p = ta.do("POST", "/v1/orders/import", []map[string]any{{"customer_code": "A", "item": "j", "amount": 2}, {"customer_id": 4242, "item": "j", "amount": 2}}).must(t, http.StatusUnprocessableEntity).problem(t)
	checkPointers(t, p, "#/1/customer_id")
	csvImport("?notify=maybe", "customer_code,item,amount\nA,kit,1\n").must(t, http.StatusUnprocessableEntity).problem(t)
	csvImport("", "customer_id,item,amount\nabc,kit,1\n").must(t, http.StatusUnprocessableEntity).problem(t)
	equal(t, "orders after refused imports", ta.count("orders"), before)
}
