package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
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

// newTestSender's base URL ends in a slash, as a configured one may.
func newTestSender(f *atFake, senderID string, timeout time.Duration) *africasTalking {
	c := f.srv.Client()
	c.Timeout = timeout
	return newAfricasTalking(f.srv.URL+"/", testUsername, testAPIKey, senderID, c)
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
		// One septet too many with the item cut to 9, so the name is cut instead.
		{"an item is never cut below 9", notice{OrderID: 7, Name: strings.Repeat("x", 90), Item: "whole-exome-sequencing", Amount: 500, Currency: "KES"},
			"Hi xxxxxxxxx..., your order #7 for whole-exome-sequencing (KES 5.00) has been placed. Thank you!", 96, gsmSegment},
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
		got := smsText(tt.n)
		if length, segment := smsSize(got); got != tt.want || length != tt.length || segment != tt.segment {
			t.Errorf("%s: got %q (%d of %d), want %q (%d of %d)", tt.name, got, length, segment, tt.want, tt.length, tt.segment)
		}
	}
}

// TestAfricasTalkingSend sends testNotice once per case, to a gateway that
// answers as the case says or to a base URL of its own, and checks the
// request and what Send makes of it: the messageId, or the exact *SendError.
func TestAfricasTalkingSend(t *testing.T) {
	none := func(code int, status string) http.HandlerFunc { return atRecipientAnswer(code, status, "None") }
	emptyRecipients := func(msg string) string { return fmt.Sprintf(`{"SMSMessageData":{"Message":%q,"Recipients":[]}}`, msg) }
	huge := emptyRecipients(strings.Repeat("x", 70<<10))
	day := func(d, h, m, s int) time.Time { return time.Date(2026, 3, d, h, m, s, 0, time.UTC) }
	dnd := "africastalking: DoNotDisturbRejection (statusCode 409)"
	cause := errors.New("any cause")
	fakeID := fmt.Sprintf("ATXid_%032x", 1) // the messageId the fake gives its first acceptance
	headersThenHang := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"SMSMessageData":`))
		w.(http.Flusher).Flush()
		atHang(w, r)
	}
	gone := httptest.NewServer(nil)
	gone.Close() // nothing listens there any more
	for _, tc := range []struct {
		name     string
		reply    http.HandlerFunc // nil: the fake accepts with a messageId of its own
		baseURL  string           // "": the fake's, which must then get the request
		senderID string
		now      time.Time     // the sender's clock
		timeout  time.Duration // the client's; 0: 5s
		cancel   bool          // ctx is cancelled after 50ms
		id       string        // the messageId returned; "" for a failure
		want     SendError     // the failure; Err is compared only as nil or not
		// withCause: want.Reason is followed by the cause's own text;
		// timedOut: the cause is a net.Error that timed out.
		withCause, timedOut bool
	}{
		{name: "100 Processed", reply: atRecipientAnswer(100, "Processed", "ATXid_chosen"), id: "ATXid_chosen"},
		{name: "102 Queued", reply: atRecipientAnswer(102, "Queued", "ATXid_chosen"), id: "ATXid_chosen"},
		{name: "101 Success, the fake's own answer", id: fakeID},
		{name: "101 Success with a sender id", senderID: "ACME", id: fakeID},
		{name: "401 RiskHold", reply: none(401, "RiskHold"), want: SendError{Permanent: true, Reason: "africastalking: RiskHold (statusCode 401)"}},
		{name: "402 InvalidSenderId", reply: none(402, "InvalidSenderId"), want: SendError{Permanent: true, Reason: "africastalking: InvalidSenderId (statusCode 402)"}},
		{name: "403 InvalidPhoneNumber", reply: none(403, "InvalidPhoneNumber"), want: SendError{Permanent: true, Reason: "africastalking: InvalidPhoneNumber (statusCode 403)"}},
		{name: "404 UnsupportedNumberType", reply: none(404, "UnsupportedNumberType"), want: SendError{Permanent: true, Reason: "africastalking: UnsupportedNumberType (statusCode 404)"}},
		{name: "405 InsufficientBalance", reply: none(405, "InsufficientBalance"), want: SendError{Reason: "africastalking: InsufficientBalance (statusCode 405)"}},
		{name: "406 UserInBlacklist", reply: none(406, "UserInBlacklist"), want: SendError{Permanent: true, Reason: "africastalking: UserInBlacklist (statusCode 406)"}},
		{name: "407 CouldNotRoute", reply: none(407, "CouldNotRoute"), want: SendError{Reason: "africastalking: CouldNotRoute (statusCode 407)"}},
		{name: "500 InternalServerError", reply: none(500, "InternalServerError"), want: SendError{Reason: "africastalking: InternalServerError (statusCode 500)"}},
		{name: "501 GatewayError", reply: none(501, "GatewayError"), want: SendError{Reason: "africastalking: GatewayError (statusCode 501)"}},
		{name: "502 RejectedByGateway", reply: none(502, "RejectedByGateway"), want: SendError{Permanent: true, Reason: "africastalking: RejectedByGateway (statusCode 502)"}},
		{name: "999 SomethingNew", reply: none(999, "SomethingNew"), want: SendError{Reason: "africastalking: SomethingNew (statusCode 999)"}},
		// A 409 waits for 08:00 WAT (07:00 UTC), the end of the quiet hours.
		{name: "409 at 07:59 WAT: this morning", reply: none(409, "DoNotDisturbRejection"), now: day(10, 6, 59, 0), want: SendError{RetryAt: day(10, 7, 0, 0), Reason: dnd}},
		{name: "409 at 08:00 WAT: tomorrow", reply: none(409, "DoNotDisturbRejection"), now: day(10, 7, 0, 0), want: SendError{RetryAt: day(11, 7, 0, 0), Reason: dnd}},
		{name: "409 at 13:00 WAT", reply: none(409, "DoNotDisturbRejection"), now: day(10, 12, 0, 0), want: SendError{RetryAt: day(11, 7, 0, 0), Reason: dnd}},
		{name: "409 at 21:30 WAT", reply: none(409, "DoNotDisturbRejection"), now: day(10, 20, 30, 0), want: SendError{RetryAt: day(11, 7, 0, 0), Reason: dnd}},
		{name: "409 at 00:30 WAT, already the next day", reply: none(409, "DoNotDisturbRejection"), now: day(10, 23, 30, 0), want: SendError{RetryAt: day(11, 7, 0, 0), Reason: dnd}},
		{name: "409 at 00:59:59 WAT on the 1st of April", reply: none(409, "DoNotDisturbRejection"), now: day(31, 23, 59, 59), want: SendError{RetryAt: day(32, 7, 0, 0), Reason: dnd}},
		{name: "HTTP 401", reply: atAnswer(401, "text/plain", "The supplied authentication is invalid\n"), want: SendError{Permanent: true, Reason: "africastalking: HTTP 401: The supplied authentication is invalid"}},
		{name: "HTTP 500", reply: atAnswer(500, "text/plain", "Internal Server Error"), want: SendError{Reason: "africastalking: HTTP 500: Internal Server Error"}},
		{name: "HTTP 503 empty body", reply: atAnswer(503, "text/plain", ""), want: SendError{Reason: "africastalking: HTTP 503: Service Unavailable"}},
		{name: "HTTP 429", reply: atAnswer(429, "text/plain", "Too many requests"), want: SendError{Reason: "africastalking: HTTP 429: Too many requests"}},
		{name: "HTTP 400", reply: atAnswer(400, "text/plain", "Invalid username"), want: SendError{Permanent: true, Reason: "africastalking: HTTP 400: Invalid username"}},
		{name: "HTTP 302 without location", reply: atAnswer(302, "text/plain", ""), want: SendError{Reason: "africastalking: HTTP 302: Found"}},
		{name: "long odd body bounded", reply: atAnswer(400, "text/plain", "a\x00b\n\xff"+strings.Repeat("é", 300)), want: SendError{Permanent: true, Reason: "africastalking: HTTP 400: a b \uFFFD" + strings.Repeat("é", 168) + "…"}},
		{name: "no recipients: invalid sender id", reply: atAnswer(201, "application/json", emptyRecipients("InvalidSenderId")), want: SendError{Permanent: true, Reason: "africastalking: InvalidSenderId"}},
		{name: "no recipients: blacklist", reply: atAnswer(200, "application/json", emptyRecipients("User is in blacklist")), want: SendError{Permanent: true, Reason: "africastalking: User is in blacklist"}},
		{name: "no recipients: insufficient balance", reply: atAnswer(201, "application/json", emptyRecipients("Insufficient Balance")), want: SendError{Reason: "africastalking: Insufficient Balance"}},
		{name: "no recipients, no message", reply: atAnswer(201, "application/json", `{}`), want: SendError{Uncertain: true, Reason: "africastalking: not the expected answer (HTTP 201): {}"}},
		{name: "garbage body", reply: atAnswer(201, "text/html", "<html>Bad gateway</html>"), want: SendError{Uncertain: true, Err: cause, Reason: "africastalking: not the expected answer (HTTP 201): <html>Bad gateway</html>"}},
		{name: "body over 64 KiB", reply: atAnswer(201, "application/json", huge), want: SendError{Uncertain: true, Err: cause, Reason: ("africastalking: not the expected answer (HTTP 201): " + huge)[:199] + "…"}},
		// The API key reaches a reason only where the gateway echoes it.
		{name: "401 echoing the key", reply: atAnswer(401, "text/plain", "The supplied authentication is invalid: apiKey="+testAPIKey), want: SendError{Permanent: true, Reason: "africastalking: HTTP 401: The supplied authentication is invalid: apiKey=[redacted]"}},
		{name: "key straddling the cut", reply: atAnswer(400, "text/plain", strings.Repeat("a", 150)+testAPIKey), want: SendError{Permanent: true, Reason: "africastalking: HTTP 400: " + strings.Repeat("a", 150) + "[redacted]"}},
		{name: "request refusal echoing the key", reply: atAnswer(201, "application/json", emptyRecipients("Bad key "+testAPIKey)), want: SendError{Permanent: true, Reason: "africastalking: Bad key [redacted]"}},
		{name: "recipient status echoing the key", reply: none(403, "InvalidPhoneNumber for "+testAPIKey), want: SendError{Permanent: true, Reason: "africastalking: InvalidPhoneNumber for [redacted] (statusCode 403)"}},
		{name: "unparseable 2xx body echoing the key", reply: atAnswer(201, "text/plain", "apiKey: "+testAPIKey), want: SendError{Uncertain: true, Err: cause, Reason: "africastalking: not the expected answer (HTTP 201): apiKey: [redacted]"}},
		// No verdict: after the request was written the message may have gone out.
		{name: "hangs after reading the request", reply: atHang, timeout: 200 * time.Millisecond, want: SendError{Uncertain: true, Err: cause, Reason: "africastalking: request sent, no answer: "}, withCause: true, timedOut: true},
		{name: "hangs in the body", reply: headersThenHang, timeout: 200 * time.Millisecond, want: SendError{Uncertain: true, Err: cause, Reason: "africastalking: reading response: "}, withCause: true, timedOut: true},
		{name: "drops the connection", reply: atDrop, want: SendError{Uncertain: true, Err: cause, Reason: "africastalking: request sent, no answer: "}, withCause: true},
		{name: "context cancelled", reply: atHang, timeout: time.Minute, cancel: true, want: SendError{Uncertain: true, Err: cause, Reason: "africastalking: request sent, no answer: "}, withCause: true},
		{name: "connection refused", baseURL: gone.URL, want: SendError{Err: cause, Reason: "africastalking: request failed: "}, withCause: true},
		{name: "base URL that checkATBaseURL refuses", baseURL: "http://\x7f", want: SendError{Permanent: true, Err: cause, Reason: "africastalking: building request: "}, withCause: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newATFake(t, testAPIKey)
			f.setReply(tc.reply)
			at := newTestSender(f, tc.senderID, cmp.Or(tc.timeout, 5*time.Second))
			at.baseURL = cmp.Or(tc.baseURL, at.baseURL)
			at.now = func() time.Time { return tc.now }
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tc.cancel {
				time.AfterFunc(50*time.Millisecond, cancel)
			}
			start := time.Now()
			id, err := at.Send(ctx, testNotice)
			if elapsed := time.Since(start); elapsed > 3*time.Second {
				t.Errorf("elapsed: got %v, want well under 3s (the timeout or the cancel)", elapsed)
			}
			r := f.requests()
			if tc.baseURL == "" && (len(r) != 1 || r[0].username != testUsername || r[0].to != testTo || r[0].message != smsText(testNotice) || r[0].apiKey != testAPIKey || r[0].from != tc.senderID) {
				t.Fatalf("requests: got %+v, want one from %s to %s with apiKey, from %q and the order's text", r, testUsername, testTo, tc.senderID)
			}
			se, ok := err.(*SendError)
			if ok == (tc.id != "") {
				t.Fatalf("error: got %v (%T), want a *SendError exactly when no id is wanted", err, err)
			}
			se = cmp.Or(se, &SendError{})
			reason := tc.want.Reason
			if tc.withCause && se.Err != nil {
				reason += se.Err.Error()
			}
			var ne net.Error
			timedOut, canceled := errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.Canceled)
			if id != tc.id || se.Permanent != tc.want.Permanent || se.Uncertain != tc.want.Uncertain || (se.Err == nil) != (tc.want.Err == nil) ||
				!se.RetryAt.Equal(tc.want.RetryAt) || se.Reason != reason || timedOut != tc.timedOut || canceled != tc.cancel {
				t.Errorf("Send: got %q, %+v (a timeout %v, context.Canceled %v); want %q, %+v with reason %q (%v, %v)",
					id, se, timedOut, canceled, tc.id, tc.want, reason, tc.timedOut, tc.cancel)
			}
		})
	}
}

func TestParseDeliveryReport(t *testing.T) {
	for _, tc := range []struct {
		name string
		form url.Values
		want deliveryReport // the zero report: the form is refused with an error
	}{
		{"Success", url.Values{"id": {"ATXid_1"}, "status": {"Success"}, "phoneNumber": {testTo}, "networkCode": {"63902"}, "retryCount": {"0"}}, deliveryReport{"ATXid_1", "delivered", ""}},
		{"Failed", url.Values{"id": {"ATXid_1"}, "status": {"Failed"}, "failureReason": {"DeliveryFailure"}}, deliveryReport{"ATXid_1", "undelivered", "Failed: DeliveryFailure"}},
		{"Rejected", url.Values{"id": {"ATXid_1"}, "status": {"Rejected"}, "failureReason": {"UserInBlackList"}}, deliveryReport{"ATXid_1", "undelivered", "Rejected: UserInBlackList"}},
		{"Rejected without a reason", url.Values{"id": {"ATXid_1"}, "status": {"Rejected"}}, deliveryReport{"ATXid_1", "undelivered", "Rejected"}},
		{"AbsentSubscriber", url.Values{"id": {"ATXid_1"}, "status": {"AbsentSubscriber"}}, deliveryReport{"ATXid_1", "undelivered", "AbsentSubscriber"}},
		{"Expired", url.Values{"id": {"ATXid_1"}, "status": {"Expired"}}, deliveryReport{"ATXid_1", "undelivered", "Expired"}},
		{"Sent", url.Values{"id": {"ATXid_1"}, "status": {"Sent"}}, deliveryReport{"ATXid_1", "", ""}},
		{"Submitted", url.Values{"id": {"ATXid_1"}, "status": {"Submitted"}}, deliveryReport{"ATXid_1", "", ""}},
		{"Buffered", url.Values{"id": {"ATXid_1"}, "status": {"Buffered"}}, deliveryReport{"ATXid_1", "", ""}},
		{"oversized odd reason", url.Values{"id": {"ATXid_1"}, "status": {"Failed"}, "failureReason": {"\x1b[31m\xfe" + strings.Repeat("x", 500)}},
			deliveryReport{"ATXid_1", "undelivered", "Failed:  [31m\uFFFD" + strings.Repeat("x", 185) + "…"}},
		{"no id", url.Values{"status": {"Success"}}, deliveryReport{}},
		{"id with a NUL", url.Values{"id": {"ATXid\x001"}, "status": {"Success"}}, deliveryReport{}},
		{"id not UTF-8", url.Values{"id": {"ATXid\xff"}, "status": {"Success"}}, deliveryReport{}},
		{"no status", url.Values{"id": {"ATXid_1"}}, deliveryReport{}},
		{"unknown status", url.Values{"id": {"ATXid_1"}, "status": {"Delivered"}}, deliveryReport{}},
		{"status in the wrong case", url.Values{"id": {"ATXid_1"}, "status": {"success"}}, deliveryReport{}},
	} {
		r, err := parseDeliveryReport(tc.form)
		if r != tc.want || (err != nil) != (tc.want == deliveryReport{}) {
			t.Errorf("%s: got %+v, %v; want %+v (an error if zero)", tc.name, r, err, tc.want)
		}
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
		_, err := at.Send(b.Context(), testNotice)
		fatalIf(b, err)
	}
}
