package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// fuzzStillValid reports whether header carries, after "Bearer" and one
// space, nothing but a compact JWS that the issuer really signed and that is
// still good, judged with go-jose alone so that the service's verdict is
// checked against an independent one.
func fuzzStillValid(iss *fakeOIDC, header string) bool {
	scheme, raw, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.Count(raw, ".") != 2 || strings.Trim(raw, fuzzJWSAlphabet) != "" {
		return false
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
	if err != nil {
		return false
	}
	var claims jwt.Claims
	rsaKey, ecKey := testKey("rsa-1"), testKey("ec-1")
	if tok.Claims(rsaKey.Public(), &claims) != nil && tok.Claims(ecKey.Public(), &claims) != nil {
		return false
	}
	err = claims.ValidateWithLeeway(jwt.Expected{Issuer: iss.url, AnyAudience: jwt.Audience{iss.audience}, Time: time.Now()}, 5*time.Minute)
	return err == nil && claims.Subject != ""
}

// fuzzJWSAlphabet is what a compact JWS is made of: base64url and dots.
const fuzzJWSAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."

// The whole authenticated path, fed any Authorization header: it never
// panics or fails with 5xx, and lets through only what the issuer signed.
func FuzzBearerToken(f *testing.F) {
	iss := newFakeOIDC(f)
	auth, err := newAuthenticator(context.Background(), iss.url, []string{iss.audience}, &http.Client{Timeout: 5 * time.Second}, 5*time.Second, slog.New(slog.DiscardHandler))
	fatalIf(f, err)
	var reached atomic.Bool
	handler := auth.require("customers:read", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Store(true)
		w.WriteHeader(http.StatusOK)
	}))

	validHeader := "Bearer " + iss.token(f, "fuzz-reader", "customers:read")
	esHeader := "bearer " + iss.sign(f, iss.claims("fuzz-es", "customers:read"), withKey(testKey("ec-1")))
	idToken := iss.claims("fuzz-id-token", "customers:read")
	idToken["typ"] = "ID"
	badScp := iss.claims("fuzz-bad-scp", "customers:read")
	badScp["scp"] = []any{"customers:read", 1}
	// The seeds whose answer is known, among them tokens the issuer signed
	// that are refused all the same: a blank inside the token or a second one
	// after the scheme, an ID token, a logout token, a permission claim of the
	// wrong type.
	known := map[string]int{
		validHeader: http.StatusOK, esHeader: http.StatusOK, "": http.StatusUnauthorized,
		"Bearer " + iss.token(f, "fuzz-no-scope"):                                                   http.StatusForbidden,
		strings.Replace(validHeader, ".", ". ", 1):                                                  http.StatusUnauthorized,
		strings.Replace(validHeader, " ", "  ", 1):                                                  http.StatusUnauthorized,
		"Bearer " + iss.sign(f, idToken, withTyp("JWT")):                                            http.StatusUnauthorized,
		"Bearer " + iss.sign(f, iss.claims("fuzz-logout", "customers:read"), withTyp("logout+jwt")): http.StatusUnauthorized,
		"Bearer " + iss.sign(f, badScp):                                                             http.StatusUnauthorized,
	}
	expired := iss.claims("fuzz-reader", "customers:read")
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	rsaKey := testKey("rsa-1")
	der, _ := x509.MarshalPKIXPublicKey(rsaKey.Public().Key) // cannot fail for an RSA key
	// Every other input, these seeds among them, is judged by fuzzStillValid.
	seeds := []string{
		"Bearer " + iss.sign(f, expired),
		"Bearer " + iss.sign(f, iss.claims("fuzz-hs", "customers:read"), withKey(jose.JSONWebKey{Key: der, KeyID: "rsa-1", Algorithm: string(jose.HS256)})),
		"Bearer " + iss.sign(f, iss.claims("fuzz-forged", "customers:read"), withKey(testKey("rsa-2")), withKid("rsa-1")),
		"Bearer " + segment(map[string]any{"alg": "none"}) + "." + segment(iss.claims("fuzz-none", "customers:read")) + ".",
		"Bearer\t" + iss.token(f, "fuzz-tab", "customers:read"),
		"Bearer " + iss.token(f, "fuzz-trailing", "customers:read") + " junk",
		"", "Bearer", "Bearer ", "Basic " + base64.StdEncoding.EncodeToString([]byte("user:pass")), "Bearer a.b.c", "Bearer ....",
		"Bearer eyJhbGciOiJSUzI1NiJ9.e30.", "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIn0.bnVsbA.AAAA",
		"Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLTEifQ.eyJzdWIiOjF9.AA", "Bearer " + strings.Repeat("A", 10000),
		"Bearer \x00\xff\xfe.\x00.\x00", "Bearer  \u00a0", "ＢＥＡＲＥＲ token",
	}
	for h := range known {
		seeds = append(seeds, h)
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		reached.Store(false)
		req := httptest.NewRequest("GET", "/v1/customers", nil)
		req.Header["Authorization"] = []string{header}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)

		status := rec.Code
		if status >= 500 {
			t.Fatalf("header %q: got status %d, want no 5xx", header, status)
		}
		if want, ok := known[header]; ok && status != want {
			t.Fatalf("seed %q: got status %d, want %d", header, status, want)
		}
		mustEqual(t, fmt.Sprintf("header %q, status %d: handler reached", header, status), reached.Load(), status == http.StatusOK)
		switch status {
		case http.StatusOK, http.StatusForbidden:
			if !fuzzStillValid(iss, header) {
				t.Fatalf("header %q: got status %d, want 401 for a token the issuer did not sign", header, status)
			}
		case http.StatusUnauthorized:
			want := `Bearer error="invalid_token"`
			if header == "" {
				want = "Bearer"
			}
			mustEqual(t, fmt.Sprintf("header %q: WWW-Authenticate", header), rec.Header().Get("WWW-Authenticate"), want)
			mustEqual(t, fmt.Sprintf("header %q: Content-Type", header), rec.Header().Get("Content-Type"), "application/problem+json")
		default:
			t.Fatalf("header %q: got status %d, want 200, 401 or 403", header, status)
		}
	})
}

