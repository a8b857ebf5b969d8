package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// postKeyed posts a raw JSON order body with an Idempotency-Key as the
// holder of token, and decodes the order it answers.
func (ta *testApp) postKeyed(token, key, body string) (response, order) {
	ta.t.Helper()
	r := ta.request("POST", "/v1/orders", body, "application/json", map[string]string{"Authorization": "Bearer " + token, "Idempotency-Key": key})
	var o order
	if r.status == http.StatusCreated {
		r.json(ta.t, &o)
	}
	return r, o
}

func TestIdempotencyReplay(t *testing.T) {
	ta := newTestApp(t, nil)
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	base := fmt.Sprintf(`{"customer_id": %d, "item": "whole-exome-sequencing", "amount": "1250.00"}`, c.ID)
	// post answers with status want and the order, and checks the rows it added.
	post := func(t *testing.T, token, key, body string, want, newOrders int) order {
		t.Helper()
		orders, notes := ta.count("orders"), ta.count("notifications")
		r, o := ta.postKeyed(token, key, body)
		r.must(t, want)
		if want != http.StatusCreated {
			if p := r.problem(t); len(p.Errors) != 1 || p.Errors[0].Header != "Idempotency-Key" {
				t.Errorf("errors: got %+v, want one naming the Idempotency-Key header", p.Errors)
			}
		} else if loc := r.header.Get("Location"); loc != fmt.Sprint("/v1/orders/", o.ID) {
			t.Errorf("Location: got %q for order %d", loc, o.ID)
		}
		equal(t, "orders", ta.count("orders"), orders+newOrders)
		equal(t, "notifications", ta.count("notifications"), notes+newOrders)
		return o
	}

	t.Run("same key and body answer the first order again", func(t *testing.T) {
		first := post(t, ta.token, "key-replay", base, http.StatusCreated, 1)
		if again := post(t, ta.token, "key-replay", base, http.StatusCreated, 0); again.ID != first.ID || again.Item != first.Item ||
			again.Amount != first.Amount || !again.Time.Equal(first.Time) || again.CreatedBy != first.CreatedBy {
			t.Errorf("replayed order: got %+v, want %+v", again, first)
		}
	})
	t.Run("same key with a different body is 422", func(t *testing.T) {
		post(t, ta.token, "key-conflict", base, http.StatusCreated, 1)
		post(t, ta.token, "key-conflict", strings.Replace(base, "whole-exome-sequencing", "kit", 1), http.StatusUnprocessableEntity, 0)
	})
	t.Run("another subject with the same key gets its own order", func(t *testing.T) {
		mine := post(t, ta.token, "key-shared", base, http.StatusCreated, 1)
		other := ta.issuer.token(t, "staff-2", allScopes...)
		theirs := post(t, other, "key-shared", base, http.StatusCreated, 1)
		if theirs.ID == mine.ID || theirs.CreatedBy != "staff-2" {
			t.Errorf("order for staff-2: got %+v, want a new one created by staff-2", theirs)
		}
		// Each subject's replay still finds its own order.
		equal(t, "staff-2 replay", post(t, other, "key-shared", base, http.StatusCreated, 0).ID, theirs.ID)
	})
	t.Run("key length", func(t *testing.T) {
		for _, tt := range []struct {
			name, key    string
			want, orders int
		}{
			{"empty", "", http.StatusUnprocessableEntity, 0},
			{"256 characters", strings.Repeat("k", 256), http.StatusUnprocessableEntity, 0},
			{"255 characters", strings.Repeat("k", 255), http.StatusCreated, 1},
			{"1 character", "k", http.StatusCreated, 1},
			{"not UTF-8", "\xff\xfe", http.StatusUnprocessableEntity, 0},
			{"a control character", "key\tx", http.StatusUnprocessableEntity, 0},
			{"255 characters of two bytes each", strings.Repeat("é", 255), http.StatusCreated, 1},
		} {
			t.Run(tt.name, func(t *testing.T) { post(t, ta.token, tt.key, base, tt.want, tt.orders) })
		}
	})
	t.Run("a refused request does not use up its key", func(t *testing.T) {
		ta.postKeyed(ta.token, "key-after-422", `{"customer_id": 999999, "item": "kit", "amount": "1.00"}`)
		post(t, ta.token, "key-after-422", base, http.StatusCreated, 1)
	})

	// The fingerprint is over the checked order: layout, field order and the
	// spelling of a value do not matter; what the client left to the server
	// (time, channel) and how it named the customer do.
	t.Run("spelling", func(t *testing.T) {
		byID := func(rest string) string { return fmt.Sprintf(`{"customer_id":%d,%s}`, c.ID, rest) }
		for i, tt := range []struct {
			name, first, second string
			replay              bool
		}{
			{"field order and whitespace", byID(`"item":"kit","amount":"1250.00"`),
				fmt.Sprintf("{\n  \"amount\": \"1250.00\",\n  \"item\": \"kit\",\n  \"customer_id\": %d\n}", c.ID), true},
			{"amount as string or number with the same digits", byID(`"item":"kit","amount":"1250.00"`), byID(`"item":"kit","amount":1250.00`), true},
			{"integer amount as string or number", byID(`"item":"kit","amount":1250`), byID(`"item":"kit","amount":"1250"`), true},
			{"explicit null currency is the same as none", byID(`"item":"kit","amount":"1.00"`), byID(`"item":"kit","amount":"1.00","currency":null`), true},
			{"escaped and plain characters in the item", byID(`"item":"kit","amount":"1.00"`), byID(`"item":"\u006bit","amount":"1.00"`), true},
			{"no time twice, though the server fills in now", byID(`"item":"kit","amount":"2.00"`), byID(`"item":"kit","amount":"2.00"`), true},
			{"amount 1250 and 1250.00: equal value, different text", byID(`"item":"kit","amount":1250`), byID(`"item":"kit","amount":"1250.00"`), true},
			{"default currency omitted and explicit", byID(`"item":"kit","amount":"1.00"`), byID(`"item":"kit","amount":"1.00","currency":"KES"`), true},
			{"a different amount", byID(`"item":"kit","amount":"1.00"`), byID(`"item":"kit","amount":"1.01"`), false},
			{"time given and left out", byID(`"item":"kit","amount":"1.00","time":"2026-11-21T09:30:00Z"`), byID(`"item":"kit","amount":"1.00"`), false},
			{"customer by id and by code", byID(`"item":"kit","amount":"1.00"`), `{"customer_code":"CUST-1","item":"kit","amount":"1.00"}`, false},
			{"rules and an explicit channel", byID(`"item":"kit","amount":"1.00"`), byID(`"item":"kit","amount":"1.00","channel":"sms"`), false},
			{"same instant in another zone", byID(`"item":"kit","amount":"3.00","time":"2026-11-21T09:30:00Z"`),
				byID(`"item":"kit","amount":"3.00","time":"2026-11-21T12:30:00+03:00"`), true},
		} {
			t.Run(tt.name, func(t *testing.T) {
				key := fmt.Sprint("key-spelling-", i)
				first := post(t, ta.token, key, tt.first, http.StatusCreated, 1)
				if !tt.replay {
					post(t, ta.token, key, tt.second, http.StatusUnprocessableEntity, 0)
				} else if again := post(t, ta.token, key, tt.second, http.StatusCreated, 0); again.ID != first.ID {
					t.Errorf("replay id: got %d, want %d", again.ID, first.ID)
				}
			})
		}
	})
}

