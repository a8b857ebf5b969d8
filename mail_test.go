package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

const testFrom = "orders@shop.example"

// newTestMailer returns a mailer for rawURL that trusts the test certificate,
// dials srv whatever host rawURL names, and is called mailer.shop.example.
func newTestMailer(t testing.TB, srv *smtpFake, rawURL string, timeout time.Duration) *smtpMailer {
	t.Helper()
	cfg, err := parseSMTPURL(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	m, err := newSMTPMailer(cfg, testFrom, timeout)
	if err != nil {
		t.Fatal(err)
	}
	_, m.tlsConfig.RootCAs = testCert()
	m.addr, m.hostname = srv.ln.Addr().String(), "mailer.shop.example"
	return m
}

// mailNotice is an order for recipient to.
func mailNotice(to string) notice {
	return notice{OrderID: 12, To: to, Name: "Amina Njoroge", Item: "kit", Amount: 125000, Currency: "KES",
		Time: time.Date(2026, 11, 21, 9, 30, 0, 0, time.UTC)}
}

func TestParseSMTPURL(t *testing.T) {
	tests := []struct {
		raw     string
		want    smtpConfig
		wantErr string
	}{
		{raw: "smtp://user:pass@mail.example.com:2525", want: smtpConfig{host: "mail.example.com", port: "2525", username: "user", password: "pass"}},
		{raw: "smtp://mail.example.com", want: smtpConfig{host: "mail.example.com", port: "587"}},
		{raw: "SMTP://mail.example.com/", want: smtpConfig{host: "mail.example.com", port: "587"}},
		{raw: "smtp://mail.example.com?starttls=optional", want: smtpConfig{host: "mail.example.com", port: "587", starttlsOptional: true}},
		{raw: "smtps://mail.example.com", want: smtpConfig{host: "mail.example.com", port: "465", implicitTLS: true}},
		{raw: "smtps://u%40shop:p%2Fw%3A%C3%A9@mail.example.com:4650",
			want: smtpConfig{host: "mail.example.com", port: "4650", implicitTLS: true, username: "u@shop", password: "p/w:é"}},
		{raw: "smtp://relay@[::1]:25", want: smtpConfig{host: "::1", port: "25", username: "relay"}},
		{raw: "smtp://@mail.example.com", want: smtpConfig{host: "mail.example.com", port: "587"}},
		{raw: "http://user:s3cret@mail.example.com", wantErr: `scheme "http" is not smtp or smtps`},
		{raw: "user:s3cret@mail.example.com:587", wantErr: "is not smtp or smtps"},
		{raw: "", wantErr: `scheme "" is not smtp or smtps`},
		{raw: "smtp:user:s3cret@mail.example.com", wantErr: "has no host"},
		{raw: "smtp://user:s3cret@:587", wantErr: "has no host"},
		{raw: "smtp://user:s3cret@mail.example.com/inbox", wantErr: "no path or fragment"},
		{raw: "smtp://user:s3cret@mail.example.com#x", wantErr: "no path or fragment"},
		{raw: "smtp://user:s3cret@mail.example.com?tls=1", wantErr: "no query but ?starttls=optional on smtp://"},
		{raw: "smtp://user:s3cret@mail.example.com?starttls=required", wantErr: "no query but"},
		{raw: "smtp://user:s3cret@mail.example.com?starttls=optional&x=1", wantErr: "no query but"},
		{raw: "smtps://user:s3cret@mail.example.com?starttls=optional", wantErr: "no query but"},
		{raw: "smtp://user:s3cret@mail.example.com?", wantErr: "no query but"},
		{raw: "smtp://user:s3cret@mail.example.com:0", wantErr: `port "0" is out of range`},
		{raw: "smtp://user:s3cret@mail.example.com:99999", wantErr: `port "99999" is out of range`},
		{raw: "smtp://user:s3cret@mail.example.com:99999999999999999999", wantErr: "is out of range"},
		{raw: "smtp://user:s3cret@mail.example.com:smtp", wantErr: "malformed"},
		{raw: "smtp://user:s3cret%zz@mail.example.com", wantErr: "malformed"},
		{raw: "smtp://:s3cret@mail.example.com", wantErr: "password but no user"},
	}
	for _, tc := range tests {
		t.Run(tc.raw, func(t *testing.T) {
			got, err := parseSMTPURL(tc.raw)
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("got error %q, want no password in it", err)
			}
			if tc.wantErr == "" && (err != nil || got != tc.want) {
				t.Errorf("got %+v, error %v; want %+v", got, err, tc.want)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("got %+v, error %v; want an error containing %q", got, err, tc.wantErr)
			}
		})
	}
}

