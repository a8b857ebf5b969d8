package main

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestCursorRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 21, 9, 30, 0, 123456000, time.UTC)
	for _, c := range []cursor{
		{Kind: 'c', ID: 1},
		{Kind: 'n', ID: 1<<62 + 5},
		{Kind: 'o', Time: at, ID: 42},
		{Kind: 'o', Time: time.Date(1969, 1, 1, 0, 0, 0, 0, time.UTC), ID: 7},
		// The earliest and latest times a stored order can have.
		{Kind: 'o', Time: time.Time{}, ID: 8},
		{Kind: 'o', Time: time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC), ID: 9},
	} {
		got, ok := decodeCursor(c.encode(), c.Kind)
		equal(t, fmt.Sprintf("%+v decodes", c), ok, true)
		equal(t, fmt.Sprintf("%+v decoded", c), got, c)
	}
	// Cursors that are not JSON, of another list, or with an id or a time no
	// stored row could have (one PostgreSQL or RFC 3339 cannot hold).
	raw := func(json string) string { return base64.RawURLEncoding.EncodeToString([]byte(json)) }
	for s, kind := range map[string]byte{"": 'c', "!!": 'c', raw(`{"k":99,"i":-1}`): 'c', raw(`{"k":99,"i":0}`): 'c', raw(`{"k":99,"i":"5"}`): 'c',
		raw(`{"k":120,"i":5}`): 'c', raw(`{"k":99,"t":"2026-11-21T09:30:00Z","i":5}`): 'c', cursor{Kind: 'c', ID: 5}.encode() + "x": 'c',
		cursor{Kind: 'o', Time: at, ID: 5}.encode(): 'c', cursor{Kind: 'c', ID: 5}.encode(): 'o', raw(`{"k":111,"t":"9999-12-31T23:00:00-05:00","i":1}`): 'o',
		raw(`{"k":111,"t":"0000-12-31T23:00:00Z","i":1}`): 'o', raw(`{"k":111,"t":"10000-01-01T00:00:00Z","i":1}`): 'o'} {
		if c, ok := decodeCursor(s, kind); ok {
			t.Errorf("%q: decoded as a cursor of kind %c: %+v", s, kind, c)
		}
	}
}

func TestPageParameters(t *testing.T) {
	ta := newTestApp(t, nil)
	for _, path := range []string{"/v1/customers", "/v1/orders", "/v1/numbers"} {
		for _, q := range []string{"limit=0", "limit=101", "limit=abc", "limit=", "after=garbage", "after=", "limit=-1&after=x"} {
			p := ta.do("GET", path+"?"+q, nil).must(t, http.StatusUnprocessableEntity).problem(t)
			if len(p.Errors) == 0 || p.Errors[0].Parameter == "" {
				t.Errorf("%s?%s: errors %+v, want the parameter named", path, q, p.Errors)
			}
		}
		for _, q := range []string{"limit=1", "limit=100"} {
			ta.do("GET", path+"?"+q, nil).must(t, http.StatusOK)
		}
	}
	// A cursor from one list is refused by another, one out of range too.
	ta.do("GET", "/v1/numbers?after="+cursor{Kind: 'c', ID: 1}.encode(), nil).must(t, http.StatusUnprocessableEntity)
	ta.do("GET", "/v1/orders?after="+base64.RawURLEncoding.EncodeToString([]byte(`{"k":111,"t":"0000-12-31T23:00:00Z","i":1}`)), nil).must(t, http.StatusUnprocessableEntity)
}

// walk follows next_cursor from path and returns the ids in the order served,
// checking the Link header against next_cursor on every page.
func walk[T any](t *testing.T, ta *testApp, path string, id func(T) int64) []int64 {
	t.Helper()
	var ids []int64
	for pages := 0; path != ""; pages++ {
		if pages > 1000 {
			t.Fatal("pagination does not end")
		}
		r := ta.do("GET", path, nil).must(t, http.StatusOK)
		var page listPage[T]
		r.json(t, &page)
		for _, item := range page.Data {
			ids = append(ids, id(item))
		}
		link := r.header.Get("Link")
		if page.NextCursor == nil {
			mustEqual(t, "the last page's Link header", link, "")
			break
		}
		target, isNext := strings.CutSuffix(link, `>; rel="next"`)
		target, bracketed := strings.CutPrefix(target, "<")
		next, err := url.Parse(target)
		if !isNext || !bracketed || err != nil || next.Query().Get("after") != *page.NextCursor {
			t.Fatalf("Link %q does not carry next_cursor %q", link, *page.NextCursor)
		}
		path = next.String()
	}
	return ids
}

// Walking every page of 800 rows serves each row exactly once, in order,
// even when many orders share a time and rows arrive during the walk.
func TestPaginationWalk(t *testing.T) {
	ta := newTestApp(t, nil)
	const n = 800
	ta.exec(`INSERT INTO customers (code, name, phone, created_by)
		SELECT 'P-' || lpad(i::text, 4, '0'), 'Customer', '+2547' || lpad(i::text, 8, '0'), 'seed'
		FROM generate_series(0, $1 - 1) i`, n)
	// Orders in 8 distinct times, so that the id breaks most ties.
	ta.exec(`INSERT INTO orders (customer_id, item, amount, currency, time, created_by)
		SELECT id, 'kit', 1, 'KES', timestamptz '2026-01-01' + (id % 8) * interval '1 hour', 'seed' FROM customers`)

	for _, limit := range []int{1, 7, 20, 100} {
		if limit == 1 && testing.Short() {
			continue
		}
		t.Run(fmt.Sprint("customers limit ", limit), func(t *testing.T) {
			ids := walk(t, ta, fmt.Sprintf("/v1/customers?limit=%d", limit), func(c customer) int64 { return c.ID })
			mustEqual(t, "customers", len(ids), n)
			for i := 1; i < len(ids); i++ {
				if ids[i] <= ids[i-1] {
					t.Fatalf("ids out of order at %d: %d after %d", i, ids[i], ids[i-1])
				}
			}
		})
	}
	// Strictly newest first, by time and then id: so no order is served twice.
	t.Run("orders newest first", func(t *testing.T) {
		var got []order
		walk(t, ta, "/v1/orders?limit=33", func(o order) int64 { got = append(got, o); return o.ID })
		mustEqual(t, "orders", len(got), n)
		for i := 1; i < len(got); i++ {
			o, prev := got[i], got[i-1]
			if o.Time.After(prev.Time) || (o.Time.Equal(prev.Time) && o.ID >= prev.ID) {
				t.Fatalf("order %d (%v) follows %d (%v)", o.ID, o.Time, prev.ID, prev.Time)
			}
		}
	})
	t.Run("rows added during the walk", func(t *testing.T) {
		r := ta.do("GET", "/v1/customers?limit=100", nil).must(t, http.StatusOK)
		var first listPage[customer]
		r.json(t, &first)
		ta.createCustomer("LATE", "+254799999999", nil)
		rest := walk(t, ta, "/v1/customers?limit=100&after="+*first.NextCursor, func(c customer) int64 { return c.ID })
		equal(t, "customers", len(first.Data)+len(rest), n+1)
	})
}
