package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

func TestNumbersCRUD(t *testing.T) {
	ta := newTestApp(t, nil)
	r := ta.do("POST", "/v1/numbers", map[string]any{"value": "+55 84 91234-4321", "monthyPrice": "0.03", "setupPrice": 3.4, "currency": "U$"}).must(t, http.StatusCreated)
	var n phoneNumber
	r.json(t, &n)
	want := fmt.Sprintf(`{"id":%d,"value":"+55 84 91234-4321","monthyPrice":"0.03","setupPrice":"3.40","currency":"U$"}`, n.ID)
	equal(t, "wire format", strings.TrimSpace(string(r.body)), want)
	loc := r.header.Get("Location")
	equal(t, "Location", loc, fmt.Sprintf("/v1/numbers/%d", n.ID))
	equal(t, "get", strings.TrimSpace(string(ta.do("GET", loc, nil).must(t, http.StatusOK).body)), want)

	t.Run("same digits conflict", func(t *testing.T) {
		for _, v := range []string{"+5584912344321", "55 (84) 91234.4321"} {
			p := ta.do("POST", "/v1/numbers", map[string]any{"value": v, "monthlyPrice": "1", "setupPrice": "1", "currency": "USD"}).must(t, http.StatusConflict).problem(t)
			contains(t, "detail", p.Detail, "same digits")
		}
	})

	t.Run("put replaces", func(t *testing.T) {
		var got phoneNumber
		ta.do("PUT", loc, map[string]any{"value": "+5584912344321", "monthlyPrice": "0.05", "setupPrice": "0", "currency": "BRL"}).must(t, http.StatusOK).json(t, &got)
		equal(t, "after PUT", got, phoneNumber{ID: n.ID, Value: "+5584912344321", MonthlyPrice: 5, SetupPrice: 0, Currency: "BRL"})
		p := ta.do("PUT", loc, map[string]any{"value": "+5584912344321"}).must(t, http.StatusUnprocessableEntity).problem(t)
		checkPointers(t, p, "#/monthyPrice", "#/setupPrice", "#/currency")
		if p = ta.do("PUT", loc, map[string]any{"monthyPrice": "1", "setupPrice": "1"}).problem(t); p.Errors[0].Detail != "is required" || p.Errors[1].Detail != "is required" {
			t.Errorf("PUT without value and currency: got %+v, want both required", p.Errors)
		}
	})

	t.Run("patch merges", func(t *testing.T) {
		var got phoneNumber
		ta.do("PATCH", loc, map[string]any{"monthyPrice": "1.10"}).must(t, http.StatusOK).json(t, &got)
		equal(t, "after PATCH", got, phoneNumber{ID: n.ID, Value: "+5584912344321", MonthlyPrice: 110, SetupPrice: 0, Currency: "BRL"})
		other := ta.do("POST", "/v1/numbers", map[string]any{"value": "+254 712 000 111", "monthyPrice": "1", "setupPrice": "1", "currency": "KES"}).must(t, http.StatusCreated)
		ta.do("PATCH", other.header.Get("Location"), map[string]any{"value": "+55-84-91234-4321"}).must(t, http.StatusConflict).problem(t)
		ta.do("PATCH", loc, map[string]any{}).must(t, http.StatusUnprocessableEntity).problem(t)
		ta.do("PATCH", "/v1/numbers/99999", map[string]any{"currency": "X"}).must(t, http.StatusNotFound).problem(t)
		ta.do("PUT", "/v1/numbers/99999", map[string]any{"value": "+5584900000000", "monthyPrice": "1", "setupPrice": "1", "currency": "X"}).must(t, http.StatusNotFound).problem(t)
	})

	t.Run("list", func(t *testing.T) {
		var page listPage[phoneNumber]
		ta.do("GET", "/v1/numbers?limit=1", nil).must(t, http.StatusOK).json(t, &page)
		if len(page.Data) != 1 || page.NextCursor == nil || page.Data[0].ID != n.ID {
			t.Errorf("first page: got %+v", page)
		}
	})

	t.Run("delete", func(t *testing.T) {
		ta.do("DELETE", loc, nil).must(t, http.StatusNoContent)
		ta.do("GET", loc, nil).must(t, http.StatusNotFound)
		ta.do("DELETE", loc, nil).must(t, http.StatusNotFound)
	})
}

func TestNumbersValidation(t *testing.T) {
	ta := newTestApp(t, nil)
	checkRefusals(t, ta, "/v1/numbers", []refusal{
		{"seven digits", map[string]any{"value": "+1 234 567", "monthyPrice": "1", "setupPrice": "1", "currency": "U$"}, []string{"#/value"}},
		{"sixteen digits", map[string]any{"value": "+1234567890123456", "monthyPrice": "1", "setupPrice": "1", "currency": "U$"}, []string{"#/value"}},
		{"letters", map[string]any{"value": "+55 84 CALL-NOW1", "monthyPrice": "1", "setupPrice": "1", "currency": "U$"}, []string{"#/value"}},
		{"plus inside", map[string]any{"value": "55+84912344321", "monthyPrice": "1", "setupPrice": "1", "currency": "U$"}, []string{"#/value"}},
		{"prices", map[string]any{"value": "+5584912344321", "monthyPrice": "-0.01", "setupPrice": "1.234", "currency": "U$"}, []string{"#/monthyPrice", "#/setupPrice"}},
		{"null price", map[string]any{"value": "+5584912344321", "monthyPrice": nil, "setupPrice": "1", "currency": "U$"}, []string{"#/monthyPrice"}},
		{"both spellings differ", map[string]any{"value": "+5584912344321", "monthyPrice": "1", "monthlyPrice": "2", "setupPrice": "1", "currency": "U$"}, []string{"#/monthlyPrice"}},
		{"currency too long", map[string]any{"value": "+5584912344321", "monthyPrice": "1", "setupPrice": "1", "currency": "DOLLARSSS"}, []string{"#/currency"}},
		{"currency control", map[string]any{"value": "+5584912344321", "monthyPrice": "1", "setupPrice": "1", "currency": "U\x00"}, []string{"#/currency"}},
		{"currency empty", map[string]any{"value": "+5584912344321", "monthyPrice": "1", "setupPrice": "1", "currency": ""}, []string{"#/currency"}},
		{"missing all", map[string]any{}, []string{"#/value", "#/monthyPrice", "#/setupPrice", "#/currency"}},
	})
	equal(t, "numbers after refused creates", ta.count("phone_numbers"), 0)
	// Both spellings with one value are accepted.
	ta.do("POST", "/v1/numbers", map[string]any{"value": "+5584912344321", "monthyPrice": "1", "monthlyPrice": "1", "setupPrice": "1", "currency": "€"}).must(t, http.StatusCreated)
}