func TestNewSMTPMailer(t *testing.T) {
	cfg := smtpConfig{host: "mail.example.com", port: "587"}
	for _, from := range []string{"Shop <orders@shop.example>", "<orders@shop.example>", "orders", "orders@shop.example\r\nBcc: x@evil.example", "bestellungen@shöp.example"} {
		if _, err := newSMTPMailer(cfg, from, time.Second); err == nil || !strings.Contains(err.Error(), "mail: sender") {
			t.Errorf("from %q: got error %v, want one about the sender", from, err)
		}
	}
	m, err := newSMTPMailer(cfg, testFrom, time.Second)
	name, _ := os.Hostname()
	if !isDomainName(name) {
		name = ""
	}
	if err != nil || m.tlsConfig.ServerName != "mail.example.com" || m.addr != "mail.example.com:587" || m.hostname != name {
		t.Errorf("got %+v, error %v; want TLS for and a dial to mail.example.com:587, EHLO name %q", m, err, name)
	}
}

func TestIsDomainName(t *testing.T) {
	for name, want := range map[string]bool{"mail.example.com": true, "ip-10-0-0-7.ec2.internal": true, "localhost": false,
		"e784079b449483": false, "10.0.0.7": false, "::1": false, "host_1.example": false, "": false} {
		if got := isDomainName(name); got != want {
			t.Errorf("isDomainName(%q): got %v, want %v", name, got, want)
		}
	}
}

