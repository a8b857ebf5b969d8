package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// atSend is a request the fake received; messageID is set if it accepted it.
type atSend struct {
	at                                             time.Time
	username, to, message, from, apiKey, messageID string
}

// atFake is the Africa's Talking of every test. It fails the test on a request
// off the protocol, records the rest, answers a wrong apiKey with a 401 and
// accepts the others after delay, unless setReply says otherwise.
type atFake struct {
	t      testing.TB
	srv    *httptest.Server
	apiKey string
	delay  atomic.Int64 // nanoseconds each acceptance takes
	mu     sync.Mutex
	sends  []atSend
	reply  http.HandlerFunc
}

func newATFake(t testing.TB, apiKey string) *atFake {
	f := &atFake{t: t, apiKey: apiKey}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *atFake) serve(w http.ResponseWriter, r *http.Request) {
	err := r.ParseForm()
	s := atSend{at: time.Now(), username: r.PostForm.Get("username"), to: r.PostForm.Get("to"),
		message: r.PostForm.Get("message"), from: r.PostForm.Get("from"), apiKey: r.Header.Get("apiKey")}
	want := url.Values{"username": {s.username}, "to": {s.to}, "message": {s.message}}
	if s.from != "" {
		want.Set("from", s.from)
	}
	if err != nil || r.Method != http.MethodPost || r.URL.Path != "/version1/messaging" || r.Header.Get("Accept") != "application/json" ||
		r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" || r.PostForm.Encode() != want.Encode() {
		f.t.Errorf("Africa's Talking fake: got %s %s, headers %v, form %v (%v); want the protocol", r.Method, r.URL, r.Header, r.PostForm, err)
		return
	}
	f.mu.Lock()
	f.sends = append(f.sends, s)
	i, reply := len(f.sends)-1, f.reply
	f.mu.Unlock()
	switch {
	case s.apiKey != f.apiKey:
		http.Error(w, "The supplied authentication is invalid", http.StatusUnauthorized)
	case reply != nil:
		reply(w, r)
	default:
		// A gateway that has the request sends the message even if the client
		// hangs up meanwhile, and records it before it answers.
		time.Sleep(time.Duration(f.delay.Load()))
		f.mu.Lock()
		f.sends[i].messageID = fmt.Sprintf("ATXid_%032x", i+1)
		id := f.sends[i].messageID
		f.mu.Unlock()
		atRecipientAnswer(101, "Success", id)(w, r)
	}
}

// setReply has reply answer later requests with the right apiKey (nil: accept).
func (f *atFake) setReply(reply http.HandlerFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reply = reply
}

func (f *atFake) requests() []atSend {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sends)
}

// atHang never answers; every client of the fake gives up in the end.
func atHang(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }

// atDrop closes the connection without an answer.
func atDrop(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }

func atAnswer(status int, contentType, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// atRecipientAnswer is the gateway's 201 ("None" is the id of a refusal).
func atRecipientAnswer(statusCode int, status, messageID string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		atAnswer(http.StatusCreated, "application/json", fmt.Sprintf(`{"SMSMessageData":{"Message":"Sent to 1/1 Total Cost: KES 0.8000",`+
			`"Recipients":[{"statusCode":%d,"number":%q,"status":%q,"cost":"KES 0.8000","messageId":%q}]}}`,
			statusCode, r.PostForm.Get("to"), status, messageID))(w, r)
	}
}

// report posts a delivery report to callbackURL as the gateway does.
func (f *atFake) report(t testing.TB, callbackURL, messageID, status, failureReason string) int {
	t.Helper()
	form := url.Values{"id": {messageID}, "status": {status}, "networkCode": {"63902"}, "retryCount": {"0"}}
	for _, s := range f.requests() {
		if s.messageID == messageID {
			form.Set("phoneNumber", s.to)
		}
	}
	if failureReason != "" {
		form.Set("failureReason", failureReason) // given only for Failed and Rejected
	}
	res, err := (&http.Client{Timeout: 10 * time.Second}).PostForm(callbackURL, form)
	fatalIf(t, err) // the error names the callback's URL
	res.Body.Close()
	return res.StatusCode
}
