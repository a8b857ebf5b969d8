package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

const testFrom = "orders@shop.example"

// newTestMailer starts srv and returns a mailer for rawURL, named
// mailer.shop.example, that trusts testCert and dials srv for any host.
func newTestMailer(t testing.TB, srv *smtpFake, rawURL string, timeout time.Duration) *smtpMailer {
	t.Helper()
	srv.start(t)
	cfg, err := parseSMTPURL(rawURL)
	fatalIf(t, err)
	m, err := newSMTPMailer(cfg, testFrom, timeout)
	fatalIf(t, err)
	_, m.tlsConfig.RootCAs = testCert()
	m.addr, m.hostname = srv.ln.Addr().String(), "mailer.shop.example"
	return m
}

// mailNotice is order 12 for recipient to. Its item, 167 characters, makes
// quoted-printable break lines, some of which then start with a dot.
func mailNotice(to string) notice {
	return notice{OrderID: 12, To: to, Name: "Zoë Wanjirũ Kamau", Item: strings.Repeat("Exome v2.1. ", 13) + "Séquençage✓",
		Amount: 125000, Currency: "KES", Time: time.Date(2026, 11, 21, 9, 30, 0, 0, time.UTC)}
}

func TestParseSMTPURL(t *testing.T) {
	tests := []struct {
		raw     string
		want    smtpConfig // the zero config when an error is wanted
		wantErr string
	}{
		{raw: "smtp://user:pass@mail.example.com:2525", want: smtpConfig{host: "mail.example.com", port: "2525", username: "user", password: "pass"}},
		{raw: "smtp://mail.example.com", want: smtpConfig{host: "mail.example.com", port: "587"}},
		{raw: "SMTP://mail.example.com/", want: smtpConfig{host: "mail.example.com", port: "587"}},
		{raw: "smtp://mail.example.com?starttls=optional", want: smtpConfig{host: "mail.example.com", port: "587", starttlsOptional: true}},
		{raw: "smtps://mail.example.com", want: smtpConfig{host: "mail.example.com", port: "465", implicitTLS: true}},
		{raw: "smtps://u%40shop:p%2Fw%3A%C3%A9@mail.example.com:4650", want: smtpConfig{host: "mail.example.com", port: "4650", implicitTLS: true, username: "u@shop", password: "p/w:é"}},
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
			if msg := fmt.Sprint(err); got != tc.want || (err == nil) != (tc.wantErr == "") || !strings.Contains(msg, tc.wantErr) || strings.Contains(msg, "s3cret") {
				t.Errorf("got %+v, error %v; want %+v, an error containing %q (none if empty) without the password", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// Addresses that are not bare ASCII are refused as senders and, before
// anything is dialled, as recipients.
func TestNewSMTPMailer(t *testing.T) {
	cfg := smtpConfig{host: "mail.example.com", port: "587"}
	m, err := newSMTPMailer(cfg, testFrom, time.Second)
	name, _ := os.Hostname()
	if !isDomainName(name) {
		name = ""
	}
	if err != nil || m.tlsConfig.ServerName != "mail.example.com" || m.addr != "mail.example.com:587" || m.hostname != name {
		t.Fatalf("got %+v, error %v; want TLS for and a dial to mail.example.com:587, EHLO name %q", m, err, name)
	}
	for addr, kind := range map[string]string{"ann@example.org\r\nBcc: all@example.org": "plain ASCII", "ann@example.org\nBcc: all@example.org": "plain ASCII",
		"zoë@example.org": "plain ASCII", "ann@exämple.org": "plain ASCII", "Ann <ann@example.org>": "bare e-mail", "<ann@example.org>": "bare e-mail",
		"ann": "bare e-mail", "+15551234567": "bare e-mail", "": "bare e-mail"} {
		want := fmt.Sprintf("%q is not a %s address", addr, kind)
		if _, err := newSMTPMailer(cfg, addr, time.Second); err == nil || err.Error() != "mail: sender "+want {
			t.Errorf("sender %q: got error %v, want %q", addr, err, "mail: sender "+want)
		}
		id, err := m.Send(t.Context(), mailNotice(addr))
		if se, ok := errors.AsType[*SendError](err); !ok || id != "" || !se.Permanent || se.Reason != "mail: recipient "+want || err.Error() != se.Reason {
			t.Errorf("recipient %q: got id %q, error %#v; want no id and a permanent *SendError %q", addr, id, err, "mail: recipient "+want)
		}
	}
	for name, want := range map[string]bool{"mail.example.com": true, "ip-10-0-0-7.ec2.internal": true, "localhost": false,
		"e784079b449483": false, "10.0.0.7": false, "::1": false, "host_1.example": false, "": false} {
		equal(t, fmt.Sprintf("isDomainName(%q)", name), isDomainName(name), want)
	}
}

func TestSMTPMailerSend(t *testing.T) {
	const pass, ms = "hunter2", time.Millisecond
	relay, withCreds := "smtp://relay.test", "smtp://shop:hunter2@relay.test"
	authing := func(mechs ...string) *smtpFake { return &smtpFake{auth: mechs, user: "shop", pass: pass} }
	replying := func(key, reply string) *smtpFake { return &smtpFake{replies: map[string]string{key: reply}} }
	// Silent from the start; to smtps that is a stalled handshake.
	silent := func() *smtpFake { return replying("GREETING", fakeSilent) }
	tests := []struct {
		name, url string // url, relay when unset, is dialled at the fake whatever its host; relay.test is not loopback
		srv       *smtpFake
		// The mailer's timeout, a minute when unset; when set, ctx is
		// cancelled, or its deadline passes, this long after Send starts.
		timeout, cancelAfter, deadline time.Duration
		refused                        bool // the fake stops listening before Send
		wantTLS                        bool
		wantAuth, wantReason           string // wantReason is a substring; "" means delivered
		wantPermanent, wantUncertain   bool
		wantErr                        error // when set, one the error must wrap
	}{
		{name: "STARTTLS, PLAIN chosen over LOGIN", srv: authing("LOGIN", "PLAIN"), url: withCreds, wantTLS: true, wantAuth: "PLAIN"},
		{name: "STARTTLS, only LOGIN offered", srv: authing("LOGIN"), url: withCreds, wantTLS: true, wantAuth: "LOGIN"},
		{name: "STARTTLS without credentials", srv: &smtpFake{}, wantTLS: true},
		{name: "smtps with PLAIN", srv: &smtpFake{implicit: true, auth: []string{"PLAIN"}, user: "shop", pass: pass}, url: "smtps://shop:hunter2@relay.test", wantTLS: true, wantAuth: "PLAIN"},
		{name: "opted out, sent in clear", srv: &smtpFake{noStartTLS: true}, url: relay + "?starttls=optional"},
		{name: "opted out, STARTTLS still used", srv: &smtpFake{}, url: relay + "?starttls=optional", wantTLS: true},
		{name: "loopback in clear", srv: &smtpFake{noStartTLS: true}, url: "smtp://127.0.0.1"},
		{name: "loopback in clear with LOGIN", srv: &smtpFake{noStartTLS: true, auth: []string{"LOGIN"}, user: "shop", pass: pass}, url: "smtp://shop:hunter2@localhost", wantAuth: "LOGIN"},
		{name: "no STARTTLS offered", srv: &smtpFake{noStartTLS: true}, wantPermanent: true,
			wantReason: "smtp: relay.test does not offer STARTTLS; to send to it in clear, SMTP_URL needs ?starttls=optional and no user"},
		{name: "credentials never in clear", srv: &smtpFake{noStartTLS: true, auth: []string{"PLAIN"}, user: "shop", pass: pass}, url: withCreds + "?starttls=optional", wantPermanent: true,
			wantReason: "smtp: relay.test does not offer STARTTLS"},
		{name: "no mechanism spoken", srv: authing("CRAM-MD5", "XOAUTH2"), url: withCreds, wantPermanent: true,
			wantReason: `smtp: SMTP_URL has a user, but the relay offers AUTH "CRAM-MD5 XOAUTH2": neither PLAIN nor LOGIN`},
		{name: "no AUTH offered", srv: &smtpFake{}, url: withCreds, wantPermanent: true, wantReason: `offers AUTH "": neither`},
		{name: "bad credentials", srv: &smtpFake{auth: []string{"PLAIN"}, user: "shop", pass: "other"}, url: withCreds, wantPermanent: true,
			wantReason: "smtp: authentication failed: 535 5.7.8 authentication credentials invalid"},
		{name: "rejection quoting the password", srv: &smtpFake{implicit: true, auth: []string{"PLAIN"},
			replies: map[string]string{"AUTH": "535 5.7.8 hunter2 is not the password of shop"}}, url: "smtps://shop:hunter2@relay.test", wantPermanent: true, wantReason: "535 5.7.8 [redacted] is not the password"},
		{name: "sender needs authentication", srv: authing("PLAIN"), wantPermanent: true, wantReason: "smtp: authentication failed: 530 5.7.0"},
		{name: "recipient unknown", srv: replying("RCPT", "550 5.1.1 mailbox unavailable"), wantPermanent: true, wantReason: "smtp: 550 5.1.1 mailbox unavailable"},
		{name: "multi-line reply", srv: replying("RCPT", "550-5.1.1 no such user\r\n550 5.1.1 see \x1b[31mhttps://help.example\x1b[0m"),
			wantPermanent: true, wantReason: "smtp: 550 5.1.1 no such user 5.1.1 see  [31mhttps://help.example [0m"},
		{name: "recipient greylisted", srv: replying("RCPT", "451 4.7.1 try again later"), wantReason: "smtp: 451 4.7.1 try again later"},
		{name: "greeting refuses service", srv: replying("GREETING", "554 5.3.2 no service"), wantPermanent: true, wantReason: "smtp: 554 5.3.2 no service"},
		{name: "greeting busy", srv: replying("GREETING", "421 4.3.2 too busy"), wantReason: "smtp: 421 4.3.2 too busy"},
		{name: "EHLO and HELO refused", srv: &smtpFake{replies: map[string]string{"EHLO": "502 5.5.2 no", "HELO": "550 5.7.1 go away"}},
			wantPermanent: true, wantReason: "smtp: 550 5.7.1 go away"},
		{name: "STARTTLS unavailable", srv: replying("STARTTLS", "454 4.7.0 TLS not available"), wantReason: "smtp: 454 4.7.0 TLS not available"},
		{name: "certificate for another name on STARTTLS", srv: &smtpFake{}, url: "smtp://other.test", wantReason: "certificate"},
		{name: "certificate for another name on smtps", srv: &smtpFake{implicit: true}, url: "smtps://other.test", wantReason: "certificate"},
		{name: "smtps to a plain server", srv: &smtpFake{}, url: "smtps://relay.test", wantReason: "smtp: "},
		{name: "DATA refused", srv: replying("DATA", "554 5.7.1 no data"), wantPermanent: true, wantReason: "smtp: 554 5.7.1 no data"},
		{name: "message rejected", srv: replying("END", "552 5.3.4 message too big"), wantPermanent: true, wantReason: "smtp: 552 5.3.4 message too big"},
		{name: "message deferred", srv: replying("END", "452 4.3.1 insufficient storage"), wantReason: "smtp: 452 4.3.1 insufficient storage"},
		{name: "garbled reply", srv: replying("MAIL", "hello?"), wantReason: "short response"},
		{name: "silent before the message", srv: replying("DATA", fakeSilent), timeout: 300 * ms, wantReason: "i/o timeout"},
		{name: "hung up before the message", srv: replying("RCPT", fakeDrop), wantReason: "EOF"},
		{name: "silent after the message", srv: replying("END", fakeSilent), timeout: 300 * ms, wantUncertain: true, wantReason: "smtp: the message was sent but no reply to it arrived: read tcp"},
		{name: "hung up after the message", srv: replying("END", fakeDrop), wantUncertain: true, wantReason: "smtp: the message was sent but no reply to it arrived: EOF"},
		{name: "connection refused", srv: &smtpFake{}, url: "smtp://127.0.0.1", refused: true, wantReason: "refused"},
		{name: "mailer timeout waiting for the greeting", srv: silent(), timeout: 300 * ms, wantReason: "i/o timeout", wantErr: os.ErrDeadlineExceeded},
		{name: "mailer timeout during the TLS handshake", srv: silent(), url: "smtps://relay.test", timeout: 300 * ms, wantReason: "i/o timeout", wantErr: os.ErrDeadlineExceeded},
		{name: "cancelled while waiting for the greeting", srv: silent(), cancelAfter: 100 * ms, wantReason: "smtp: delivery aborted: context canceled", wantErr: context.Canceled},
		{name: "cancelled during the TLS handshake", srv: silent(), url: "smtps://relay.test", cancelAfter: 100 * ms, wantReason: "smtp: delivery aborted: context canceled", wantErr: context.Canceled},
		{name: "ended before dialling", srv: silent(), deadline: -time.Second, wantReason: "smtp: delivery aborted: context deadline exceeded", wantErr: context.DeadlineExceeded},
		{name: "deadline sooner than the timeout", srv: silent(), deadline: 100 * ms, wantReason: "smtp: delivery aborted: context deadline exceeded", wantErr: context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			timeout := cmp.Or(tc.timeout, time.Minute)
			m := newTestMailer(t, tc.srv, cmp.Or(tc.url, relay), timeout)
			if tc.refused {
				tc.srv.ln.Close()
			}
			ctx, cancel := context.WithTimeout(t.Context(), cmp.Or(tc.deadline, time.Hour))
			defer cancel()
			defer time.AfterFunc(cmp.Or(tc.cancelAfter, time.Hour), cancel).Stop()
			start := time.Now()
			id, err := m.Send(ctx, mailNotice("ann@example.org"))
			if elapsed := time.Since(start); elapsed > min(timeout, time.Second)+2*time.Second {
				t.Errorf("got Send returning after %v, want it to stop with the timeout or ctx", elapsed)
			}
			got := tc.srv.received()
			if tc.wantReason != "" {
				if se, ok := errors.AsType[*SendError](err); !ok || id != "" || err.Error() != se.Reason || se.Permanent != tc.wantPermanent || se.Uncertain != tc.wantUncertain ||
					!strings.Contains(se.Reason, tc.wantReason) || strings.Contains(se.Reason, pass) || len(got) != 0 || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
					t.Errorf("got id %q, error %#v, %d messages accepted; want no id, none accepted, and a *SendError with Permanent %v, Uncertain %v, "+
						"a reason (also its Error()) containing %q but not the password, wrapping %v", id, err, len(got), tc.wantPermanent, tc.wantUncertain, tc.wantReason, tc.wantErr)
				}
				return
			}
			fatalIf(t, err)
			mustEqual(t, "messages", len(got), 1)
			if g := got[0]; g.from != testFrom || len(g.to) != 1 || g.to[0] != "ann@example.org" || g.auth != tc.wantAuth || g.ehlo != "mailer.shop.example" || g.tls != tc.wantTLS {
				t.Errorf("got %+v; want from %s to ann@example.org, AUTH %q, EHLO mailer.shop.example, TLS %v", g, testFrom, tc.wantAuth, tc.wantTLS)
			}
			if lf, crlf := strings.Count(got[0].data, "\n"), strings.Count(got[0].data, "\r\n"); lf != crlf || !strings.Contains(got[0].data, "\r\n.") {
				// A line that starts with a dot arrives stuffed, and so keeps one.
				t.Errorf("got %d LF of which %d in CRLF in %q; want every line ending CRLF, the lines starting with a dot stuffed", lf, crlf, got[0].data)
			}
			h, body := parseMail(t, got[0].data)
			for name, want := range map[string]string{"From": testFrom, "To": "ann@example.org", "Subject": "Order #12 placed", "Auto-Submitted": "auto-generated",
				"Mime-Version": "1.0", "Content-Type": "text/plain; charset=utf-8", "Content-Transfer-Encoding": "quoted-printable"} {
				equal(t, name, h.Get(name), want)
			}
			if date, err := h.Date(); err != nil || date.Before(start.Truncate(time.Second)) || date.After(time.Now()) {
				t.Errorf("got Date %v (error %v), want between %v and now", date, err, start)
			}
			if want := regexp.MustCompile(`^<[A-Z2-7]{26}\.12@shop\.example>$`); !want.MatchString(id) || h.Get("Message-Id") != id {
				t.Errorf("got Message-ID %q and provider id %q, want equal and matching %s", h.Get("Message-Id"), id, want)
			}
			equal(t, "body", body, "Hello Zoë Wanjirũ Kamau,\r\n\r\nYour order #12 has been placed:\r\n\r\nItem:   "+mailNotice("").Item+
				"\r\nAmount: KES 1250.00\r\nTime:   Saturday, 21 November 2026, 09:30 UTC\r\n\r\nThank you!\r\n")
		})
	}
}

// Messages sent at once, from a host with no name a relay could resolve,
// all reach the relay with distinct Message-IDs.
func TestSMTPMailerSendConcurrently(t *testing.T) {
	for ip, want := range map[string]string{"192.0.2.7": "[192.0.2.7]", "::ffff:192.0.2.7": "[192.0.2.7]", "2001:db8::7": "[IPv6:2001:db8::7]"} {
		equal(t, "addressLiteral("+ip+")", addressLiteral(net.ParseIP(ip)), want)
	}
	srv := &smtpFake{auth: []string{"LOGIN"}, user: "shop", pass: "pw"}
	m := newTestMailer(t, srv, "smtp://shop:pw@relay.test", 5*time.Second)
	m.hostname = "" // EHLO gives the connection's address instead
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
	got, ids := srv.received(), map[string]bool{}
	for _, msg := range got {
		h, _ := parseMail(t, msg.data)
		ids[h.Get("Message-ID")] = true
		equal(t, "EHLO", msg.ehlo, "[127.0.0.1]")
		equal(t, "AUTH", msg.auth, "LOGIN")
	}
	equal(t, "messages", len(got), n)
	equal(t, "distinct Message-IDs", len(ids), n)
}

// expiredCtx has a deadline that has passed but has not noticed yet, as
// when a dial's own timeout for that deadline fires first.
type expiredCtx struct{ context.Context }

func (expiredCtx) Deadline() (time.Time, bool) { return time.Now().Add(-time.Millisecond), true }

func TestSMTPMailerClassifyDeadlineRace(t *testing.T) {
	got := new(smtpMailer).classify(expiredCtx{context.Background()}, &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded})
	if want := "smtp: delivery aborted: context deadline exceeded"; got.Permanent || got.Uncertain || got.Reason != want ||
		!errors.Is(got, context.DeadlineExceeded) || !errors.Is(got, os.ErrDeadlineExceeded) {
		t.Errorf("got %+v, want a retryable error %q wrapping both ctx's deadline and the connection's", got, want)
	}
}
