package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

const (
	// atMaxBody caps how much of a response is read; real answers are a few
	// hundred bytes, so anything larger is not a reply worth parsing.
	atMaxBody = 64 << 10

	// One SMS segment holds 160 GSM-7 septets, or 70 UTF-16 units when any
	// character needs UCS-2. An item is never cut below smsMinItem
	// characters, a first name is cut to smsMaxName. gsmBasic and gsmExtended
	// are the GSM 03.38 alphabet: basic characters take one septet, extended
	// ones two; text with any other character is sent as UCS-2.
	gsmSegment  = 160
	ucs2Segment = 70
	smsMinItem  = 9
	smsMaxName  = 12
	gsmBasic    = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
	gsmExtended = "^{}\\[~]|€\f"
)

// atBaseURL returns the Africa's Talking API origin for username: the sandbox
// for the reserved username "sandbox", production for every other one.
func atBaseURL(username string) string {
	if username == "sandbox" {
		return "https://api.sandbox.africastalking.com"
	}
	return "https://api.africastalking.com"
}

// checkATBaseURL returns an error unless raw is an http(s) URL with a host.
// Plain http is allowed only for a loopback host, because every request
// carries the API key in a header. The error never repeats raw, which may
// hold a user and password.
func checkATBaseURL(raw string) error {
	switch u, err := url.Parse(raw); {
	case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
		return errors.New("must be an http(s) URL with a host, such as https://api.africastalking.com")
	case u.Scheme == "http" && !strings.EqualFold(u.Hostname(), "localhost") && !net.ParseIP(u.Hostname()).IsLoopback():
		// IsLoopback takes in 127.0.0.0/8 and ::1, and is false for a name.
		return fmt.Errorf("plain http is allowed only for a loopback host, not %q; use https", u.Hostname())
	}
	return nil
}

// africasTalking is a Sender that delivers SMS through the Africa's Talking
// bulk messaging API. It is safe for concurrent use.
type africasTalking struct {
	baseURL, username, apiKey, senderID string
	client                              *http.Client
	now                                 func() time.Time // the clock quiet hours are reckoned by
}

// newAfricasTalking returns a sender posting to baseURL (see atBaseURL) as
// username with apiKey. An empty senderID leaves the sender to the account's
// default. client carries the caller's timeout and must not be nil.
func newAfricasTalking(baseURL, username, apiKey, senderID string, client *http.Client) *africasTalking {
	return &africasTalking{baseURL: strings.TrimRight(baseURL, "/"), username: username, apiKey: apiKey, senderID: senderID, client: client, now: time.Now}
}

