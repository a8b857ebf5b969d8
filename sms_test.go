package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

const (
	testUsername = "acme"
	testAPIKey   = "atsk_0123456789abcdef0123456789abcdef"
	testTo       = "+254711000111"
)

var testNotice = notice{OrderID: 42, To: testTo, Name: "Amina Njoroge", Item: "whole-exome-sequencing", Amount: 125000, Currency: "KES"}

func newTestSender(f *atFake, senderID string, timeout time.Duration) *africasTalking {
	c := f.srv.Client()
	c.Timeout = timeout
	return newAfricasTalking(f.srv.URL, testUsername, testAPIKey, senderID, c)
}

// asSendError fails the test unless err is exactly a *SendError.
func asSendError(t *testing.T, err error) *SendError {
	t.Helper()
	se, ok := err.(*SendError)
	if !ok {
		t.Fatalf("error: got %v (%T), want *SendError", err, err)
	}
	return se
}

func TestAtBaseURL(t *testing.T) {
	for username, want := range map[string]string{"sandbox": "https://api.sandbox.africastalking.com", "acme": "https://api.africastalking.com", "": "https://api.africastalking.com"} {
		if got := atBaseURL(username); got != want {
			t.Errorf("atBaseURL(%q): got %q, want %q", username, got, want)
		}
	}
}

func TestSMSText(t *testing.T) {
	long := strings.Repeat("comprehensive-genomic-profile-", 6) // 180 characters
	tail := " (KES 1.00) has been placed. Thank you!"
	for _, tt := range []struct {
		name            string
		n               notice
		want            string
		length, segment int // septets or UTF-16 units
	}{
		{"short order unchanged", notice{OrderID: 12, Name: "Amina Njoroge", Item: "whole-exome-sequencing", Amount: 125000, Currency: "KES"},
			"Hi Amina, your order #12 for whole-exome-sequencing (KES 1250.00) has been placed. Thank you!", 93, gsmSegment},
		{"first name only, any spaces around it", notice{OrderID: 7, Name: " \u00a0Baraka\u2009Otieno Odhiambo ", Item: "kit", Amount: 5, Currency: "USD"},
			"Hi Baraka, your order #7 for kit (USD 0.05) has been placed. Thank you!", 71, gsmSegment},
		{"long item cut to fit 160, é is GSM-7", notice{OrderID: 123456789, Name: "José Njoroge", Item: long, Amount: maxMoney, Currency: "KES"},
			"Hi José, your order #123456789 for " + long[:74] + "... (KES 9999999999.99) has been placed. Thank you!", 160, gsmSegment},
		{"extension characters count two septets", notice{OrderID: 99, Name: "Amina", Item: strings.Repeat("[a]{b}", 30), Amount: 100, Currency: "KES"},
			"Hi Amina, your order #99 for " + strings.Repeat("[a]{b}", 8) + "[a]{b..." + tail, 159, gsmSegment},
		{"euro sign stays GSM-7, two septets", notice{OrderID: 5, Name: "Amina", Item: "panel €", Amount: 100, Currency: "EUR"},
			"Hi Amina, your order #5 for panel € (EUR 1.00) has been placed. Thank you!", 75, gsmSegment},
		{"typographic characters become GSM-7 and fit 160, not 70", notice{OrderID: 6, Name: "Ng’ang’a", Item: "“deluxe” O’Brien panel — full‒report… « A–Z »", Amount: 100, Currency: "KES"},
			`Hi Ng'ang'a, your order #6 for "deluxe" O'Brien panel - full-report... " A-Z " (KES 1.00) has been placed. Thank you!`, 117, gsmSegment},
		{"very long first name cut after the item", notice{OrderID: 8, Name: strings.Repeat("Bartholomew", 12) + " Kamau", Item: "kit", Amount: 100, Currency: "KES"},
			"Hi Bartholom..., your order #8 for kit" + tail, 77, gsmSegment},
		{"UCS-2 name with a short order fits 70", notice{OrderID: 7, Name: "Zoë Wanjiru", Item: "kit", Amount: 500, Currency: "KES"},
			"Hi Zoë, your order #7 for kit (KES 5.00) has been placed. Thank you!", 68, ucs2Segment},
		{"an emoji is two UTF-16 units", notice{OrderID: 3, Name: "Amina", Item: "🧬", Amount: 100, Currency: "KES"},
			"Hi Amina, your order #3 for 🧬" + tail, 69, ucs2Segment},
		// "wh..." would fit, but an item is never cut below 9 characters.
		{"UCS-2 text that fits only with an item under 9 is sent whole", notice{OrderID: 7, Name: "Zoë", Item: "whole-exome", Amount: 500, Currency: "KES"},
			"Hi Zoë, your order #7 for whole-exome (KES 5.00) has been placed. Thank you!", 76, ucs2Segment},
		// The fixed words and a 9-character item are over 70 already.
		{"UCS-2 text that no cut brings to 70 is sent whole", notice{OrderID: 42, Name: "Wanjirũ Kamau", Item: "whole-exome-sequencing-premium", Amount: 125000, Currency: "KES"},
			"Hi Wanjirũ, your order #42 for whole-exome-sequencing-premium (KES 1250.00) has been placed. Thank you!", 103, ucs2Segment},
		{"UCS-2 only in the item's tail: the cut makes it GSM-7", notice{OrderID: 3, Name: "Amina", Item: "exome-panel-ゲノム解析", Amount: 100, Currency: "JPY"},
			"Hi Amina, your order #3 for exome-panel-... (JPY 1.00) has been placed. Thank you!", 82, gsmSegment},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := smsText(tt.n)
			if length, segment := smsSize(got); got != tt.want || length != tt.length || segment != tt.segment {
				t.Errorf("smsText: got %q (%d of %d), want %q (%d of %d)", got, length, segment, tt.want, tt.length, tt.segment)
			}
		})
	}
	for text, want := range map[string][2]int{"Hi José, 5 € {x}": {19, gsmSegment}, "Ça coûte 3 $": {12, ucs2Segment}, "Hi 😀": {5, ucs2Segment}} {
		if length, segment := smsSize(text); [2]int{length, segment} != want {
			t.Errorf("smsSize(%q): got %d, %d; want %v", text, length, segment, want)
		}
	}
}

