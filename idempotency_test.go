package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// ntPostKeyed posts a raw JSON order body with an Idempotency-Key (omitted
// when key is nil) as the holder of token.
func ntPostKeyed(ta *testApp, token string, key *string, body string) response {
	h := map[string]string{"Authorization": "Bearer " + token}
	if key != nil {
		h["Idempotency-Key"] = *key
	}
	return ta.request("POST", "/v1/orders", body, "application/json", h)
}

// ntOrderID decodes the id of an order answer.
func ntOrderID(t testing.TB, r response) int64 {
	t.Helper()
	var o order
	r.json(t, &o)
	return o.ID
}

func TestIdempotencyReplay(t *testing.T) {
	ta := newTestApp(t, nil)
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	base := fmt.Sprintf(`{"customer_id": %d, "item": "whole-exome-sequencing", "amount": "1250.00"}`, c.ID)

	t.Run("same key and body answer the first order again", func(t *testing.T) {
		orders, notes := ta.count("orders"), ta.count("notifications")
		first := ntPostKeyed(ta, ta.token, ptr("key-replay"), base).must(t, http.StatusCreated)
		second := ntPostKeyed(ta, ta.token, ptr("key-replay"), base).must(t, http.StatusCreated)
		id1, id2 := ntOrderID(t, first), ntOrderID(t, second)
		if id1 != id2 {
			t.Errorf("replayed id: got %d, want %d", id2, id1)
		}
		l1, l2 := first.header.Get("Location"), second.header.Get("Location")
		if l1 == "" || l1 != l2 {
			t.Errorf("Location: got %q then %q, want the same non-empty one", l1, l2)
		}
		var o1, o2 order
		first.json(t, &o1)
		second.json(t, &o2)
		if o1.Item != o2.Item || o1.Amount != o2.Amount || !o1.Time.Equal(o2.Time) || o1.CreatedBy != o2.CreatedBy {
			t.Errorf("replayed order: got %+v, want %+v", o2, o1)
		}
		if got := ta.count("orders"); got != orders+1 {
			t.Errorf("orders: got %d, want %d", got, orders+1)
		}
		if got := ta.count("notifications"); got != notes+1 {
			t.Errorf("notifications: got %d, want %d", got, notes+1)
		}
	})

	t.Run("same key with a different body is 422", func(t *testing.T) {
		ntPostKeyed(ta, ta.token, ptr("key-conflict"), base).must(t, http.StatusCreated)
		orders := ta.count("orders")
		other := strings.Replace(base, "whole-exome-sequencing", "kit", 1)
		res := ntPostKeyed(ta, ta.token, ptr("key-conflict"), other).must(t, http.StatusUnprocessableEntity)
		p := res.problem(t)
		if len(p.Errors) != 1 || p.Errors[0].Header != "Idempotency-Key" {
			t.Errorf("errors: got %+v, want one naming the Idempotency-Key header", p.Errors)
		}
		if got := ta.count("orders"); got != orders {
			t.Errorf("orders: got %d, want %d", got, orders)
		}
	})

	t.Run("another subject with the same key gets its own order", func(t *testing.T) {
		mine := ntOrderID(t, ntPostKeyed(ta, ta.token, ptr("key-shared"), base).must(t, http.StatusCreated))
		otherToken := ta.issuer.token(t, "staff-2", allScopes...)
		res := ntPostKeyed(ta, otherToken, ptr("key-shared"), base).must(t, http.StatusCreated)
		var theirs order
		res.json(t, &theirs)
		if theirs.ID == mine {
			t.Errorf("order for staff-2: got id %d, the same as staff-1's, want a new order", theirs.ID)
		}
		if theirs.CreatedBy != "staff-2" {
			t.Errorf("created_by: got %q, want staff-2", theirs.CreatedBy)
		}
		// Each subject's replay still finds its own order.
		if again := ntOrderID(t, ntPostKeyed(ta, otherToken, ptr("key-shared"), base).must(t, http.StatusCreated)); again != theirs.ID {
			t.Errorf("staff-2 replay: got %d, want %d", again, theirs.ID)
		}
	})

	t.Run("key length", func(t *testing.T) {
		for _, tt := range []struct {
			name string
			key  string
			want int
		}{
			{"empty", "", http.StatusUnprocessableEntity},
			{"256 characters", strings.Repeat("k", 256), http.StatusUnprocessableEntity},
			{"255 characters", strings.Repeat("k", 255), http.StatusCreated},
			{"1 character", "k", http.StatusCreated},
			{"not UTF-8", "\xff\xfe", http.StatusUnprocessableEntity},
			{"a control character", "key\tx", http.StatusUnprocessableEntity},
			{"255 characters of two bytes each", strings.Repeat("é", 255), http.StatusCreated},
		} {
			t.Run(tt.name, func(t *testing.T) {
				orders := ta.count("orders")
				res := ntPostKeyed(ta, ta.token, &tt.key, base).must(t, tt.want)
				wantOrders := orders
				if tt.want == http.StatusCreated {
					wantOrders++
				} else {
					p := res.problem(t)
					if len(p.Errors) != 1 || p.Errors[0].Header != "Idempotency-Key" {
						t.Errorf("errors: got %+v, want one naming the Idempotency-Key header", p.Errors)
					}
				}
				if got := ta.count("orders"); got != wantOrders {
					t.Errorf("orders: got %d, want %d", got, wantOrders)
				}
			})
		}
	})

	t.Run("a refused request does not use up its key", func(t *testing.T) {
		bad := `{"customer_id": 999999, "item": "kit", "amount": "1.00"}`
		ntPostKeyed(ta, ta.token, ptr("key-after-422"), bad).must(t, http.StatusUnprocessableEntity)
		ntPostKeyed(ta, ta.token, ptr("key-after-422"), base).must(t, http.StatusCreated)
	})

	// The fingerprint is over the checked order: layout, field order and the
	// spelling of a value do not matter; what the client left to the server
	// (time, channel) and how it named the customer do.
	t.Run("spelling", func(t *testing.T) {
		id := c.ID
		for i, tt := range []struct {
			name          string
			first, second string
			replay        bool
		}{
			{"field order and whitespace",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1250.00"}`, id),
				fmt.Sprintf("{\n  \"amount\": \"1250.00\",\n  \"item\": \"kit\",\n  \"customer_id\": %d\n}", id), true},
			{"amount as string or number with the same digits",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1250.00"}`, id),
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":1250.00}`, id), true},
			{"integer amount as string or number",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":1250}`, id),
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1250"}`, id), true},
			{"explicit null currency is the same as none",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00"}`, id),
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00","currency":null}`, id), true},
			{"escaped and plain characters in the item",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00"}`, id),
				fmt.Sprintf(`{"customer_id":%d,"item":"\u006bit","amount":"1.00"}`, id), true},
			{"no time twice, though the server fills in now",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"2.00"}`, id),
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"2.00"}`, id), true},
			{"amount 1250 and 1250.00: equal value, different text",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":1250}`, id),
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1250.00"}`, id), true},
			{"default currency omitted and explicit",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00"}`, id),
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00","currency":"KES"}`, id), true},
			{"a different amount",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00"}`, id),
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.01"}`, id), false},
			{"time given and left out",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00","time":"2026-11-21T09:30:00Z"}`, id),
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00"}`, id), false},
			{"customer by id and by code",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00"}`, id),
				`{"customer_code":"CUST-1","item":"kit","amount":"1.00"}`, false},
			{"rules and an explicit channel",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00"}`, id),
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"1.00","channel":"sms"}`, id), false},
			{"same instant in another zone",
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"3.00","time":"2026-11-21T09:30:00Z"}`, id),
				fmt.Sprintf(`{"customer_id":%d,"item":"kit","amount":"3.00","time":"2026-11-21T12:30:00+03:00"}`, id), true},
		} {
			t.Run(tt.name, func(t *testing.T) {
				key := fmt.Sprintf("key-spelling-%d", i)
				first := ntOrderID(t, ntPostKeyed(ta, ta.token, &key, tt.first).must(t, http.StatusCreated))
				orders := ta.count("orders")
				if !tt.replay {
					ntPostKeyed(ta, ta.token, &key, tt.second).must(t, http.StatusUnprocessableEntity)
				} else if again := ntOrderID(t, ntPostKeyed(ta, ta.token, &key, tt.second).must(t, http.StatusCreated)); again != first {
					t.Errorf("replay id: got %d, want %d", again, first)
				}
				if got := ta.count("orders"); got != orders {
					t.Errorf("orders: got %d, want %d (no second order)", got, orders)
				}
			})
		}
	})
}

func TestIdempotencyConcurrent(t *testing.T) {
	const clients = 20
	ta := newTestApp(t, nil)
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	body := fmt.Sprintf(`{"customer_id": %d, "item": "kit", "amount": "10.00"}`, c.ID)

	for round := range 3 {
		key := fmt.Sprintf("key-concurrent-%d", round)
		type result struct {
			status   int
			id       int64
			location string
			err      error
		}
		results := make([]result, clients)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range clients {
			wg.Go(func() {
				<-start
				req, err := http.NewRequest("POST", ta.url+"/v1/orders", strings.NewReader(body))
				if err != nil {
					results[i].err = err
					return
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+ta.token)
				req.Header.Set("Idempotency-Key", key)
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					results[i].err = err
					return
				}
				defer res.Body.Close()
				b, err := io.ReadAll(res.Body)
				var o order
				if err == nil && res.StatusCode == http.StatusCreated {
					err = json.Unmarshal(b, &o)
				}
				if res.StatusCode != http.StatusCreated {
					err = fmt.Errorf("body %s", b)
				}
				results[i] = result{status: res.StatusCode, id: o.ID, location: res.Header.Get("Location"), err: err}
			})
		}
		orders, notes := ta.count("orders"), ta.count("notifications")
		close(start)
		wg.Wait()
		for i, r := range results {
			if r.status != http.StatusCreated || r.err != nil {
				t.Errorf("round %d client %d: got status %d (%v), want 201", round, i, r.status, r.err)
				continue
			}
			if r.id != results[0].id || r.location != results[0].location {
				t.Errorf("round %d client %d: got id %d at %q, want %d at %q", round, i, r.id, r.location, results[0].id, results[0].location)
			}
		}
		if got := ta.count("orders"); got != orders+1 {
			t.Errorf("round %d orders: got %d, want %d", round, got, orders+1)
		}
		if got := ta.count("notifications"); got != notes+1 {
			t.Errorf("round %d notifications: got %d, want %d", round, got, notes+1)
		}
	}
	if got := ta.count("idempotency_keys"); got != 3 {
		t.Errorf("idempotency keys: got %d, want 3", got)
	}
}

func TestIdempotencyPurge(t *testing.T) {
	ta := newTestApp(t, nil)
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	body := fmt.Sprintf(`{"customer_id": %d, "item": "kit", "amount": "10.00"}`, c.ID)
	ages := map[string]time.Duration{
		"key-49h": 49 * time.Hour,
		"key-47h": 47 * time.Hour,
		"key-25h": 25 * time.Hour,
		"key-new": 0,
	}
	for key, age := range ages {
		ntPostKeyed(ta, ta.token, ptr(key), body).must(t, http.StatusCreated)
		if _, err := ta.store.db.Exec(`UPDATE idempotency_keys SET created_at = now() - make_interval(secs => $2) WHERE key = $1`,
			key, age.Seconds()); err != nil {
			t.Fatal(err)
		}
	}

	ta.worker.purgeIdempotencyKeys(t.Context())

	rows, err := ta.store.db.Query(`SELECT key FROM idempotency_keys`)
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]bool{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		kept[k] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	for key, age := range ages {
		if want := age <= 48*time.Hour; kept[key] != want {
			t.Errorf("key %s aged %v: got kept=%v, want %v", key, age, kept[key], want)
		}
	}
	if got := ta.count("orders"); got != len(ages) {
		t.Errorf("orders: got %d, want %d (purging keys keeps orders)", got, len(ages))
	}

	// A purged key is free again; a kept one still guards its order.
	other := strings.Replace(body, `"kit"`, `"panel"`, 1)
	ntPostKeyed(ta, ta.token, ptr("key-49h"), other).must(t, http.StatusCreated)
	ntPostKeyed(ta, ta.token, ptr("key-47h"), other).must(t, http.StatusUnprocessableEntity)
}