// Send texts smsText(n) to n.To and returns the Africa's Talking messageId
// once the provider has accepted the message (statusCode 100, 101 or 102);
// that is acceptance, not delivery to the handset. Every failure is a
// *SendError whose Reason never contains the API key. A failure after the
// request was written with no verdict read back (a timeout, a dropped
// connection, a 2xx answer that cannot be read) is Uncertain: the message may
// have gone out. Cancelling ctx aborts the request and yields a retryable
// error wrapping the context's error.
func (a *africasTalking) Send(ctx context.Context, n notice) (string, error) {
	// Reset for every connection the transport tries, so that only the
	// attempt that failed counts.
	var written atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GetConn:      func(string) { written.Store(false) },
		WroteRequest: func(w httptrace.WroteRequestInfo) { written.Store(w.Err == nil) },
	})
	// The one request: a form-encoded POST, the API key in a header.
	form := url.Values{"username": {a.username}, "to": {n.To}, "message": {smsText(n)}}
	if a.senderID != "" {
		form.Set("from", a.senderID)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.baseURL+"/version1/messaging", strings.NewReader(form.Encode()))
	if err != nil {
		// Only a base URL that checkATBaseURL refuses gets here, and
		// resending cannot fix it.
		return "", a.fail(SendError{Permanent: true, Reason: "africastalking: building request: " + err.Error(), Err: err})
	}
	req.Header.Set("apiKey", a.apiKey)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := a.client.Do(req)
	if err != nil {
		if written.Load() {
			return "", a.fail(SendError{Uncertain: true, Reason: "africastalking: request sent, no answer: " + err.Error(), Err: err})
		}
		return "", a.fail(SendError{Reason: "africastalking: request failed: " + err.Error(), Err: err})
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, atMaxBody))
	if err != nil {
		return "", a.fail(SendError{Uncertain: true, Reason: "africastalking: reading response: " + err.Error(), Err: err})
	}
	if code := resp.StatusCode; code < 200 || code >= 300 {
		// A 4xx (bad credentials, a malformed request) comes back on every
		// resend. A 429, a 5xx or an oddity such as an unfollowed redirect
		// says nothing final about the message, so losing it would be worse
		// than trying again.
		permanent := code >= 400 && code < 500 && code != http.StatusTooManyRequests
		return "", a.fail(SendError{Permanent: permanent, Reason: fmt.Sprintf("africastalking: HTTP %d: %s", code, cmp.Or(strings.TrimSpace(string(body)), http.StatusText(code)))})
	}

	var r struct {
		SMSMessageData struct {
			Message    string
			Recipients []struct {
				StatusCode        int
				Status, MessageID string
			}
		}
	}
	err = json.Unmarshal(body, &r)
	switch recipients, msg := r.SMSMessageData.Recipients, strings.TrimSpace(r.SMSMessageData.Message); {
	case err != nil || len(recipients) == 0 && msg == "":
		return "", a.fail(SendError{Uncertain: true, Reason: fmt.Sprintf("africastalking: not the expected answer (HTTP %d): %s", resp.StatusCode, body), Err: err})
	case len(recipients) == 0:
		// With no recipients the request itself was refused, and the texts
		// seen here ("InvalidSenderId", "User is in blacklist", ...) describe
		// configuration or the customer, which a retry does not change. Only a
		// text naming a transient cause is retried.
		return "", a.fail(SendError{Permanent: !atTransient.MatchString(msg), Reason: "africastalking: " + msg})
	case recipients[0].StatusCode >= 100 && recipients[0].StatusCode <= 102:
		return recipients[0].MessageID, nil
	}
	rec := r.SMSMessageData.Recipients[0]
	se := SendError{Permanent: atPermanent[rec.StatusCode], Reason: fmt.Sprintf("africastalking: %s (statusCode %d)", rec.Status, rec.StatusCode)}
	if rec.StatusCode == 409 {
		// The Nigerian Communications Commission bars promotional SMS from
		// 20:00 to 08:00 WAT, and Africa's Talking refuses such a message from
		// a sender id it has flagged promotional with statusCode 409
		// ("Introducing Status Code 409 for Promotional Sender IDs in
		// Nigeria", 4 July 2023, https://status.africastalking.com/incident/538/),
		// so a retry can succeed only once the quiet hours are over. West
		// Africa Time, Nigeria's clock all year, is UTC+1 with no daylight
		// saving, so 08:00 WAT is 07:00 UTC every day. The first one strictly
		// after now is 07:00 on the UTC day that holds now+17h (Truncate
		// counts days in UTC).
		se.RetryAt = a.now().Add(17 * time.Hour).Truncate(24 * time.Hour).Add(7 * time.Hour)
	}
	return "", a.fail(se)
}

// atPermanent holds the per-recipient statusCodes after which retrying is
// pointless: 402 InvalidSenderId, 403 InvalidPhoneNumber, 404
// UnsupportedNumberType and 406 UserInBlacklist depend on the sender
// configuration or the customer's number, and 401 RiskHold and 502
// RejectedByGateway are verdicts on this sender and content that a resend
// gets again; all of them need a person, not another attempt.
//
// Every other refusal is retried: 405 InsufficientBalance (a top-up fixes
// it), 407 CouldNotRoute (a route on the provider's side that comes back; a
// bad number gets 403 or 404 instead), 409 DoNotDisturbRejection (once the
// quiet hours are over), 500 InternalServerError and 501 GatewayError (the
// provider or the operator's gateway recovers), and any code not listed
// here, because retrying an unknown outcome is safer than dropping an order
// notification.
var atPermanent = map[int]bool{401: true, 402: true, 403: true, 404: true, 406: true, 502: true}

// atTransient matches a request-level message from Africa's Talking that
// names a cause that can clear up by itself or by a top-up.
var atTransient = regexp.MustCompile(`(?i)insufficient ?balance|internal ?server ?error|gateway ?error|try ?again`)

// fail returns se with a reason fit to store and show to staff: bounded,
// and free of the API key, which reaches it only if something echoes the key
// back.
func (a *africasTalking) fail(se SendError) *SendError {
	se.Reason = storable(se.Reason, a.apiKey)
	return &se
}

// deliveryReport is what one Africa's Talking delivery report says of a message.
type deliveryReport struct {
	providerID string // the messageId the send returned
	status     string // "delivered", "undelivered", or "" for an interim report that changes nothing
	reason     string // for undelivered: the gateway's status and failureReason, bounded, safe to store
}

