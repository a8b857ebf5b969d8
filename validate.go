package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// The rules every resource shares. Each returns "" when the value is good, or
// the detail a client reads next to the field's name.

const e164Example = "must be an E.164 phone number such as +254712345678"

// checkE164 accepts "+" followed by 8 to 15 digits, the first not zero.
func checkE164(s string) string {
	if len(s) < 9 || len(s) > 16 || s[0] != '+' || s[1] == '0' || !allDigits(s[1:]) {
		return e164Example
	}
	return ""
}

// checkEmail accepts a bare ASCII address (no display name) of at most 254
// bytes with a dot in its domain. Internationalized addresses are refused:
// relays that do not speak SMTPUTF8 would garble them.
func checkEmail(s string) string {
	if checkAddress(s) != nil || len(s) > 254 || !strings.Contains(s[strings.LastIndexByte(s, '@'):], ".") {
		return "must be an ASCII e-mail address such as amina@example.com"
	}
	return ""
}

// checkCode accepts 1–32 ASCII letters, digits, '-' and '_'.
func checkCode(s string) string {
	if s == "" || len(s) > 32 || strings.Trim(s, alphanumeric+"-_") != "" {
		return "must be 1 to 32 letters, digits, '-' or '_'"
	}
	return ""
}

// checkText accepts 1 to max characters of printable text with at least one
// visible character. Names and items go into SMS, e-mail, CSV and logs, so
// control characters, line and paragraph separators and bidirectional
// overrides (which make text display as something else) are refused.
func checkText(s string, max int) string {
	switch {
	case !utf8.ValidString(s) || utf8.RuneCountInString(s) > max:
		return "must be 1 to " + strconv.Itoa(max) + " characters"
	case strings.ContainsFunc(s, refusedInText):
		return "must not contain control characters, line separators or bidirectional overrides"
	case !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsSpace(r) && !unicode.Is(unicode.Cf, r) }):
		// Format characters such as the zero-width joiners are allowed, but
		// they are not visible.
		return "must be 1 to " + strconv.Itoa(max) + " characters, not blank"
	}
	return ""
}

// refusedInText reports whether r is a control character, a line or
// paragraph separator, or a bidirectional embedding, override or isolate
// (U+202A–U+202E, U+2066–U+2069).
func refusedInText(r rune) bool {
	return unicode.IsControl(r) || unicode.In(r, unicode.Zl, unicode.Zp) || r >= '\u202a' && r <= '\u202e' || r >= '\u2066' && r <= '\u2069'
}

// printable reports whether every character of s is printable, as
// unicode.IsPrint says: letters, marks, numbers, punctuation, symbols and
// the ASCII space.
func printable(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) })
}

// checkCurrency accepts an ISO 4217 code: three capital letters.
func checkCurrency(s string) string {
	if len(s) != 3 || strings.ContainsFunc(s, func(r rune) bool { return r < 'A' || r > 'Z' }) {
		return "must be an ISO 4217 code such as KES"
	}
	return ""
}

// Times are accepted from 1900 to 9999 (UTC): every time in that range has an
// RFC 3339 form, which years past 9999 lack, and older dates are mistakes.
var (
	earliestTime = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)
	latestTime   = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC).Add(-time.Microsecond)
)

// parseTime reads an RFC 3339 time in the accepted range, in UTC, to the
// microsecond PostgreSQL keeps, so that the answer to a create matches every
// later read.
func parseTime(s string) (time.Time, string) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return t, "must be an RFC 3339 time such as 2026-11-21T09:30:00Z"
	}
	t = t.UTC().Truncate(time.Microsecond)
	if t.Before(earliestTime) || t.After(latestTime) {
		return t, "must be between 1900-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z"
	}
	return t, ""
}

// digitsOf returns the digits of a phone number, its identity.
func digitsOf(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r < '0' || r > '9' }), "")
}

// allDigits reports whether s is one or more ASCII digits.
func allDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// optional is a JSON field that can be absent, null, or a value: PATCH needs
// all three to tell "leave alone" from "clear".
type optional[T any] struct {
	Set   bool
	Null  bool
	Value T
}

// UnmarshalJSON records that the field was given, and whether as null (which
// leaves Value alone).
func (o *optional[T]) UnmarshalJSON(b []byte) error {
	o.Set = true
	o.Null = string(b) == "null"
	return json.Unmarshal(b, &o.Value)
}

// ptr returns nil when the field is absent or null, else its value.
func (o optional[T]) ptr() *T {
	if !o.Set || o.Null {
		return nil
	}
	return &o.Value
}

func ptr[T any](v T) *T { return &v }