// fuzzBodyLimit is small so that the fuzzer reaches the too-large path.
const fuzzBodyLimit = 2048

// fuzzBody decodes data as a request body would be into v and, if that
// succeeds, runs check on it. It fails unless a refusal is one the client can
// be told about: a *requestError with status 400 or 413 whose field errors
// point into the body, or a 422 from the checks whose field errors say where
// and what. It reports whether data decoded, and whether it passed the checks.
func fuzzBody(t *testing.T, data []byte, v any, check func(*checker)) (decoded, passed bool) {
	t.Helper()
	body, err := io.ReadAll(http.MaxBytesReader(httptest.NewRecorder(), io.NopCloser(bytes.NewReader(data)), fuzzBodyLimit))
	if err != nil {
		err = jsonError(err)
	} else {
		err = decodeStrict(body, v)
	}
	if err != nil {
		re, ok := err.(*requestError)
		if !ok {
			t.Fatalf("body %q: got %T %v, want a *requestError", data, err, err)
		}
		if re.status != http.StatusBadRequest && re.status != http.StatusRequestEntityTooLarge {
			t.Fatalf("body %q: got status %d (%s), want 400 or 413", data, re.status, re.detail)
		}
		if re.detail == "" {
			t.Fatalf("body %q: refused with no detail", data)
		}
		for _, fe := range re.fields {
			if (fe.Pointer != "#" && !strings.HasPrefix(fe.Pointer, "#/")) || fe.Detail == "" {
				t.Fatalf("body %q: field error %+v does not point into the body", data, fe)
			}
		}
		return false, false
	}
	c := newChecker()
	check(c)
	if err = c.err(); err == nil {
		return true, true
	}
	if re, ok := err.(*requestError); !ok || re.status != http.StatusUnprocessableEntity {
		t.Fatalf("body %q: checks gave %T %v, want a 422 *requestError", data, err, err)
	}
	for _, fe := range c.fields {
		if !strings.HasPrefix(fe.Pointer, "#") || fe.Detail == "" {
			t.Fatalf("body %q: field error %+v does not say where and what", data, fe)
		}
	}
	return true, false
}

// fuzzJSONBodies adds the bodies that every decoder should meet (the
// malformed, the oversized, the deeply nested and the wrongly typed), then
// the target's own.
func fuzzJSONBodies(f *testing.F, own []string) {
	for _, s := range append([]string{
		``, ` `, `null`, `true`, `0`, `"x"`, `[]`, `{}`, `{`, `}`, `{"`, `{"a":}`, `{}{}`, `{} x`, `{}   `,
		"\ufeff{}", "{\"\xff\":1}", `{"\u0000":1}`, `{"code":"\ud800"}`,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
		`{"unknown":1}`, `{"a":{"b":{"c":[1,2,{"d":null}]}}}`,
		`{"` + strings.Repeat("k", 3000) + `":1}`,
		`{"x":"` + strings.Repeat("a", fuzzBodyLimit) + `"}`,
	}, own...) {
		f.Add([]byte(s))
	}
}