// parseDeliveryReport reads the form Africa's Talking posts to a delivery
// report callback: id (the messageId), status, phoneNumber, networkCode,
// failureReason (for Failed and Rejected, where the operator gives one, such
// as DeliveryFailure or UserInBlackList) and retryCount
// (https://docs.africastalking.com/sms/notifications; the fields
// MessageDeliveryRequest of SamuelMwangiW/africastalking-laravel checks).
// Only id, status and failureReason matter here. Success is delivery; Failed,
// Rejected, AbsentSubscriber and Expired are final failures; Sent, Submitted
// and Buffered are steps on the way. A form without id, or without one of
// these statuses, is an error, and so is an id PostgreSQL's text cannot hold.
func parseDeliveryReport(form url.Values) (deliveryReport, error) {
	r := deliveryReport{providerID: form.Get("id")}
	switch status := form.Get("status"); status {
	case "Success":
		r.status = "delivered"
	case "Failed", "Rejected", "AbsentSubscriber", "Expired":
		// "Failed: DeliveryFailure", or just "Failed" without a failureReason.
		r.status, r.reason = "undelivered", storable(strings.TrimSuffix(status+": "+form.Get("failureReason"), ": "), "")
	case "Sent", "Submitted", "Buffered":
	default:
		return deliveryReport{}, fmt.Errorf("%q is not a delivery report status", storable(status, ""))
	}
	if r.providerID == "" || !utf8.ValidString(r.providerID) || strings.ContainsRune(r.providerID, 0) {
		return deliveryReport{}, errors.New("a delivery report needs an id, in UTF-8 without NUL")
	}
	return r, nil
}

// smsText is the SMS telling a customer of their order. Typographic
// punctuation and Unicode spaces become their GSM-7 stand-ins first, so that
// a curly apostrophe does not force UCS-2 and its 70-unit segment. A text
// longer than one segment has its item cut, ending in "...", just enough to
// fit but never below smsMinItem characters; when that does not fit, the
// first name is cut to smsMaxName and the item again just enough. When no
// cut fits, the whole text goes uncut, in several segments: a cut that saves
// no segment only loses words.
func smsText(n notice) string {
	// toGSM has made every Unicode space a plain one.
	name, _, _ := strings.Cut(strings.TrimSpace(toGSM(n.Name)), " ")
	item := []rune(toGSM(n.Item))
	render := func(name string, keep int) string {
		return fmt.Sprintf("Hi %s, your order #%d for %s (%s %s) has been placed. Thank you!", name, n.OrderID, shorten(item, keep), n.Currency, n.Amount)
	}
	// A name no longer than smsMaxName is tried twice, to no effect.
	for _, name := range []string{name, shorten([]rune(name), smsMaxName)} {
		for keep := len(item); keep >= min(len(item), smsMinItem); keep-- {
			if length, segment := smsSize(render(name, keep)); length <= segment {
				return render(name, keep)
			}
		}
	}
	return render(name, len(item))
}

// shorten returns r cut to n runes ending in "...", or whole if it is no longer.
func shorten(r []rune, n int) string {
	if len(r) <= n {
		return string(r)
	}
	return string(r[:n-3]) + "..."
}

// gsmStandIns are the GSM-7 characters sent for typographic ones that GSM-7
// lacks; toGSM also turns "…" into "..." and Unicode spaces into plain ones.
var gsmStandIns = map[rune]rune{
	'‘': '\'', '’': '\'', '‚': '\'', '′': '\'', '“': '"', '”': '"', '„': '"', '″': '"', '«': '"', '»': '"',
	'‒': '-', '–': '-', '—': '-', '―': '-', '−': '-',
}

// toGSM replaces typographic characters with their GSM-7 stand-ins.
func toGSM(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Zs, r) {
			return ' '
		}
		return cmp.Or(gsmStandIns[r], r) // r itself where it has no stand-in
	}, strings.ReplaceAll(s, "…", "..."))
}

// smsSize returns how long s is and how much one segment holds in the
// encoding s needs: septets and 160 for GSM-7, UTF-16 units and 70 for UCS-2.
func smsSize(s string) (length, segment int) {
	for _, r := range s {
		if !strings.ContainsRune(gsmBasic+gsmExtended, r) {
			return len(utf16.Encode([]rune(s))), ucs2Segment
		}
		length++
		if strings.ContainsRune(gsmExtended, r) {
			length++ // the escape septet that precedes an extended character
		}
	}
	return length, gsmSegment
}
