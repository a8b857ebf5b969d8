package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

const (
	testUsername = "acme"
	testAPIKey   = "atsk_0123456789abcdef0123456789abcdef"
	testTo       = "+254711000111"
	testBody     = "Order #42 placed: 2 items, KES 1,200. Thanks & see you!"
)

// fakeAT starts a fake Africa's Talking that checks each request against the
// real wire format, expecting a "from" field only when wantFrom is set, and
// then lets reply answer. The server is closed when the test ends.
func fakeAT(t testing.TB, wantFrom string, reply http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r, wantFrom)
		reply(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// hang blocks a fake's handler until the client gives up or the test ends;
// t.Context is cancelled before cleanups run, so srv.Close never waits on it.
func hang(t testing.TB, r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-t.Context().Done():
	}
}

func checkRequest(t testing.TB, r *http.Request, wantFrom string) {
	t.Helper()
	if r.Method != http.MethodPost {
		t.Errorf("method: got %s, want POST", r.Method)
	}
	if r.URL.Path != "/version1/messaging" {
		t.Errorf("path: got %q, want /version1/messaging", r.URL.Path)
	}
	for name, want := range map[string]string{
		"apiKey":       testAPIKey,
		"Accept":       "application/json",
		"Content-Type": "application/x-www-form-urlencoded",
	} {
		if got := r.Header.Get(name); got != want {
			t.Errorf("header %s: got %q, want %q", name, got, want)
		}
	}
	if err := r.ParseForm(); err != nil {
		t.Errorf("parsing form: got %v, want nil", err)
		return
	}
	want := map[string]string{"username": testUsername, "to": testTo, "message": testBody}
	if wantFrom != "" {
		want["from"] = wantFrom
	}
	for k, v := range want {
		if got := r.PostForm.Get(k); got != v {
			t.Errorf("form %s: got %q, want %q", k, got, v)
		}
	}
	for k := range r.PostForm {
		if _, ok := want[k]; !ok {
			t.Errorf("form: got unexpected field %q, want only %v", k, want)
		}
	}
}

// recipientJSON is a real-shaped send response with one recipient.
func recipientJSON(code int, status, id string) string {
	return fmt.Sprintf(`{"SMSMessageData":{"Message":"Sent to 1/1 Total Cost: KES 0.8000","Recipients":[{"statusCode":%d,"number":%q,"status":%q,"cost":"KES 0.8000","messageId":%q}]}}`,
		code, testTo, status, id)
}

func respond(status int, contentType, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

func newTestSender(srv *httptest.Server, senderID string, timeout time.Duration) *africasTalking {
	c := srv.Client()
	c.Timeout = timeout
	return newAfricasTalking(srv.URL, testUsername, testAPIKey, senderID, c)
}

func testMessage() Message {
	return Message{OrderID: 42, To: testTo, Body: testBody}
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
	for _, tc := range []struct{ username, want string }{
		{"sandbox", "https://api.sandbox.africastalking.com"},
		{"acme", "https://api.africastalking.com"},
		{"", "https://api.africastalking.com"},
	} {
		t.Run(tc.username, func(t *testing.T) {
			if got := atBaseURL(tc.username); got != tc.want {
				t.Errorf("atBaseURL(%q): got %q, want %q", tc.username, got, tc.want)
			}
		})
	}
}

func TestAfricasTalkingSendAccepted(t *testing.T) {
	for _, tc := range []struct {
		name     string
		code     int
		status   string
		senderID string
	}{
		{"100 processed", 100, "Processed", ""},
		{"101 sent", 101, "Success", ""},
		{"102 queued", 102, "Queued", ""},
		{"101 sent with sender id", 101, "Success", "ACME"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantID := fmt.Sprintf("ATXid_%d", tc.code)
			srv := fakeAT(t, tc.senderID, respond(http.StatusCreated, "application/json", recipientJSON(tc.code, tc.status, wantID)))
			id, err := newTestSender(srv, tc.senderID, 5*time.Second).Send(context.Background(), testMessage())
			if err != nil {
				t.Fatalf("Send: got error %v, want nil", err)
			}
			if id != wantID {
				t.Errorf("provider id: got %q, want %q", id, wantID)
			}
		})
	}
}