func FuzzDecodeCustomer(f *testing.F) {
	fuzzJSONBodies(f, []string{
		`{"code":"CUST-0007","name":"Amina Njoroge","phone":"+254712345678","email":"amina@example.com"}`,
		`{"code":"C1","name":"A","phone":"+254712345678"}`, `{"code":"C1","name":"A","phone":"+254712345678","email":null}`,
		`{"code":"C1","name":"A","phone":"+254712345678","email":""}`,
		`{"code":"","name":" ","phone":"0712345678","email":"Amina <amina@example.com>"}`,
		`{"code":"Ünïcode","name":"a\u0000b","phone":"+0","email":"a@b"}`, `{"code":1,"name":2,"phone":3,"email":4}`,
		`{"code":["C1"],"name":{},"phone":null}`,
		`{"code":"` + strings.Repeat("C", 33) + `","name":"` + strings.Repeat("n", 201) + `"}`,
		`{"code":"C1","code":"C2"}`, `{"Code":"C1","NAME":"x"}`,
		`{"phone":"+` + strings.Repeat("9", 20) + `"}`,
		`{"email":"@"}`, `{"email":"a@b@c.d"}`, `{"email":"\"a b\"@example.com"}`, `{"email":"a@[127.0.0.1]"}`,
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		var in customerInput
		fuzzBody(t, data, &in, in.check)
	})
}

func FuzzDecodeOrder(f *testing.F) {
	fuzzJSONBodies(f, []string{
		`{"customer_id":7,"item":"whole-exome-sequencing","amount":"1250.00","currency":"KES","time":"2026-11-21T09:30:00Z","channel":"sms"}`,
		`{"customer_code":"CUST-0007","item":"x","amount":3.4}`,
		`{"customer_id":7,"customer_code":"C","item":"x","amount":"1"}`, `{"customer_id":0,"item":"","amount":"-1"}`,
		`{"customer_id":-1,"item":"x","amount":"1.234"}`, `{"customer_id":1.5,"item":"x","amount":1e3}`,
		`{"customer_id":9223372036854775808,"item":"x","amount":"99999999999.99"}`,
		`{"customer_id":"7","item":"x","amount":null}`, `{"customer_id":7,"item":"x","amount":true}`,
		`{"customer_id":7,"item":"x","amount":{"v":1}}`, `{"customer_id":7,"item":"x","amount":[1]}`,
		`{"customer_id":7,"item":"x","amount":"1","currency":"kes","time":"yesterday","channel":"pigeon"}`,
		`{"customer_id":7,"item":"x","amount":"1","time":"0000-01-01T00:00:00Z"}`,
		`{"customer_id":7,"item":"x","amount":"1","time":"9999-12-31T23:59:59.999999999+14:00"}`,
		`{"customer_id":7,"item":"x","amount":"1","time":"2026-11-21T09:30:00-23:59"}`,
		`{"customer_id":7,"item":"x","amount":"1","currency":null,"time":null,"channel":null}`,
		`{"customer_id":7,"item":"\u202e\u0007","amount":"0"}`, `{"customer_id":7,"item":"x","amount":"0x10"}`,
		`{"customer_id":7,"item":"x","amount":-0}`,
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		var in orderInput
		var o newOrder
		decoded, passed := fuzzBody(t, data, &in, func(c *checker) { o = in.check(time.Now(), fuzzChannels, c) })
		if !decoded {
			return
		}
		if passed && (o.Amount < 0 || o.Amount > maxMoney || o.Time.Before(earliestTime) || o.Time.After(latestTime) || o.Time.Location() != time.UTC) {
			t.Fatalf("body %q: accepted %+v, outside the amounts and times allowed", data, o)
		}
		mustEqual(t, fmt.Sprintf("body %q: the fingerprint's bytes (a SHA-256)", data), len(in.fingerprint(o)), 32)
	})
}