func TestSMTPMailerSend(t *testing.T) {
	const pass = "hunter2"
	relay, withCreds := "smtp://relay.test", "smtp://shop:hunter2@relay.test"
	authing := func(mechs ...string) *smtpFake { return &smtpFake{auth: mechs, user: "shop", pass: pass} }
	replying := func(key, reply string) *smtpFake { return &smtpFake{replies: map[string]string{key: reply}} }
	tests := []struct {
		name          string
		srv           *smtpFake
		url           string // dialled at the fake whatever its host; relay.test is not loopback
		wantTLS       bool
		wantAuth      string
		wantReason    string // substring; "" means delivered
		wantPermanent bool
		wantUncertain bool
	}{
		{name: "STARTTLS, PLAIN chosen over LOGIN", srv: authing("LOGIN", "PLAIN"), url: withCreds, wantTLS: true, wantAuth: "PLAIN"},
		{name: "STARTTLS, only LOGIN offered", srv: authing("LOGIN"), url: withCreds, wantTLS: true, wantAuth: "LOGIN"},
		{name: "STARTTLS without credentials", srv: &smtpFake{}, url: relay, wantTLS: true},
		{name: "smtps with PLAIN", srv: &smtpFake{implicit: true, auth: []string{"PLAIN"}, user: "shop", pass: pass}, url: "smtps://shop:hunter2@relay.test", wantTLS: true, wantAuth: "PLAIN"},
		{name: "opted out, sent in clear", srv: &smtpFake{noStartTLS: true}, url: relay + "?starttls=optional"},
		{name: "opted out, STARTTLS still used", srv: &smtpFake{}, url: relay + "?starttls=optional", wantTLS: true},
		{name: "loopback in clear", srv: &smtpFake{noStartTLS: true}, url: "smtp://127.0.0.1"},
		{name: "loopback in clear with LOGIN", srv: &smtpFake{noStartTLS: true, auth: []string{"LOGIN"}, user: "shop", pass: pass}, url: "smtp://shop:hunter2@localhost", wantAuth: "LOGIN"},
		{name: "no STARTTLS offered", srv: &smtpFake{noStartTLS: true}, url: relay, wantPermanent: true,
			wantReason: "smtp: relay.test does not offer STARTTLS; to send to it in clear, SMTP_URL needs ?starttls=optional and no user"},
		{name: "credentials never in clear", srv: &smtpFake{noStartTLS: true, auth: []string{"PLAIN"}, user: "shop", pass: pass}, url: withCreds + "?starttls=optional", wantPermanent: true,
			wantReason: "smtp: relay.test does not offer STARTTLS"},
		{name: "no mechanism spoken", srv: authing("CRAM-MD5", "XOAUTH2"), url: withCreds, wantPermanent: true,
			wantReason: `smtp: SMTP_URL has a user, but the relay offers AUTH "CRAM-MD5 XOAUTH2": neither PLAIN nor LOGIN`},
		{name: "no AUTH offered", srv: &smtpFake{}, url: withCreds, wantPermanent: true, wantReason: `offers AUTH "": neither`},
		{name: "bad credentials", srv: &smtpFake{auth: []string{"PLAIN"}, user: "shop", pass: "other"}, url: withCreds, wantPermanent: true,
			wantReason: "smtp: authentication failed: 535 5.7.8 authentication credentials invalid"},
		{name: "rejection quoting the password", srv: &smtpFake{implicit: true, auth: []string{"PLAIN"},
			replies: map[string]string{"AUTH": "535 5.7.8 hunter2 is not the password of shop"}}, url: "smtps://shop:hunter2@relay.test", wantPermanent: true, wantReason: "535 5.7.8 xxxxx is not the password"},
		{name: "sender needs authentication", srv: authing("PLAIN"), url: relay, wantPermanent: true, wantReason: "smtp: authentication failed: 530 5.7.0"},
		{name: "recipient unknown", srv: replying("RCPT", "550 5.1.1 mailbox unavailable"), url: relay, wantPermanent: true, wantReason: "smtp: 550 5.1.1 mailbox unavailable"},
		{name: "multi-line reply", srv: replying("RCPT", "550-5.1.1 no such user\r\n550 5.1.1 see \x1b[31mhttps://help.example\x1b[0m"),
			url: relay, wantPermanent: true, wantReason: "smtp: 550 5.1.1 no such user 5.1.1 see  [31mhttps://help.example [0m"},
		{name: "recipient greylisted", srv: replying("RCPT", "451 4.7.1 try again later"), url: relay, wantReason: "smtp: 451 4.7.1 try again later"},
		{name: "greeting refuses service", srv: replying("GREETING", "554 5.3.2 no service"), url: relay, wantPermanent: true, wantReason: "smtp: 554 5.3.2 no service"},
		{name: "greeting busy", srv: replying("GREETING", "421 4.3.2 too busy"), url: relay, wantReason: "smtp: 421 4.3.2 too busy"},
		{name: "EHLO and HELO refused", srv: &smtpFake{replies: map[string]string{"EHLO": "502 5.5.2 no", "HELO": "550 5.7.1 go away"}},
			url: relay, wantPermanent: true, wantReason: "smtp: 550 5.7.1 go away"},
		{name: "STARTTLS unavailable", srv: replying("STARTTLS", "454 4.7.0 TLS not available"), url: relay, wantReason: "smtp: 454 4.7.0 TLS not available"},
		{name: "certificate for another name on STARTTLS", srv: &smtpFake{}, url: "smtp://other.test", wantReason: "certificate"},
		{name: "certificate for another name on smtps", srv: &smtpFake{implicit: true}, url: "smtps://other.test", wantReason: "certificate"},
		{name: "smtps to a plain server", srv: &smtpFake{}, url: "smtps://relay.test", wantReason: "smtp: "},
		{name: "DATA refused", srv: replying("DATA", "554 5.7.1 no data"), url: relay, wantPermanent: true, wantReason: "smtp: 554 5.7.1 no data"},
		{name: "message rejected", srv: replying("END", "552 5.3.4 message too big"), url: relay, wantPermanent: true, wantReason: "smtp: 552 5.3.4 message too big"},
		{name: "message deferred", srv: replying("END", "452 4.3.1 insufficient storage"), url: relay, wantReason: "smtp: 452 4.3.1 insufficient storage"},
		{name: "garbled reply", srv: replying("MAIL", "hello?"), url: relay, wantReason: "short response"},
		{name: "silent before the message", srv: replying("DATA", fakeSilent), url: relay, wantReason: "i/o timeout"},
		{name: "hung up before the message", srv: replying("RCPT", fakeDrop), url: relay, wantReason: "EOF"},
		{name: "silent after the message", srv: replying("END", fakeSilent), url: relay, wantUncertain: true,
			wantReason: "smtp: the message was sent but no reply to it arrived: read tcp"},
		{name: "hung up after the message", srv: replying("END", fakeDrop), url: relay, wantUncertain: true,
			wantReason: "smtp: the message was sent but no reply to it arrived: EOF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.srv.start(t)
			m := newTestMailer(t, tc.srv, tc.url, time.Second)
			id, err := m.Send(t.Context(), mailNotice("ann@example.org"))
			got := tc.srv.received()
			if tc.wantReason != "" {
				se := checkSendError(t, id, err, tc.wantPermanent, tc.wantReason)
				if se.Uncertain != tc.wantUncertain || strings.Contains(se.Reason, pass) || len(got) != 0 {
					t.Errorf("got Uncertain %v, reason %q, %d messages accepted; want Uncertain %v, no password, none accepted",
						se.Uncertain, se.Reason, len(got), tc.wantUncertain)
				}
				return
			}
			if err != nil || len(got) != 1 {
				t.Fatalf("got error %v and %d messages, want none and 1", err, len(got))
			}
			h, _, _ := parseMail(t, got[0].data)
			got[0].data, got[0].stuffed = "", 0
			want := smtpMessage{from: testFrom, to: []string{"ann@example.org"}, auth: tc.wantAuth, ehlo: "mailer.shop.example", tls: tc.wantTLS}
			if !reflect.DeepEqual(got[0], want) || id != h.Get("Message-ID") {
				t.Errorf("got %+v, provider id %q; want %+v, the Message-ID %q", got[0], id, want, h.Get("Message-ID"))
			}
		})
	}
}

