package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

const (
	// atMaxBody caps how much of a response is read; real answers are a few
	// hundred bytes, so anything larger is not a reply worth parsing.
	atMaxBody = 64 << 10
	// atMaxReasonBody caps how many characters of a response body end up in a
	// reason, which is stored and shown to staff.
	atMaxReasonBody = 200
)

// atBaseURL returns the Africa's Talking API origin for username: the sandbox
// for the reserved username "sandbox", production for every other one.
func atBaseURL(username string) string {
	if username == "sandbox" {
		return "https://api.sandbox.africastalking.com"
	}
	return "https://api.africastalking.com"
}

// africasTalking is a Sender that delivers SMS through the Africa's Talking
// bulk messaging API. It is safe for concurrent use.
type africasTalking struct {
	baseURL, username, apiKey, senderID string
	client                              *http.Client
}

// newAfricasTalking returns a sender posting to baseURL (see atBaseURL) as
// username with apiKey. An empty senderID leaves the sender to the account's
// default. client carries the caller's timeout and must not be nil.
func newAfricasTalking(baseURL, username, apiKey, senderID string, client *http.Client) *africasTalking {
	return &africasTalking{
		baseURL:  strings.TrimRight(baseURL, "/"),
		username: username,
		apiKey:   apiKey,
		senderID: senderID,
		client:   client,
	}
}

// atResponse is the body Africa's Talking answers a send with.
type atResponse struct {
	SMSMessageData struct {
		Message    string        `json:"Message"`
		Recipients []atRecipient `json:"Recipients"`
	} `json:"SMSMessageData"`
}

// atRecipient is the outcome for one number of a send.
type atRecipient struct {
	StatusCode int    `json:"statusCode"`
	Number     string `json:"number"`
	Status     string `json:"status"`
	Cost       string `json:"cost"`
	MessageID  string `json:"messageId"`
}

// Send texts m.Body to m.To and returns the Africa's Talking messageId once
// the provider has accepted the message (statusCode 100, 101 or 102); that is
// acceptance, not delivery to the handset. Every failure is a *SendError whose
// Reason never contains the API key. Cancelling ctx aborts the request and
// yields a retryable error wrapping the context's error.
func (a *africasTalking) Send(ctx context.Context, n notice) (string, error) {
	req, err := a.newRequest(ctx, n)
	if err != nil {
		// Only a malformed base URL gets here, and resending cannot fix it.
		return "", a.fail(true, "africastalking: building request: "+err.Error(), err)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return "", a.fail(false, "africastalking: request failed: "+err.Error(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, atMaxBody))
	if err != nil {
		return "", a.fail(false, "africastalking: reading response: "+err.Error(), err)
	}

	code := resp.StatusCode
	switch {
	case code == http.StatusUnauthorized:
		return "", a.fail(true, fmt.Sprintf("africastalking: authentication failed (HTTP %d): %s", code, a.snippet(code, body)), nil)
	case code == http.StatusTooManyRequests || code >= 500:
		return "", a.fail(false, fmt.Sprintf("africastalking: HTTP %d: %s", code, a.snippet(code, body)), nil)
	case code >= 400:
		return "", a.fail(true, fmt.Sprintf("africastalking: HTTP %d: %s", code, a.snippet(code, body)), nil)
	case code < 200 || code >= 300:
		// An unfollowed redirect or similar oddity says nothing about the
		// message, so losing it would be worse than trying again.
		return "", a.fail(false, fmt.Sprintf("africastalking: unexpected HTTP %d: %s", code, a.snippet(code, body)), nil)
	}

	var r atResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return "", a.fail(false, fmt.Sprintf("africastalking: response is not the expected JSON (HTTP %d): %s", code, a.snippet(code, body)), err)
	}
	data := r.SMSMessageData
	if len(data.Recipients) == 0 {
		msg := strings.TrimSpace(data.Message)
		if msg == "" {
			return "", a.fail(false, fmt.Sprintf("africastalking: response has neither recipients nor a message (HTTP %d): %s", code, a.snippet(code, body)), nil)
		}
		// With no recipients the request itself was refused, and the texts
		// seen here ("InvalidSenderId", "User is in blacklist", ...) describe
		// configuration or the customer, which a retry does not change. Only a
		// text naming a transient cause is retried.
		return "", a.fail(!atTransientMessage(msg), "africastalking: "+msg, nil)
	}

	rec := data.Recipients[0]
	sent, permanent := atClassify(rec.StatusCode)
	if sent {
		return rec.MessageID, nil
	}
	return "", a.fail(permanent, fmt.Sprintf("africastalking: %s (statusCode %d)", rec.Status, rec.StatusCode), nil)
}