func TestAfricasTalkingSendAccepted(t *testing.T) {
	for _, tc := range []struct {
		code             int
		status, senderID string
	}{{100, "Processed", ""}, {102, "Queued", ""}, {101, "Success", ""}, {101, "Success", "ACME"}} {
		t.Run(fmt.Sprintf("%d %s %q", tc.code, tc.status, tc.senderID), func(t *testing.T) {
			f := newATFake(t, testAPIKey)
			wantID := "ATXid_chosen"
			if tc.code != 101 { // 101 Success is how the fake itself accepts
				f.setReply(atRecipientAnswer(tc.code, tc.status, wantID))
			}
			id, err := newTestSender(f, tc.senderID, 5*time.Second).Send(t.Context(), testNotice)
			r := f.requests()
			if tc.code == 101 && len(r) == 1 {
				wantID = r[0].messageID
			}
			if err != nil || id != wantID || id == "" {
				t.Fatalf("Send: got %q, %v; want %q, nil", id, err, wantID)
			}
			if len(r) != 1 || r[0].username != testUsername || r[0].to != testTo || r[0].message != smsText(testNotice) || r[0].apiKey != testAPIKey || r[0].from != tc.senderID {
				t.Errorf("requests: got %+v, want one from %s to %s with apiKey, from %q and the order's text", r, testUsername, testTo, tc.senderID)
			}
		})
	}
}