// checkSendError fails t unless Send returned no id and a *SendError with the
// given permanence whose reason contains wantReason.
func checkSendError(t *testing.T, id string, err error, wantPermanent bool, wantReason string) *SendError {
	t.Helper()
	se, ok := errors.AsType[*SendError](err)
	if !ok {
		t.Fatalf("got error %v (%T), want a *SendError", err, err)
	}
	if id != "" || err.Error() != se.Reason || se.Permanent != wantPermanent || !strings.Contains(se.Reason, wantReason) {
		t.Errorf("got id %q, Permanent %v, reason %q, Error() %q; want no id, Permanent %v, a reason containing %q and Error() the same",
			id, se.Permanent, se.Reason, err.Error(), wantPermanent, wantReason)
	}
	return se
}

func TestSMTPMailerSendRefusesRecipients(t *testing.T) {
	// The fake hangs up at once, so a Send that dialled would fail otherwise.
	srv := &smtpFake{replies: map[string]string{"GREETING": fakeDrop}}
	srv.start(t)
	m := newTestMailer(t, srv, "smtp://relay.test", time.Second)
	for to, want := range map[string]string{"ann@example.org\r\nBcc: all@example.org": "plain ASCII", "ann@example.org\nBcc: all@example.org": "plain ASCII",
		"zoë@example.org": "plain ASCII", "ann@exämple.org": "plain ASCII", "Ann <ann@example.org>": "bare e-mail", "+15551234567": "bare e-mail", "": "bare e-mail"} {
		id, err := m.Send(t.Context(), mailNotice(to))
		checkSendError(t, id, err, true, fmt.Sprintf("mail: recipient %q is not a %s address", to, want))
	}
}