// Twenty clients sending one key at once get one order, each of them.
func TestIdempotencyConcurrent(t *testing.T) {
	const clients = 20
	ta := newTestApp(t, nil)
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	body := fmt.Sprintf(`{"customer_id": %d, "item": "kit", "amount": "10.00"}`, c.ID)
	for round := range 3 {
		key := fmt.Sprint("key-concurrent-", round)
		statuses, ids, locations := make([]int, clients), make([]int64, clients), make([]string, clients)
		orders, notes := ta.count("orders"), ta.count("notifications")
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range clients {
			wg.Go(func() { // not through ta.request: a test may fail only from its own goroutine
				<-start
				req, _ := http.NewRequest("POST", ta.url+"/v1/orders", strings.NewReader(body))
				req.Header = http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer " + ta.token}, "Idempotency-Key": {key}}
				if res, err := http.DefaultClient.Do(req); err == nil {
					var o order
					json.NewDecoder(res.Body).Decode(&o)
					res.Body.Close()
					statuses[i], ids[i], locations[i] = res.StatusCode, o.ID, res.Header.Get("Location")
				}
			})
		}
		close(start)
		wg.Wait()
		for i := range clients {
			if statuses[i] != http.StatusCreated || ids[i] != ids[0] || locations[i] != locations[0] {
				t.Errorf("round %d client %d: got %d, order %d at %q; want 201, order %d", round, i, statuses[i], ids[i], locations[i], ids[0])
			}
		}
		equal(t, fmt.Sprint("round ", round, " orders"), ta.count("orders"), orders+1)
		equal(t, fmt.Sprint("round ", round, " notifications"), ta.count("notifications"), notes+1)
	}
	equal(t, "idempotency keys", ta.count("idempotency_keys"), 3)
}

// Keys are kept 48 hours, the contract's 24 and more, then forgotten.
func TestIdempotencyPurge(t *testing.T) {
	ta := newTestApp(t, nil)
	c := ta.createCustomer("CUST-1", "+254712345678", nil)
	body := fmt.Sprintf(`{"customer_id": %d, "item": "kit", "amount": "10.00"}`, c.ID)
	ages := map[string]time.Duration{"key-49h": 49 * time.Hour, "key-47h": 47 * time.Hour, "key-25h": 25 * time.Hour, "key-new": 0}
	for key, age := range ages {
		ta.postKeyed(ta.token, key, body)
		ta.exec(`UPDATE idempotency_keys SET created_at = now() - make_interval(secs => $2) WHERE key = $1`, key, age.Seconds())
	}
	ta.worker.purgeIdempotencyKeys(t.Context())
	for key, age := range ages {
		equal(t, fmt.Sprintf("key %s aged %v kept", key, age), ta.count("idempotency_keys", "key = $1", key) == 1, age <= 48*time.Hour)
	}
	equal(t, "orders (purging keys keeps orders)", ta.count("orders"), len(ages))
	// A purged key is free again; a kept one still guards its order.
	other := strings.Replace(body, `"kit"`, `"panel"`, 1)
	ta.postKeyed(ta.token, "key-49h", other)
	r, _ := ta.postKeyed(ta.token, "key-47h", other)
	r.must(t, http.StatusUnprocessableEntity)
	equal(t, "orders after reusing a purged key", ta.count("orders"), len(ages)+1)
}
