package main

import (
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// phoneNumber is a number in the inventory, in the wire format agreed with the
// front end: "monthyPrice" is that agreement's spelling.
type phoneNumber struct {
	ID           int64  `json:"id"`
	Value        string `json:"value"`
	MonthlyPrice Money  `json:"monthyPrice"`
	SetupPrice   Money  `json:"setupPrice"`
	Currency     string `json:"currency"`
}

// numberInput is the body of a POST, PUT or PATCH. Input accepts the agreed
// "monthyPrice" and the correctly spelled "monthlyPrice".
type numberInput struct {
	Value        optional[string] `json:"value"`
	MonthyPrice  moneyInput       `json:"monthyPrice"`
	MonthlyPrice moneyInput       `json:"monthlyPrice"`
	SetupPrice   moneyInput       `json:"setupPrice"`
	Currency     optional[string] `json:"currency"`
}

// numberPatch is a checked POST, PUT or PATCH: the fields it sets, nil for
// those it leaves as they are (PATCH only). Digits go with the value: they
// are its identity.
type numberPatch struct {
	value, digits, currency *string
	monthly, setup          *Money
}

// check reports every rule it breaks and returns the fields it sets. With
// partial false (POST, PUT) every field is required.
func (in *numberInput) check(partial bool, c *checker) numberPatch {
	var p numberPatch
	switch {
	case !in.Value.Set && !partial:
		c.add("value", "is required")
	case in.Value.Set:
		c.add("value", checkNumberValue(in.Value.Value))
		p.value = ptr(strings.TrimSpace(in.Value.Value))
		p.digits = ptr(digitsOf(*p.value))
	}
	monthly, name := in.MonthyPrice, "monthyPrice"
	if in.MonthlyPrice.set {
		if in.MonthyPrice.set && in.MonthyPrice.text != in.MonthlyPrice.text {
			c.add("monthlyPrice", "must equal monthyPrice when both are given")
		}
		monthly, name = in.MonthlyPrice, "monthlyPrice"
	}
	p.monthly, p.setup = monthly.check(name, !partial, c), in.SetupPrice.check("setupPrice", !partial, c)
	switch {
	case !in.Currency.Set && !partial:
		c.add("currency", "is required")
	case in.Currency.Set:
		c.add("currency", checkNumberCurrency(in.Currency.Value))
		p.currency = &in.Currency.Value
	}
	if p == (numberPatch{}) {
		c.addError(fieldError{Pointer: "#", Detail: "must set at least one of value, monthyPrice, setupPrice, currency"})
	}
	return p
}

// checkNumberValue accepts a phone number written with digits and the usual
// separators, holding 8 to 15 digits.
func checkNumberValue(s string) string {
	s = strings.TrimSpace(s)
	if n := len(digitsOf(s)); n < 8 || n > 15 || len(s) > 32 {
		return "must hold 8 to 15 digits, e.g. +55 84 91234-4321 or +5584912344321"
	}
	if strings.Trim(strings.TrimPrefix(s, "+"), "0123456789 -().") != "" {
		return "may hold only digits, spaces, '-', '(', ')', '.' and a leading '+', e.g. +55 84 91234-4321"
	}
	return ""
}

// checkNumberCurrency accepts 1 to 8 printable characters, such as "U$".
func checkNumberCurrency(s string) string {
	if n := utf8.RuneCountInString(s); n < 1 || n > 8 || strings.TrimSpace(s) != s || !printable(s) {
		return "must be 1 to 8 printable characters, e.g. U$ or USD"
	}
	return ""
}

func (s *server) handleCreateNumber(w http.ResponseWriter, r *http.Request) {
	var in numberInput
	var p numberPatch
	var created phoneNumber
	err := decodeChecked(w, r, &in, func(c *checker) { p = in.check(false, c) })
	if err == nil {
		created, err = s.store.createNumber(r.Context(), p, subject(r))
	}
	if err == nil {
		w.Header().Set("Location", "/v1/numbers/"+strconv.FormatInt(created.ID, 10))
	}
	respond(w, r, http.StatusCreated, created, err)
}

// updateNumber serves PUT (partial false: a full replacement, every field
// required) and PATCH. The body is checked first, so a bad body answers 422
// for a number that does not exist as well as one that does.
func (s *server) updateNumber(partial bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in numberInput
		var p numberPatch
		var updated phoneNumber
		id, err := pathID(r)
		if err == nil {
			err = decodeChecked(w, r, &in, func(c *checker) { p = in.check(partial, c) })
		}
		if err == nil {
			updated, err = s.store.updateNumber(r.Context(), id, p)
		}
		respond(w, r, http.StatusOK, updated, err)
	}
}

func numberCursor(n phoneNumber) cursor { return cursor{Kind: 'n', ID: n.ID} }