func TestSMTPMailerMessage(t *testing.T) {
	srv := &smtpFake{}
	srv.start(t)
	m := newTestMailer(t, srv, "smtp://relay.test", time.Second)
	n := mailNotice("zoe@example.org")
	n.Name, n.Item = "Zoë Wanjirũ Kamau", strings.Repeat("Exome v2.1. ", 13)+"Séquençage✓" // 167 characters
	start := time.Now().Truncate(time.Second)
	id, err := m.Send(t.Context(), n)
	got := srv.received()
	if err != nil || len(got) != 1 {
		t.Fatalf("got error %v and %d messages, want none and 1", err, len(got))
	}
	if lf, crlf := strings.Count(got[0].data, "\n"), strings.Count(got[0].data, "\r\n"); lf != crlf || got[0].stuffed == 0 {
		t.Errorf("got %d LF of which %d in CRLF, %d lines dot-stuffed; want every line ending CRLF, the lines starting with a dot stuffed",
			lf, crlf, got[0].stuffed)
	}
	h, subject, body := parseMail(t, got[0].data)
	for name, want := range map[string]string{
		"From": testFrom, "To": "zoe@example.org", "Auto-Submitted": "auto-generated",
		"Mime-Version": "1.0", "Content-Type": "text/plain; charset=utf-8", "Content-Transfer-Encoding": "quoted-printable",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("got %s %q, want %q", name, got, want)
		}
	}
	if date, err := h.Date(); err != nil || date.Before(start) || date.After(time.Now()) {
		t.Errorf("got Date %v (error %v), want between %v and now", date, err, start)
	}
	if want := regexp.MustCompile(`^<[A-Z2-7]{26}\.12@shop\.example>$`); !want.MatchString(id) || h.Get("Message-Id") != id {
		t.Errorf("got Message-ID %q and provider id %q, want equal and matching %s", h.Get("Message-Id"), id, want)
	}
	want := "Hello Zoë Wanjirũ Kamau,\r\n\r\nYour order #12 has been placed:\r\n\r\nItem:   " + n.Item +
		"\r\nAmount: KES 1250.00\r\nTime:   Saturday, 21 November 2026, 09:30 UTC\r\n\r\nThank you!\r\n"
	if subject != "Order #12 placed" || body != want {
		t.Errorf("got subject %q, body %q; want %q, %q", subject, body, "Order #12 placed", want)
	}
}

func TestSMTPMailerEHLOByAddress(t *testing.T) {
	for ip, want := range map[string]string{"192.0.2.7": "[192.0.2.7]", "::ffff:192.0.2.7": "[192.0.2.7]", "2001:db8::7": "[IPv6:2001:db8::7]"} {
		if got := addressLiteral(net.ParseIP(ip)); got != want {
			t.Errorf("addressLiteral(%s): got %q, want %q", ip, got, want)
		}
	}
	srv := &smtpFake{}
	srv.start(t)
	m := newTestMailer(t, srv, "smtp://relay.test", time.Second)
	m.hostname = "" // this host has no name a relay could resolve
	if _, err := m.Send(t.Context(), mailNotice("ann@example.org")); err != nil {
		t.Fatalf("got error %v, want none", err)
	}
	if got := srv.received(); len(got) != 1 || got[0].ehlo != "[127.0.0.1]" {
		t.Errorf("got %+v, want one message after EHLO [127.0.0.1]", got)
	}
}

func TestSMTPMailerSendConnectionRefused(t *testing.T) {
	srv := &smtpFake{}
	srv.start(t)
	m := newTestMailer(t, srv, "smtp://127.0.0.1", 5*time.Second)
	srv.ln.Close()
	id, err := m.Send(t.Context(), mailNotice("ann@example.org"))
	checkSendError(t, id, err, false, "refused")
}

