package main

import (
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Money is an exact, non-negative amount in hundredths (cents). It never
// passes through a float: JSON input is parsed from its text, and
// PostgreSQL's NUMERIC(12,2) travels as a decimal string in both directions.
type Money int64

var (
	errMoneySyntax    = errors.New("must be a decimal amount such as \"3.40\"")
	errMoneyNegative  = errors.New("must not be negative")
	errMoneyPrecision = errors.New("must have at most two decimal places")
	errMoneyRange     = errors.New("must not exceed 9999999999.99")
)

// parseMoney parses a non-negative decimal with at most two places ("3", "3.4",
// "3.40") and at most 9999999999.99, what NUMERIC(12,2) holds. It returns one
// of the errMoney* errors, whose text is written for the client.
func parseMoney(s string) (Money, error) {
	unsigned, negative := strings.CutPrefix(s, "-")
	whole, frac, dot := strings.Cut(unsigned, ".")
	switch {
	case !allDigits(whole) || dot && !allDigits(frac):
		return 0, errMoneySyntax
	case negative:
		return 0, errMoneyNegative
	}
	// Trailing zeros beyond two places carry no value ("1.500" is 1.50).
	if frac = strings.TrimRight(frac, "0"); len(frac) > 2 {
		return 0, errMoneyPrecision
	}
	if whole = strings.TrimLeft(whole, "0"); len(whole) > 10 {
		return 0, errMoneyRange
	}
	cents, _ := strconv.ParseInt("0"+whole+frac+"00"[len(frac):], 10, 64)
	return Money(cents), nil
}

// String formats m with exactly two decimal places.
func (m Money) String() string {
	return string(m.appendTo(make([]byte, 0, 16)))
}

func (m Money) appendTo(b []byte) []byte {
	b = strconv.AppendInt(b, int64(m/100), 10)
	return append(b, '.', byte('0'+m%100/10), byte('0'+m%10))
}

// MarshalJSON writes m as a JSON string, "3.40".
func (m Money) MarshalJSON() ([]byte, error) {
	b := m.appendTo(append(make([]byte, 0, 18), '"'))
	return append(b, '"'), nil
}

// UnmarshalJSON reads the string MarshalJSON writes.
func (m *Money) UnmarshalJSON(b []byte) error {
	var s string
	err := json.Unmarshal(b, &s)
	if err == nil {
		*m, err = parseMoney(s)
	}
	return err
}

// moneyInput is what a client may send for an amount: a JSON string or a JSON
// number, kept as text until validation so that every bad field is reported
// together rather than failing the whole decode.
type moneyInput struct {
	text string
	set  bool
}

// UnmarshalJSON keeps a string's contents, or any other value's text: a JSON
// number's text is its exact decimal value, and parseMoney refuses what it
// cannot read (1e3, null, true, objects) rather than rounding it.
func (m *moneyInput) UnmarshalJSON(b []byte) error {
	m.set = true
	if json.Unmarshal(b, &m.text) != nil {
		m.text = string(b)
	}
	return nil
}

// Scan reads a NUMERIC column, which the driver hands over as text.
func (m *Money) Scan(src any) error {
	s, ok := src.(string)
	if !ok {
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
