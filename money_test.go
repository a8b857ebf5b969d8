package main

import (
	"encoding/json"
	"testing"
)

func TestParseMoney(t *testing.T) {
	cases := []struct {
		in   string
		want Money
		err  error
	}{
		{"0", 0, nil},
		{"3.4", 340, nil},
		{"3.40", 340, nil},
		{"3.400", 340, nil},
		{"0003.05", 305, nil},
		{"1250", 125000, nil},
		{"9999999999.99", maxMoney, nil},
		{"09999999999.99", maxMoney, nil},
		{"10000000000", 0, errMoneyRange},
		{"99999999999.99", 0, errMoneyRange},
		{"1.005", 0, errMoneyPrecision},
		{"-1", 0, errMoneyNegative},
		{"-0.001", 0, errMoneyNegative},
		{"-x", 0, errMoneySyntax},
		{"", 0, errMoneySyntax},
		{".5", 0, errMoneySyntax},
		{"5.", 0, errMoneySyntax},
		{"1e3", 0, errMoneySyntax},
		{"1,000.00", 0, errMoneySyntax},
		{" 1", 0, errMoneySyntax},
		{"+1", 0, errMoneySyntax},
		{"0x10", 0, errMoneySyntax},
		{"1.2.3", 0, errMoneySyntax},
		{"null", 0, errMoneySyntax},
	}
	for _, tc := range cases {
		got, err := parseMoney(tc.in)
		if got != tc.want || err != tc.err {
			t.Errorf("parseMoney(%q): got %d, %v; want %d, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestMoneyFormatAndJSON(t *testing.T) {
	cases := map[Money]string{0: "0.00", 5: "0.05", 340: "3.40", 125000: "1250.00", maxMoney: "9999999999.99"}
	for m, want := range cases {
		if got := m.String(); got != want {
			t.Errorf("%d: got %q, want %q", int64(m), got, want)
		}
		b, _ := json.Marshal(m)
		if string(b) != `"`+want+`"` {
			t.Errorf("%d: JSON got %s", int64(m), b)
		}
	}
	// Input is read from the number's text, never through a float: 0.1+0.2
	// style inputs and long decimals keep their exact value.
	for in, want := range map[string]Money{`"0.30"`: 30, `0.3`: 30, `1250.00`: 125000, `9999999999.99`: maxMoney, `0.1000000000000000055511151231257827`: -1} {
		var mi moneyInput
		if err := json.Unmarshal([]byte(in), &mi); err != nil {
			t.Fatal(err)
		}
		got, err := parseMoney(mi.text)
		if want == -1 {
			if err != errMoneyPrecision {
				t.Errorf("%s: got %v, want a precision error rather than rounding", in, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%s: got %d, %v; want %d", in, got, err, want)
		}
	}
	var m Money
	if err := m.Scan("12.30"); err != nil || m != 1230 {
		t.Errorf("Scan: got %d, %v", m, err)
	}
	if err := m.Scan(12.3); err == nil {
		t.Error("Scan accepted a float")
	}
	if err := m.Scan("-1.00"); err == nil {
		t.Error("Scan accepted a negative amount")
	}
	if err := json.Unmarshal([]byte(`"1.234"`), &m); err == nil {
		t.Error("UnmarshalJSON accepted three places")
	}
}

func BenchmarkParseMoney(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseMoney("1250.00"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMoneyMarshalJSON(b *testing.B) {
	b.ReportAllocs()
	m := Money(125000)
	for b.Loop() {
		if _, err := m.MarshalJSON(); err != nil {
			b.Fatal(err)
		}
	}
}