func TestSMTPMailerSendStops(t *testing.T) {
	const ms = time.Millisecond
	tests := []struct {
		name        string
		url         string
		timeout     time.Duration // the mailer's
		cancelAfter time.Duration // when set, ctx is cancelled this long after Send starts
		deadline    time.Duration // when set, ctx's deadline is this long after Send starts, else an hour
		wantErr     error
	}{
		{name: "mailer timeout waiting for the greeting", url: "smtp://relay.test", timeout: 300 * ms, wantErr: os.ErrDeadlineExceeded},
		{name: "mailer timeout during the TLS handshake", url: "smtps://relay.test", timeout: 300 * ms, wantErr: os.ErrDeadlineExceeded},
		{name: "cancelled while waiting for the greeting", url: "smtp://relay.test", timeout: time.Minute, cancelAfter: 100 * ms, wantErr: context.Canceled},
		{name: "cancelled during the TLS handshake", url: "smtps://relay.test", timeout: time.Minute, cancelAfter: 100 * ms, wantErr: context.Canceled},
		{name: "ended before dialling", url: "smtp://relay.test", timeout: time.Minute, deadline: -time.Second, wantErr: context.DeadlineExceeded},
		{name: "deadline sooner than the timeout", url: "smtp://relay.test", timeout: time.Minute, deadline: 100 * ms, wantErr: context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Silent from the start; to smtps that is a stalled handshake.
			srv := &smtpFake{replies: map[string]string{"GREETING": fakeSilent}}
			srv.start(t)
			m := newTestMailer(t, srv, tc.url, tc.timeout)
			ctx, cancel := context.WithTimeout(t.Context(), cmp.Or(tc.deadline, time.Hour))
			defer cancel()
			if tc.cancelAfter != 0 {
				time.AfterFunc(tc.cancelAfter, cancel)
			}
			start := time.Now()
			id, err := m.Send(ctx, mailNotice("ann@example.org"))
			if elapsed := time.Since(start); elapsed > min(tc.timeout, time.Second)+2*time.Second {
				t.Errorf("got Send returning after %v, want it to stop with the timeout or ctx", elapsed)
			}
			wantReason := "smtp: delivery aborted: " + tc.wantErr.Error()
			if tc.wantErr == os.ErrDeadlineExceeded {
				wantReason = "i/o timeout"
			}
			checkSendError(t, id, err, false, wantReason)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("got error %v, want one wrapping %v", err, tc.wantErr)
			}
		})
	}
}

// expiredCtx has a deadline that has passed but has not noticed yet, as
// when a connection sharing the deadline times out first.
type expiredCtx struct{ context.Context }

func (expiredCtx) Deadline() (time.Time, bool) { return time.Now().Add(-time.Millisecond), true }

func TestSMTPMailerClassifyDeadlineRace(t *testing.T) {
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	got := new(smtpMailer).classify(expiredCtx{context.Background()}, timeout)
	checkSendError(t, "", got, false, "smtp: delivery aborted: context deadline exceeded")
	if !errors.Is(got, context.DeadlineExceeded) || !errors.Is(got, os.ErrDeadlineExceeded) {
		t.Errorf("got error %v, want it to wrap both ctx's deadline and the connection's", got)
	}
}

func TestSMTPMailerSendConcurrentlyWithUniqueIDs(t *testing.T) {
	srv := &smtpFake{auth: []string{"LOGIN"}, user: "shop", pass: "pw"}
	srv.start(t)
	m := newTestMailer(t, srv, "smtp://shop:pw@relay.test", 5*time.Second)
	const n = 8
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := m.Send(t.Context(), mailNotice(fmt.Sprintf("c%d@example.org", i))); err != nil {
				t.Errorf("send %d: got error %v, want none", i, err)
			}
		})
	}
	wg.Wait()
	ids := map[string]bool{}
	for _, msg := range srv.received() {
		h, _, _ := parseMail(t, msg.data)
		ids[h.Get("Message-ID")] = true
	}
	if len(ids) != n {
		t.Errorf("got %d distinct Message-IDs in %d messages, want %d", len(ids), len(srv.received()), n)
	}
}
