package main

import (
	"bytes"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Money is an exact amount in hundredths (cents). It never passes through a
// float: JSON input is parsed from its text, and PostgreSQL's NUMERIC(12,2)
// travels as a decimal string in both directions.
type Money int64

// maxMoney is the largest value NUMERIC(12,2) holds: 9999999999.99.
const maxMoney Money = 999_999_999_999

var (
	errMoneySyntax    = errors.New("must be a decimal amount such as \"3.40\"")
	errMoneyNegative  = errors.New("must not be negative")
	errMoneyPrecision = errors.New("must have at most two decimal places")
	errMoneyRange     = errors.New("must not exceed 9999999999.99")
)

// parseMoney parses a non-negative decimal with at most two places ("3", "3.4",
// "3.40"). It returns one of the errMoney* errors, whose text is written for
// the client.
func parseMoney(s string) (Money, error) {
	if s == "" {
		return 0, errMoneySyntax
	}
	if s[0] == '-' {
		if _, err := parseMoney(s[1:]); err == nil || err == errMoneyPrecision || err == errMoneyRange {
			return 0, errMoneyNegative
		}
		return 0, errMoneySyntax
	}
	whole, frac, hasDot := s, "", false
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			whole, frac, hasDot = s[:i], s[i+1:], true
			break
		}
	}
	if whole == "" || !allDigits(whole) || (hasDot && (frac == "" || !allDigits(frac))) {
		return 0, errMoneySyntax
	}
	// Trailing zeros beyond two places carry no value ("1.500" is 1.50).
	for len(frac) > 2 && frac[len(frac)-1] == '0' {
		frac = frac[:len(frac)-1]
	}
	if len(frac) > 2 {
		return 0, errMoneyPrecision
	}
	for len(whole) > 1 && whole[0] == '0' {
		whole = whole[1:]
	}
	if len(whole) > 10 {
		return 0, errMoneyRange
	}
	units, _ := strconv.ParseInt(whole, 10, 64)
	var cents int64
	if frac != "" {
		cents, _ = strconv.ParseInt(frac, 10, 64)
		if len(frac) == 1 {
			cents *= 10
		}
	}
	return Money(units*100 + cents), nil
}

// String formats m with exactly two decimal places.
func (m Money) String() string {
	return string(m.appendTo(make([]byte, 0, 16)))
}

func (m Money) appendTo(b []byte) []byte {
	if m < 0 {
		b = append(b, '-')
		m = -m
	}
	b = strconv.AppendInt(b, int64(m/100), 10)
	c := int64(m % 100)
	return append(b, '.', byte('0'+c/10), byte('0'+c%10))
}

// MarshalJSON writes m as a JSON string, "3.40".
func (m Money) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 18)
	b = append(b, '"')
	b = m.appendTo(b)
	return append(b, '"'), nil
}

// UnmarshalJSON reads the string form MarshalJSON writes.
func (m *Money) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := parseMoney(s)
	*m = v
	return err
}

// moneyInput is what a client may send for an amount: a JSON string or a JSON
// number, kept as text until validation so that every bad field is reported
// together rather than failing the whole decode.
type moneyInput struct {
	text string
	set  bool
}

// UnmarshalJSON accepts "3.40" or 3.40; anything else (null, true, objects)
// is kept as text that parseMoney rejects.
func (m *moneyInput) UnmarshalJSON(b []byte) error {
	m.set = true
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &m.text)
	}
	if bytes.Equal(b, []byte("null")) {
		m.text = ""
		return nil
	}
	// A JSON number's text is its exact decimal value; 1e3 and friends are
	// refused by parseMoney rather than rounded.
	m.text = string(b)
	return nil
}

// Scan reads a NUMERIC column, which the driver hands over as text.
func (m *Money) Scan(src any) error {
	var s string
	switch v := src.(type) {
	case string:
		s = v
	case []byte:
		s = string(v)
	default:
		return fmt.Errorf("money: cannot scan %T", src)
	}
	v, err := parseMoney(s)
	if err != nil {
		return fmt.Errorf("money: %q: %w", s, err)
	}
	*m = v
	return nil
}

// Value hands m to the driver as exact decimal text.
func (m Money) Value() (driver.Value, error) { return m.String(), nil }
