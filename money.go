package main

import (
	"database/sql/driver"
	"encoding/json"
	"errors"
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
	// Leading zeros carry no value, nor do trailing zeros beyond two places
	// ("1.500" is 1.50).
	significant, places := strings.TrimLeft(whole, "0"), strings.TrimRight(frac, "0")
	switch {
	case !allDigits(whole) || dot && !allDigits(frac):
		return 0, errMoneySyntax
	case negative:
		return 0, errMoneyNegative
	case len(places) > 2:
		return 0, errMoneyPrecision
	case len(significant) > 10:
		return 0, errMoneyRange
	}
	cents, _ := strconv.ParseInt("0"+significant+places+"00"[len(places):], 10, 64)
	return Money(cents), nil
}

// String formats m with exactly two decimal places.
func (m Money) String() string {
	b, _ := m.MarshalText()
	return string(b)
}

// MarshalText writes m as String does; JSON carries it as a string, "3.40".
func (m Money) MarshalText() ([]byte, error) {
	b := strconv.AppendInt(make([]byte, 0, 16), int64(m/100), 10)
	return append(b, '.', byte('0'+m%100/10), byte('0'+m%10)), nil
}

// UnmarshalText reads the text MarshalText writes.
func (m *Money) UnmarshalText(b []byte) (err error) {
	*m, err = parseMoney(string(b))
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

// check parses the amount, the member name of the body, reporting to c what
// is wrong with it. An amount left out is nil unless required.
func (in moneyInput) check(name string, required bool, c *checker) *Money {
	m, err := parseMoney(in.text)
	switch {
	case !in.set && !required:
		return nil
	case !in.set:
		c.add(name, "is required")
	case err != nil:
		c.add(name, err.Error())
	}
	return &m
}

// Scan reads a NUMERIC column, which the driver hands over as text; any
// other value fails to parse.
func (m *Money) Scan(src any) (err error) {
	s, _ := src.(string)
	*m, err = parseMoney(s)
	return err
}

// Value hands m to the driver as exact decimal text.
func (m Money) Value() (driver.Value, error) { return m.String(), nil }