func FuzzDecodeNumber(f *testing.F) {
	fuzzJSONBodies(f, []string{
		`{"value":"+55 84 91234-4321","monthyPrice":"0.03","setupPrice":"3.40","currency":"U$"}`,
		`{"value":"+5584912344321","monthlyPrice":0.03,"setupPrice":3.4,"currency":"USD"}`,
		`{"value":"+5584912344321","monthyPrice":"0.03","monthlyPrice":"0.04","setupPrice":"1","currency":"U$"}`,
		`{"value":"(84) 9123.4432","monthyPrice":"1","setupPrice":"1","currency":"€"}`,
		`{"value":"1234567","monthyPrice":"-1","setupPrice":"1.001","currency":""}`,
		`{"value":"+1234567890123456","monthyPrice":"1e2","setupPrice":"10000000000","currency":"123456789"}`,
		`{"value":"++12345678","monthyPrice":null,"setupPrice":null,"currency":null}`,
		`{"value":null}`, `{"value":12345678}`, `{"currency":" U$"}`, `{"currency":"\u0000"}`,
		`{"currency":"\u200b"}`, `{"value":"１２３４５６７８９"}`, `{"setupPrice":"３.４０"}`,
		`{"value":"` + strings.Repeat("1", 40) + `"}`,
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, partial := range []bool{false, true} {
			var in numberInput
			var p numberPatch
			if decoded, passed := fuzzBody(t, data, &in, func(c *checker) { p = in.check(partial, c) }); !decoded {
				return
			} else if !passed {
				continue
			}
			for _, m := range []*Money{p.monthly, p.setup} {
				if m != nil && (*m < 0 || *m > maxMoney) {
					t.Fatalf("body %q: accepted price %d outside 0..%d", data, *m, maxMoney)
				}
			}
			if !partial && (p.value == nil || p.currency == nil || p.monthly == nil || p.setup == nil ||
				checkNumberValue(*p.value) != "" || checkNumberCurrency(*p.currency) != "") {
				t.Fatalf("body %q: accepted %+v, which breaks the rules", data, p)
			}
		}
	})
}

// maxMoney is the largest amount NUMERIC(12,2) holds: 9999999999.99.
const maxMoney Money = 999_999_999_999