func TestAfricasTalkingSendFailures(t *testing.T) {
	none := func(code int, status string) http.HandlerFunc { return atRecipientAnswer(code, status, "None") }
	emptyRecipients := func(msg string) string { return fmt.Sprintf(`{"SMSMessageData":{"Message":%q,"Recipients":[]}}`, msg) }
	huge := emptyRecipients(strings.Repeat("x", 70<<10))
	for _, tc := range []struct {
		name                       string
		reply                      http.HandlerFunc
		permanent, uncertain, wrap bool
		reason                     string
	}{
		{"401 RiskHold", none(401, "RiskHold"), true, false, false, "africastalking: RiskHold (statusCode 401)"},
		{"402 InvalidSenderId", none(402, "InvalidSenderId"), true, false, false, "africastalking: InvalidSenderId (statusCode 402)"},
		{"403 InvalidPhoneNumber", none(403, "InvalidPhoneNumber"), true, false, false, "africastalking: InvalidPhoneNumber (statusCode 403)"},
		{"404 UnsupportedNumberType", none(404, "UnsupportedNumberType"), true, false, false, "africastalking: UnsupportedNumberType (statusCode 404)"},
		{"405 InsufficientBalance", none(405, "InsufficientBalance"), false, false, false, "africastalking: InsufficientBalance (statusCode 405)"},
		{"406 UserInBlacklist", none(406, "UserInBlacklist"), true, false, false, "africastalking: UserInBlacklist (statusCode 406)"},
		{"407 CouldNotRoute", none(407, "CouldNotRoute"), false, false, false, "africastalking: CouldNotRoute (statusCode 407)"},
		{"500 InternalServerError", none(500, "InternalServerError"), false, false, false, "africastalking: InternalServerError (statusCode 500)"},
		{"501 GatewayError", none(501, "GatewayError"), false, false, false, "africastalking: GatewayError (statusCode 501)"},
		{"502 RejectedByGateway", none(502, "RejectedByGateway"), true, false, false, "africastalking: RejectedByGateway (statusCode 502)"},
		{"999 SomethingNew", none(999, "SomethingNew"), false, false, false, "africastalking: SomethingNew (statusCode 999)"},
		{"HTTP 401", atAnswer(401, "text/plain", "The supplied authentication is invalid\n"), true, false, false, "africastalking: HTTP 401: The supplied authentication is invalid"},
		{"HTTP 500", atAnswer(500, "text/plain", "Internal Server Error"), false, false, false, "africastalking: HTTP 500: Internal Server Error"},
		{"HTTP 503 empty body", atAnswer(503, "text/plain", ""), false, false, false, "africastalking: HTTP 503: Service Unavailable"},
		{"HTTP 429", atAnswer(429, "text/plain", "Too many requests"), false, false, false, "africastalking: HTTP 429: Too many requests"},
		{"HTTP 400", atAnswer(400, "text/plain", "Invalid username"), true, false, false, "africastalking: HTTP 400: Invalid username"},
		{"HTTP 302 without location", atAnswer(302, "text/plain", ""), false, false, false, "africastalking: HTTP 302: Found"},
		{"long odd body bounded", atAnswer(400, "text/plain", "a\x00b\n\xff"+strings.Repeat("é", 300)), true, false, false, "africastalking: HTTP 400: a b \uFFFD" + strings.Repeat("é", 168) + "…"},
		{"no recipients: invalid sender id", atAnswer(201, "application/json", emptyRecipients("InvalidSenderId")), true, false, false, "africastalking: InvalidSenderId"},
		{"no recipients: blacklist", atAnswer(200, "application/json", emptyRecipients("User is in blacklist")), true, false, false, "africastalking: User is in blacklist"},
		{"no recipients: insufficient balance", atAnswer(201, "application/json", emptyRecipients("Insufficient Balance")), false, false, false, "africastalking: Insufficient Balance"},
		{"no recipients, no message", atAnswer(201, "application/json", `{}`), false, true, false, "africastalking: not the expected answer (HTTP 201): {}"},
		{"garbage body", atAnswer(201, "text/html", "<html>Bad gateway</html>"), false, true, true, "africastalking: not the expected answer (HTTP 201): <html>Bad gateway</html>"},
		{"body over 64 KiB", atAnswer(201, "application/json", huge), false, true, true, ("africastalking: not the expected answer (HTTP 201): " + huge)[:199] + "…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newATFake(t, testAPIKey)
			f.setReply(tc.reply)
			id, err := newTestSender(f, "", 5*time.Second).Send(t.Context(), testNotice)
			se := asSendError(t, err)
			if id != "" || se.Permanent != tc.permanent || se.Uncertain != tc.uncertain || (se.Err != nil) != tc.wrap || !se.RetryAt.IsZero() || se.Reason != tc.reason {
				t.Errorf("got id %q Permanent %v Uncertain %v Err %v RetryAt %v Reason %q; want \"\", %v, %v, a cause %v, none (only 409 sets it), %q",
					id, se.Permanent, se.Uncertain, se.Err, se.RetryAt, se.Reason, tc.permanent, tc.uncertain, tc.wrap, tc.reason)
			}
		})
	}
}