// newRequest builds the form-encoded POST that sends m.
func (a *africasTalking) newRequest(ctx context.Context, n notice) (*http.Request, error) {
	form := url.Values{
		"username": {a.username},
		"to":       {n.To},
		"message":  {smsText(n)},
	}
	if a.senderID != "" {
		form.Set("from", a.senderID)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.baseURL+"/version1/messaging", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("apiKey", a.apiKey)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return req, nil
}

// atClassify reports whether a per-recipient statusCode means the provider
// accepted the message and, if not, whether retrying is pointless.
//
// Retried: 405 InsufficientBalance (a top-up fixes it), 407 CouldNotRoute (a
// route on the provider's side that comes back; a bad number gets 403 or 404
// instead), 500 InternalServerError and 501 GatewayError (the provider or the
// operator's gateway recovers), and any code not listed here, because retrying
// an unknown outcome is safer than dropping an order notification.
//
// Permanent: 402 InvalidSenderId, 403 InvalidPhoneNumber, 404
// UnsupportedNumberType, 406 UserInBlacklist and 409 DoNotDisturbRejection
// depend on the sender configuration or the customer's number, and 401
// RiskHold and 502 RejectedByGateway are verdicts on this sender and content
// that a resend gets again; all of them need a person, not another attempt.
func atClassify(code int) (sent, permanent bool) {
	switch code {
	case 100, 101, 102:
		return true, false
	case 401, 402, 403, 404, 406, 409, 502:
		return false, true
	default:
		return false, false
	}
}

// atTransientMessage reports whether a request-level message from Africa's
// Talking names a cause that can clear up by itself or by a top-up.
func atTransientMessage(msg string) bool {
	m := strings.ToLower(strings.ReplaceAll(msg, " ", ""))
	for _, s := range []string{"insufficientbalance", "internalservererror", "gatewayerror", "tryagain"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// snippet returns body as text fit for a reason: the API key redacted, space
// trimmed, at most atMaxReasonBody characters, or the status text if empty.
func (a *africasTalking) snippet(code int, body []byte) string {
	s := strings.TrimSpace(a.redact(strings.ToValidUTF8(string(body), "\uFFFD")))
	if s == "" {
		return http.StatusText(code)
	}
	if r := []rune(s); len(r) > atMaxReasonBody {
		s = string(r[:atMaxReasonBody-1]) + "…"
	}
	return s
}

// redact removes the API key from s; the key reaches a reason only if
// something echoes it back, but reasons are stored and shown to staff.
func (a *africasTalking) redact(s string) string {
	if a.apiKey == "" {
		return s
	}
	return strings.ReplaceAll(s, a.apiKey, "[redacted]")
}

// fail returns a *SendError with the API key redacted from reason.
func (a *africasTalking) fail(permanent bool, reason string, err error) *SendError {
	return &SendError{Permanent: permanent, Reason: a.redact(reason), Err: err}
}

func smsText(n notice) string {
	name, _, _ := strings.Cut(strings.TrimSpace(n.Name), " ")
	return "Hi " + name + ", your order #" + fmt.Sprint(n.OrderID) + " for " + n.Item + " (" + n.Currency + " " + n.Amount.String() + ") has been placed. Thank you!"
}

func checkATBaseURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("must be an http(s) URL")
	}
	return nil
}

type deliveryReport struct {
	providerID string
	status     string
	reason     string
}

func parseDeliveryReport(form url.Values) (deliveryReport, error) {
	r := deliveryReport{providerID: form.Get("id")}
	switch st := form.Get("status"); st {
	case "Success":
		r.status = "delivered"
	case "Failed", "Rejected", "AbsentSubscriber", "Expired":
		r.status, r.reason = "undelivered", st+": "+form.Get("failureReason")
	case "Sent", "Submitted", "Buffered":
	default:
		return r, fmt.Errorf("unknown status")
	}
	if r.providerID == "" {
		return r, fmt.Errorf("no id")
	}
	return r, nil
}
