package main

import (
	"bytes"
	"encoding/json"
	"net/mail"
	"strconv"
	"strings"
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

// checkEmail accepts a bare address (no display name) of at most 254 bytes.
func checkEmail(s string) string {
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || a.Name != "" || len(s) > 254 || !strings.Contains(s[strings.LastIndexByte(s, '@'):], ".") {
		return "must be an e-mail address such as amina@example.com"
	}
	return ""
}

// checkCode accepts 1–32 letters, digits, '-' and '_'.
func checkCode(s string) string {
	if s == "" || len(s) > 32 {
		return "must be 1 to 32 letters, digits, '-' or '_'"
	}
	for _, r := range s {
		if !(r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r)) || r == '-' || r == '_') {
			return "must be 1 to 32 letters, digits, '-' or '_'"
		}
	}
	return ""
}

// checkText accepts 1 to max characters of printable text that is not all
// blank: control characters would corrupt CSV exports, SMS and logs.
func checkText(s string, max int) string {
	n := utf8.RuneCountInString(s)
	if strings.TrimSpace(s) == "" || n > max {
		return "must be 1 to " + strconv.Itoa(max) + " characters, not blank"
	}
	if !utf8.ValidString(s) || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return "must not contain control characters"
	}
	return ""
}

// checkCurrency accepts an ISO 4217 code: three capital letters.
func checkCurrency(s string) string {
	if len(s) != 3 || strings.IndexFunc(s, func(r rune) bool { return r < 'A' || r > 'Z' }) >= 0 {
		return "must be an ISO 4217 code such as KES"
	}
	return ""
}

// digitsOf returns the digits of a phone number, its identity.
func digitsOf(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] >= '0' && s[i] <= '9' {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// optional is a JSON field that can be absent, null, or a value: PATCH needs
// all three to tell "leave alone" from "clear".
type optional[T any] struct {
	Set   bool
	Null  bool
	Value T
}

func (o *optional[T]) UnmarshalJSON(b []byte) error {
	o.Set = true
	if bytes.Equal(b, []byte("null")) {
		o.Null = true
		return nil
	}
	return json.Unmarshal(b, &o.Value)
}

// ptr returns nil when the field is absent or null, else its value.
func (o optional[T]) ptr() *T {
	if !o.Set || o.Null {
		return nil
	}
	return &o.Value
}