func TestAfricasTalkingDoNotDisturbRetryAt(t *testing.T) {
	day := func(d, h, m, s int) time.Time { return time.Date(2026, 3, d, h, m, s, 0, time.UTC) }
	for _, tc := range []struct{ now, want time.Time }{
		{day(10, 6, 59, 0), day(10, 7, 0, 0)},                              // 07:59 WAT: this morning
		{day(10, 7, 0, 0), day(11, 7, 0, 0)},                               // 08:00 WAT exactly: tomorrow's
		{day(10, 12, 0, 0), day(11, 7, 0, 0)},                              // 13:00 WAT, after 08:00
		{day(10, 20, 30, 0), day(11, 7, 0, 0)},                             // 21:30 WAT
		{day(10, 23, 30, 0), day(11, 7, 0, 0)},                             // 00:30 WAT, already the next day
		{day(31, 23, 59, 59), time.Date(2026, 4, 1, 7, 0, 0, 0, time.UTC)}, // 00:59:59 WAT on the 1st of April
	} {
		f := newATFake(t, testAPIKey)
		f.setReply(atRecipientAnswer(409, "DoNotDisturbRejection", "None"))
		at := newTestSender(f, "", 5*time.Second)
		at.now = func() time.Time { return tc.now }
		_, err := at.Send(t.Context(), testNotice)
		if se := asSendError(t, err); !se.RetryAt.Equal(tc.want) || se.Permanent || se.Uncertain || se.Reason != "africastalking: DoNotDisturbRejection (statusCode 409)" {
			t.Errorf("at %v: got RetryAt %v Permanent %v Uncertain %v Reason %q, want %v, false, false, the status", tc.now, se.RetryAt.UTC(), se.Permanent, se.Uncertain, se.Reason, tc.want)
		}
	}
}