func TestAfricasTalkingSendRecipientFailure(t *testing.T) {
	for _, tc := range []struct {
		code      int
		status    string
		permanent bool
	}{
		{401, "RiskHold", true},
		{402, "InvalidSenderId", true},
		{403, "InvalidPhoneNumber", true},
		{404, "UnsupportedNumberType", true},
		{405, "InsufficientBalance", false},
		{406, "UserInBlacklist", true},
		{407, "CouldNotRoute", false},
		{409, "DoNotDisturbRejection", true},
		{500, "InternalServerError", false},
		{501, "GatewayError", false},
		{502, "RejectedByGateway", true},
		{999, "SomethingNew", false},
	} {
		t.Run(fmt.Sprintf("%d %s", tc.code, tc.status), func(t *testing.T) {
			srv := fakeAT(t, "", respond(http.StatusCreated, "application/json", recipientJSON(tc.code, tc.status, "None")))
			id, err := newTestSender(srv, "", 5*time.Second).Send(context.Background(), testMessage())
			if id != "" {
				t.Errorf("provider id: got %q, want empty", id)
			}
			se := asSendError(t, err)
			if se.Permanent != tc.permanent {
				t.Errorf("Permanent: got %v, want %v", se.Permanent, tc.permanent)
			}
			if want := fmt.Sprintf("africastalking: %s (statusCode %d)", tc.status, tc.code); se.Reason != want {
				t.Errorf("Reason: got %q, want %q", se.Reason, want)
			}
		})
	}
}

func TestAfricasTalkingSendResponseErrors(t *testing.T) {
	const jsonType = "application/json"
	emptyRecipients := func(msg string) string {
		return fmt.Sprintf(`{"SMSMessageData":{"Message":%q,"Recipients":[]}}`, msg)
	}
	for _, tc := range []struct {
		name       string
		reply      http.HandlerFunc
		permanent  bool
		wantReason string // exact unless wantPrefix
		wantPrefix bool
		wantErr    bool // a wrapped cause is expected in Err
	}{
		{
			name:       "401 bad api key",
			reply:      respond(http.StatusUnauthorized, "text/plain", "The supplied authentication is invalid\n"),
			permanent:  true,
			wantReason: "africastalking: authentication failed (HTTP 401): The supplied authentication is invalid",
		},
		{
			name:       "500",
			reply:      respond(http.StatusInternalServerError, "text/plain", "Internal Server Error"),
			wantReason: "africastalking: HTTP 500: Internal Server Error",
		},
		{
			name:       "503 empty body",
			reply:      respond(http.StatusServiceUnavailable, "text/plain", ""),
			wantReason: "africastalking: HTTP 503: Service Unavailable",
		},
		{
			name:       "429",
			reply:      respond(http.StatusTooManyRequests, "text/plain", "Too many requests"),
			wantReason: "africastalking: HTTP 429: Too many requests",
		},
		{
			name:       "400",
			reply:      respond(http.StatusBadRequest, "text/plain", "Invalid username"),
			permanent:  true,
			wantReason: "africastalking: HTTP 400: Invalid username",
		},
		{
			name:       "302 without location",
			reply:      respond(http.StatusFound, "text/plain", ""),
			wantReason: "africastalking: unexpected HTTP 302: Found",
		},
		{
			name:       "long body trimmed to 200 characters",
			reply:      respond(http.StatusBadRequest, "text/plain", strings.Repeat("é", 300)),
			permanent:  true,
			wantReason: "africastalking: HTTP 400: " + strings.Repeat("é", 199) + "…",
		},
		{
			name:       "empty recipients invalid sender id",
			reply:      respond(http.StatusCreated, jsonType, emptyRecipients("InvalidSenderId")),
			permanent:  true,
			wantReason: "africastalking: InvalidSenderId",
		},
		{
			name:       "empty recipients blacklist",
			reply:      respond(http.StatusOK, jsonType, emptyRecipients("User is in blacklist")),
			permanent:  true,
			wantReason: "africastalking: User is in blacklist",
		},
		{
			name:       "empty recipients insufficient balance",
			reply:      respond(http.StatusCreated, jsonType, emptyRecipients("Insufficient Balance")),
			wantReason: "africastalking: Insufficient Balance",
		},
		{
			name:       "empty recipients and message",
			reply:      respond(http.StatusCreated, jsonType, `{}`),
			wantReason: "africastalking: response has neither recipients nor a message (HTTP 201): {}",
		},
		{
			name:       "garbage body",
			reply:      respond(http.StatusCreated, "text/html", "<html>Bad gateway</html>"),
			wantReason: "africastalking: response is not the expected JSON (HTTP 201): <html>Bad gateway</html>",
			wantErr:    true,
		},
		{
			name:       "body over 64 KiB",
			reply:      respond(http.StatusCreated, jsonType, emptyRecipients(strings.Repeat("x", 70<<10))),
			wantReason: "africastalking: response is not the expected JSON (HTTP 201): ",
			wantPrefix: true,
			wantErr:    true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakeAT(t, "", tc.reply)
			id, err := newTestSender(srv, "", 5*time.Second).Send(context.Background(), testMessage())
			if id != "" {
				t.Errorf("provider id: got %q, want empty", id)
			}
			se := asSendError(t, err)
			if se.Permanent != tc.permanent {
				t.Errorf("Permanent: got %v, want %v", se.Permanent, tc.permanent)
			}
			if tc.wantPrefix && !strings.HasPrefix(se.Reason, tc.wantReason) || !tc.wantPrefix && se.Reason != tc.wantReason {
				t.Errorf("Reason: got %q, want %q", se.Reason, tc.wantReason)
			}
			if got := se.Err != nil; got != tc.wantErr {
				t.Errorf("Err set: got %v (%v), want %v", got, se.Err, tc.wantErr)
			}
		})
	}
}