// fuzzPlainDecimal is what the money rules call a decimal: digits, and at
// most one dot followed by digits.
var fuzzPlainDecimal = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`)

// parseMoney agrees with exact rational arithmetic on every input: it
// accepts a plain decimal exactly when it is a whole number of cents within
// range, and its String parses back to the same value.
func FuzzParseMoney(f *testing.F) {
	for _, s := range []string{
		"0", "3", "3.4", "3.40", "3.400", "1.500", "0.01", "0.001", "9999999999.99", "9999999999.990",
		"10000000000", "10000000000.00", "00000000000001.00", "0009999999999.99", "99999999999",
		"-1", "-0", "-0.00", "--1", "-1.001", "-", "", ".", "1.", ".5", "1..2", "1.2.3", "1e3", "1E-2",
		"+1", " 1", "1 ", "0x10", "١٢", "NaN", "Inf", "1_000", "1,50", "\x00", "3.4\x00",
		strings.Repeat("9", 40), "0." + strings.Repeat("0", 40), "1." + strings.Repeat("0", 400) + "1",
		strings.Repeat("-", 100) + "1",
	} {
		f.Add(s)
	}
	hundred := big.NewRat(100, 1)
	limit := new(big.Rat).SetFrac64(int64(maxMoney), 100)
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseMoney(s)
		if err != nil && !errors.Is(err, errMoneySyntax) && !errors.Is(err, errMoneyNegative) && !errors.Is(err, errMoneyPrecision) && !errors.Is(err, errMoneyRange) {
			t.Fatalf("parseMoney(%q): got error %v, want one of the errMoney errors", s, err)
		}
		if !fuzzPlainDecimal.MatchString(s) {
			if err == nil {
				t.Fatalf("parseMoney(%q) = %v, want an error for text that is not a plain decimal", s, m)
			}
			return
		}
		r, ok := new(big.Rat).SetString(s)
		if !ok {
			t.Fatalf("big.Rat cannot read the decimal %q", s)
		}
		cents := new(big.Rat).Mul(r, hundred)
		want := cents.IsInt() && r.Cmp(limit) <= 0
		mustEqual(t, fmt.Sprintf("parseMoney(%q) = %v, %v: accepted, as exact arithmetic says", s, m, err), err == nil, want)
		if err != nil {
			return
		}
		mustEqual(t, fmt.Sprintf("parseMoney(%q) in cents", s), int64(m), cents.Num().Int64())
		if m < 0 || m > maxMoney {
			t.Fatalf("parseMoney(%q) = %d, outside 0..%d", s, m, maxMoney)
		}
		back, err := parseMoney(m.String())
		if err != nil || back != m {
			t.Fatalf("parseMoney(%q) = %d, whose String %q parses to %d, %v", s, m, m.String(), back, err)
		}
	})
}

// An import's CSV, whatever its bytes, is read and checked without a panic,
// and every refusal is one the client can be told about (400, 413 or 422).
func FuzzCSVImport(f *testing.F) {
	for _, s := range []string{
		"code,name,phone,email\nCUST-0007,Amina Njoroge,+254712345678,amina@example.com\n",
		"code,name,phone\r\nC1,A,+254712345678\r\nC2,B,+254712345679\r\n", "\ufeffCode , NAME,Phone\nC1,A,+254712345678\n",
		"code,name,phone,email\nC1,A,+254712345678,\nC1,\"Quoted, name\",0712,not-an-email\n",
		"code,name,phone\nC1,\"multi\nline\",+254712345678\n", "code,name,phone\nC1,A\n",
		"code,name,phone\nC1,A,+254712345678,extra\n", "code,code\nC1,C2\n", "code,nickname\nC1,x\n", ",\n,\n",
		"code\n\"unterminated\n", "code\na\"b\n", "code,name,phone\n\n\n", "code,name,phone\n", "", "\n",
		"\x00,\xff\n\x00,\xff\n", "code;name;phone\nC1;A;+254712345678\n",
		"code,name,phone\n" + strings.Repeat("C1,A,+254712345678\n", 50),
		"customer_code,item,amount\nC1,x,1.00\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzCSV(t, data, []string{"code", "name", "phone", "email"}, customerFromCSV, (*customerInput).check)
		fuzzCSV(t, data, []string{"customer_id", "customer_code", "item", "amount", "currency", "time", "channel"}, orderFromCSV,
			func(in *orderInput, c *checker) { in.check(time.Now(), fuzzChannels, c) })
	})
}

// fuzzCSV reads data as an import with the columns and checks each row,
// failing unless every refusal is a *requestError with status 400, 413 or
// 422 whose field errors name their rows, and at most maxFieldErrors of them.
func fuzzCSV[T any](t *testing.T, data []byte, columns []string, fromCSV func(map[string]string) T, check func(*T, *checker)) {
	t.Helper()
	batch, err := readCSV(bytes.NewReader(data), columns, fromCSV)
	c := newChecker()
	for i := range batch.items {
		c.at(i, true)
		check(&batch.items[i], c)
	}
	for _, err := range []error{err, c.err()} {
		if err == nil {
			continue
		}
		e, ok := err.(*requestError)
		if !ok || e.status != http.StatusBadRequest && e.status != http.StatusRequestEntityTooLarge && e.status != http.StatusUnprocessableEntity {
			t.Fatalf("CSV %q: got %T %v, want a *requestError with status 400, 413 or 422", data, err, err)
		}
		for _, fe := range e.fields {
			if fe.Detail == "" || (fe.Row > 0 && !strings.HasPrefix(fe.Detail, "row ")) {
				t.Fatalf("CSV %q: field error %+v does not name its row", data, fe)
			}
		}
	}
	if len(c.fields) > maxFieldErrors || c.total < len(c.fields) {
		t.Fatalf("CSV %q: %d errors listed of %d, want at most %d", data, len(c.fields), c.total, maxFieldErrors)
	}
}

// fuzzChannels are the channels production registers.
var fuzzChannels = func() *channels {
	cs := newChannels()
	cs.register("sms", &recordingSender{}, "phone")
	cs.register("email", &recordingSender{}, "email")
	return cs
}()

// decodeCursor accepts exactly the cursors encode writes for the times and
// ids a stored row can have, and so never hands PostgreSQL a value it refuses.
func FuzzCursor(f *testing.F) {
	// Cursors as encode writes them, then ones it never writes.
	for _, s := range []string{`{"k":99,"i":1}`, `{"k":111,"t":"2026-11-21T09:30:00Z","i":42}`, `{"k":111,"i":1}`,
		"", "==", `{"k":111,"t":"9999-12-31T23:00:00-05:00","i":1}`, `{"k":110,"i":0}`, `{"k":99,"i":-1}`} {
		f.Add(base64.RawURLEncoding.EncodeToString([]byte(s)))
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, kind := range []byte{'c', 'n', 'o'} {
			c, ok := decodeCursor(s, kind)
			if !ok {
				continue
			}
			if c.Kind != kind || c.ID <= 0 || c.Time.Year() < 1 || c.Time.Year() > 9999 || (kind != 'o' && !c.Time.IsZero()) {
				t.Fatalf("%q: decoded as %+v for kind %c", s, c, kind)
			}
			if again, ok := decodeCursor(c.encode(), kind); !ok || again != c {
				t.Fatalf("%q: %+v encodes to %q, which decodes to %+v, %v", s, c, c.encode(), again, ok)
			}
		}
	})
}
