package main

import (
	"encoding/json"
	"fmt"
	"testing"
)

// An amount arrives as a JSON string or number and is read from its text,
// never through a float: long decimals keep their exact value.
func TestParseMoney(t *testing.T) {
	parse := func(in string) (Money, error) {
		var mi moneyInput
		if err := json.Unmarshal([]byte(in), &mi); err != nil || !mi.set {
			t.Fatalf("%s: got %v (set %v), want it kept as text", in, err, mi.set)
		}
		return parseMoney(mi.text)
	}
	accepted := map[string]Money{
		`"0"`:              0,
		`"3.4"`:            340,
		`"3.40"`:           340,
		`"3.400"`:          340,
		`"0003.05"`:        305,
		`"1250"`:           125000,
		`"9999999999.99"`:  maxMoney,
		`"09999999999.99"`: maxMoney,
		`0.3`:              30,
		`1250.00`:          125000,
		`9999999999.99`:    maxMoney,
	}
	for in, want := range accepted {
		if got, err := parse(in); got != want || err != nil {
			t.Errorf("%s: got %d, %v; want %d", in, got, err, want)
		}
	}
	refused := map[error][]string{
		errMoneyRange:     {`"10000000000"`, `"99999999999.99"`},
		errMoneyPrecision: {`"1.005"`, `0.1000000000000000055511151231257827`},
		errMoneyNegative:  {`"-1"`, `"-0.001"`, `-1`},
		errMoneySyntax:    {`"-x"`, `""`, `".5"`, `"5."`, `"1e3"`, `1e3`, `"1,000.00"`, `" 1"`, `"+1"`, `"0x10"`, `"1.2.3"`, `"null"`, `null`, `true`},
	}
	for want, inputs := range refused {
		for _, in := range inputs {
			if got, err := parse(in); got != 0 || err != want {
				t.Errorf("%s: got %d, %v; want %v", in, got, err, want)
			}
		}
	}
}

func TestMoneyFormatAndJSON(t *testing.T) {
	cases := map[Money]string{0: "0.00", 5: "0.05", 340: "3.40", 125000: "1250.00", maxMoney: "9999999999.99"}
	for m, want := range cases {
		equal(t, fmt.Sprint(int64(m)), m.String(), want)
		b, _ := json.Marshal(m)
		var back Money
		if err := json.Unmarshal(b, &back); string(b) != `"`+want+`"` || err != nil || back != m {
			t.Errorf("%d: JSON got %s, read back as %d (%v)", int64(m), b, back, err)
		}
	}
	var m Money
	fatalIf(t, m.Scan("12.30"))
	equal(t, "scanned", m, 1230)
	for _, bad := range []any{12.3, "-1.00", nil} {
		if err := m.Scan(bad); err == nil {
			t.Errorf("Scan accepted %#v", bad)
		}
	}
	if err := json.Unmarshal([]byte(`"1.234"`), &m); err == nil {
		t.Error("UnmarshalText accepted three places")
	}
}

func BenchmarkParseMoney(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_, err := parseMoney("1250.00")
		fatalIf(b, err)
	}
}

func BenchmarkMoneyMarshalText(b *testing.B) {
	b.ReportAllocs()
	m := Money(125000)
	for b.Loop() {
		_, err := m.MarshalText()
		fatalIf(b, err)
	}
}