func TestAfricasTalkingSendTransport(t *testing.T) {
	headersThenHang := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"SMSMessageData":`))
		w.(http.Flusher).Flush()
		atHang(w, r)
	}
	for _, tc := range []struct {
		name                       string
		reply                      http.HandlerFunc // nil: nothing listens any more
		cancel, uncertain, timeout bool             // cancel: ctx is cancelled before the client's timeout
		reason                     string
	}{
		{"hangs after reading the request", atHang, false, true, true, "africastalking: request sent, no answer: "},
		{"hangs in the body", headersThenHang, false, true, true, "africastalking: reading response: "},
		{"drops the connection", atDrop, false, true, false, "africastalking: request sent, no answer: "},
		{"context cancelled", atHang, true, true, false, "africastalking: request sent, no answer: "},
		{"connection refused", nil, false, false, false, "africastalking: request failed: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newATFake(t, testAPIKey)
			if tc.reply == nil {
				f.srv.Close()
			} else {
				f.setReply(tc.reply)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			timeout := 200 * time.Millisecond
			if tc.cancel {
				timeout = time.Minute
				time.AfterFunc(50*time.Millisecond, cancel)
			}
			start := time.Now()
			_, err := newTestSender(f, "", timeout).Send(ctx, testNotice)
			if elapsed := time.Since(start); elapsed > 3*time.Second {
				t.Errorf("elapsed: got %v, want about 200ms (the timeout or the cancel)", elapsed)
			}
			se := asSendError(t, err)
			if se.Permanent || se.Uncertain != tc.uncertain || !strings.HasPrefix(se.Reason, tc.reason) || strings.Contains(se.Reason, testAPIKey) || se.Err == nil {
				t.Errorf("got Permanent %v Uncertain %v Reason %q Err %v; want false, %v, %q..., the cause", se.Permanent, se.Uncertain, se.Reason, se.Err, tc.uncertain, tc.reason)
			}
			var ne net.Error
			if timedOut := errors.As(err, &ne) && ne.Timeout(); timedOut != tc.timeout {
				t.Errorf("Err %v: got a timeout %v, want %v", se.Err, timedOut, tc.timeout)
			}
			if canceled := errors.Is(err, context.Canceled); canceled != tc.cancel {
				t.Errorf("Err %v: got context.Canceled %v, want %v", se.Err, canceled, tc.cancel)
			}
		})
	}
}

func TestAfricasTalkingSendBadBaseURL(t *testing.T) {
	_, err := newAfricasTalking("http://\x7f", testUsername, testAPIKey, "", &http.Client{Timeout: time.Second}).Send(t.Context(), testNotice)
	if se := asSendError(t, err); !se.Permanent || !strings.HasPrefix(se.Reason, "africastalking: building request: ") {
		t.Errorf("got Permanent %v Reason %q, want true, \"africastalking: building request: ...\"", se.Permanent, se.Reason)
	}
}

func TestAfricasTalkingReasonNeverContainsAPIKey(t *testing.T) {
	for name, reply := range map[string]http.HandlerFunc{
		"401 echoing the key":             atAnswer(401, "text/plain", "The supplied authentication is invalid: apiKey="+testAPIKey),
		"key straddling the trim point":   atAnswer(400, "text/plain", strings.Repeat("a", 150)+testAPIKey),
		"request refusal echoing it":      atAnswer(201, "application/json", `{"SMSMessageData":{"Message":"Bad key `+testAPIKey+`","Recipients":[]}}`),
		"recipient status echoing it":     atRecipientAnswer(403, "InvalidPhoneNumber for "+testAPIKey, "None"),
		"unparseable 2xx body echoing it": atAnswer(201, "text/plain", "apiKey: "+testAPIKey),
	} {
		t.Run(name, func(t *testing.T) {
			f := newATFake(t, testAPIKey)
			f.setReply(reply)
			_, err := newTestSender(f, "", 5*time.Second).Send(t.Context(), testNotice)
			if se := asSendError(t, err); strings.Contains(se.Reason, testAPIKey[:8]) || !strings.Contains(se.Reason, "[redacted]") {
				t.Errorf("Reason: got %q, want the key replaced by [redacted]", se.Reason)
			}
		})
	}
}

func TestParseDeliveryReport(t *testing.T) {
	for _, tc := range []struct {
		name                string
		form                url.Values
		wantStatus, wantWhy string // wantWhy "error": an error is expected
	}{
		{"Success", url.Values{"id": {"ATXid_1"}, "status": {"Success"}, "phoneNumber": {testTo}, "networkCode": {"63902"}, "retryCount": {"0"}}, "delivered", ""},
		{"Failed", url.Values{"id": {"ATXid_1"}, "status": {"Failed"}, "failureReason": {"DeliveryFailure"}}, "undelivered", "Failed: DeliveryFailure"},
		{"Rejected", url.Values{"id": {"ATXid_1"}, "status": {"Rejected"}, "failureReason": {"UserInBlackList"}}, "undelivered", "Rejected: UserInBlackList"},
		{"Rejected without a reason", url.Values{"id": {"ATXid_1"}, "status": {"Rejected"}}, "undelivered", "Rejected"},
		{"AbsentSubscriber", url.Values{"id": {"ATXid_1"}, "status": {"AbsentSubscriber"}}, "undelivered", "AbsentSubscriber"},
		{"Expired", url.Values{"id": {"ATXid_1"}, "status": {"Expired"}}, "undelivered", "Expired"},
		{"Sent", url.Values{"id": {"ATXid_1"}, "status": {"Sent"}}, "", ""},
		{"Submitted", url.Values{"id": {"ATXid_1"}, "status": {"Submitted"}}, "", ""},
		{"Buffered", url.Values{"id": {"ATXid_1"}, "status": {"Buffered"}}, "", ""},
		{"oversized odd reason", url.Values{"id": {"ATXid_1"}, "status": {"Failed"}, "failureReason": {"\x1b[31m\xfe" + strings.Repeat("x", 500)}},
			"undelivered", "Failed:  [31m\uFFFD" + strings.Repeat("x", 185) + "…"},
		{"no id", url.Values{"status": {"Success"}}, "", "error"},
		{"no status", url.Values{"id": {"ATXid_1"}}, "", "error"},
		{"unknown status", url.Values{"id": {"ATXid_1"}, "status": {"Delivered"}}, "", "error"},
		{"status in the wrong case", url.Values{"id": {"ATXid_1"}, "status": {"success"}}, "", "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseDeliveryReport(tc.form)
			if tc.wantWhy == "error" {
				if err == nil {
					t.Errorf("got %+v, want an error", r)
				}
			} else if err != nil || r.providerID != "ATXid_1" || r.status != tc.wantStatus || r.reason != tc.wantWhy {
				t.Errorf("got %+v, %v; want ATXid_1, %q, %q", r, err, tc.wantStatus, tc.wantWhy)
			}
		})
	}
}

func TestCheckATBaseURL(t *testing.T) {
	for raw, ok := range map[string]bool{
		"https://api.africastalking.com": true, "https://gw.example.com:8443/at/": true, "http://127.0.0.1:9100": true,
		"http://127.8.9.10": true, "http://localhost:8080": true, "http://[::1]:80": true,
		"http://api.africastalking.com": false, "http://10.0.0.1": false, "ftp://api.africastalking.com": false,
		"api.africastalking.com": false, "https://": false, "": false,
		"http://user:s3cret@gw.example.com": false, "https://user:s3cret@gw.example.com:bad": false, "https://user:s3cret@[::1": false,
	} {
		err := checkATBaseURL(raw)
		if (err == nil) != ok || err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "user")) {
			t.Errorf("checkATBaseURL(%q): got %v, want ok %v and no credentials in the error", raw, err, ok)
		}
	}
}

func BenchmarkAfricasTalkingSend(b *testing.B) {
	f := newATFake(b, testAPIKey)
	at := newTestSender(f, "ACME", 5*time.Second)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := at.Send(b.Context(), testNotice); err != nil {
			b.Fatal(err)
		}
	}
}