func TestAfricasTalkingSendTimeout(t *testing.T) {
	for _, tc := range []struct {
		name       string
		flushFirst bool // answer headers, then hang while sending the body
		wantReason string
	}{
		{"awaiting headers", false, "africastalking: request failed: "},
		{"reading body", true, "africastalking: reading response: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakeAT(t, "", func(w http.ResponseWriter, r *http.Request) {
				if tc.flushFirst {
					w.WriteHeader(http.StatusCreated)
					io.WriteString(w, `{"SMSMessageData":`)
					w.(http.Flusher).Flush()
				}
				hang(t, r)
			})
			start := time.Now()
			_, err := newTestSender(srv, "", 200*time.Millisecond).Send(context.Background(), testMessage())
			if elapsed := time.Since(start); elapsed > 3*time.Second {
				t.Errorf("elapsed: got %v, want about the 200ms client timeout", elapsed)
			}
			se := asSendError(t, err)
			if se.Permanent {
				t.Errorf("Permanent: got true, want false")
			}
			if !strings.HasPrefix(se.Reason, tc.wantReason) {
				t.Errorf("Reason: got %q, want prefix %q", se.Reason, tc.wantReason)
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Errorf("Err: got %v, want a net.Error with Timeout() true", se.Err)
			}
		})
	}
}

func TestAfricasTalkingSendContextCancel(t *testing.T) {
	srv := fakeAT(t, "", func(w http.ResponseWriter, r *http.Request) {
		hang(t, r)
	})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := newTestSender(srv, "", 30*time.Second).Send(ctx, testMessage())
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Errorf("elapsed: got %v, want the request aborted soon after the 50ms cancel", elapsed)
	}
	se := asSendError(t, err)
	if se.Permanent {
		t.Errorf("Permanent: got true, want false")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is(err, context.Canceled): got false for %v, want true", se.Err)
	}
}

func TestAfricasTalkingSendNetworkError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	c := srv.Client()
	srv.Close() // nothing listens any more: the connection is refused
	_, err := newAfricasTalking(srv.URL, testUsername, testAPIKey, "", c).Send(context.Background(), testMessage())
	se := asSendError(t, err)
	if se.Permanent {
		t.Errorf("Permanent: got true, want false")
	}
	if se.Err == nil {
		t.Errorf("Err: got nil, want the transport error")
	}
}

func TestAfricasTalkingSendBadBaseURL(t *testing.T) {
	c := &http.Client{Timeout: time.Second}
	_, err := newAfricasTalking("http://\x7f", testUsername, "", "", c).Send(context.Background(), testMessage())
	se := asSendError(t, err)
	if !se.Permanent {
		t.Errorf("Permanent: got false, want true")
	}
	if !strings.HasPrefix(se.Reason, "africastalking: building request: ") {
		t.Errorf("Reason: got %q, want prefix %q", se.Reason, "africastalking: building request: ")
	}
}

func TestAfricasTalkingReasonNeverContainsAPIKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
	}{
		{"401 echoing the key", "The supplied authentication is invalid: apiKey=" + testAPIKey},
		{"key straddling the trim point", strings.Repeat("a", 190) + testAPIKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakeAT(t, "", respond(http.StatusUnauthorized, "text/plain", tc.body))
			_, err := newTestSender(srv, "", 5*time.Second).Send(context.Background(), testMessage())
			se := asSendError(t, err)
			if strings.Contains(se.Reason, testAPIKey[:8]) {
				t.Errorf("Reason: got %q, want it free of the API key", se.Reason)
			}
			if !strings.Contains(se.Reason, "[redacted]") {
				t.Errorf("Reason: got %q, want the key replaced by [redacted]", se.Reason)
			}
		})
	}

	t.Run("transport error", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close()
		_, err := newAfricasTalking(srv.URL, testUsername, testAPIKey, "", srv.Client()).Send(context.Background(), testMessage())
		if se := asSendError(t, err); strings.Contains(se.Reason, testAPIKey) {
			t.Errorf("Reason: got %q, want it free of the API key", se.Reason)
		}
	})
}

func BenchmarkAfricasTalkingSend(b *testing.B) {
	srv := fakeAT(b, "ACME", respond(http.StatusCreated, "application/json", recipientJSON(101, "Success", "ATXid_bench")))
	at := newTestSender(srv, "ACME", 5*time.Second)
	ctx := context.Background()
	m := testMessage()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := at.Send(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
}
