package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// smtpConfig says where an SMTP relay is and how to log in to it.
type smtpConfig struct {
	host        string // also the name the server's certificate must carry
	port        string
	implicitTLS bool   // smtps: TLS from the first byte rather than STARTTLS
	username    string // empty means no authentication
	password    string
}

// parseSMTPURL parses smtp://[user[:pass]@]host[:port], a plain connection on
// port 587 by default that is upgraded with STARTTLS when the server offers
// it, or smtps://[user[:pass]@]host[:port], implicit TLS on port 465 by
// default. User and password are URL-decoded. Any other scheme, a missing
// host, a password without a user, or a path, query or fragment is an error.
// Error texts never contain the password.
func parseSMTPURL(raw string) (smtpConfig, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// A *url.Error quotes the whole input, password included.
		return smtpConfig{}, errors.New("mail: SMTP URL is malformed")
	}
	var cfg smtpConfig
	switch u.Scheme {
	case "smtp":
		cfg.port = "587"
	case "smtps":
		cfg.port, cfg.implicitTLS = "465", true
	default:
		return smtpConfig{}, fmt.Errorf("mail: SMTP URL scheme %q is not smtp or smtps", u.Scheme)
	}
	// An opaque URL such as smtp:user:pass@host has no host either.
	if cfg.host = u.Hostname(); cfg.host == "" {
		return smtpConfig{}, errors.New("mail: SMTP URL has no host")
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return smtpConfig{}, errors.New("mail: SMTP URL must not have a path, query or fragment")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return smtpConfig{}, fmt.Errorf("mail: SMTP URL port %q is out of range", p)
		}
		cfg.port = p
	}
	if u.User != nil {
		cfg.username = u.User.Username()
		cfg.password, _ = u.User.Password()
		if cfg.username == "" && cfg.password != "" {
			return smtpConfig{}, errors.New("mail: SMTP URL has a password but no user")
		}
	}
	return cfg, nil
}

// smtpMailer is a Sender that delivers e-mail through one SMTP relay, one
// connection per message. It is safe for concurrent use once built.
type smtpMailer struct {
	cfg     smtpConfig
	from    string        // bare envelope and header sender address
	timeout time.Duration // bound on one whole Send, dial included
	// tlsConfig is used for both STARTTLS and smtps; its ServerName is the
	// relay's host unless replaced.
	tlsConfig *tls.Config
	now       func() time.Time // clock for the Date header
}

// newSMTPMailer returns a mailer sending as from, which must be a bare
// address such as orders@example.com, through the relay cfg describes. Each
// Send takes at most timeout, which must be positive.
func newSMTPMailer(raw, from string, timeout time.Duration) (*smtpMailer, error) {
	cfg, err := parseSMTPURL(raw)
	if err != nil {
		return nil, fmt.Errorf("SMTP_URL: %w", err)
	}
	if cfg.host == "" || cfg.port == "" {
		return nil, errors.New("mail: SMTP config has no host or port")
	}
	if timeout <= 0 {
		return nil, errors.New("mail: SMTP timeout must be positive")
	}
	if err := checkAddress(from); err != nil {
		return nil, fmt.Errorf("MAIL_FROM: mail: sender %w", err)
	}
	return &smtpMailer{
		cfg:       cfg,
		from:      from,
		timeout:   timeout,
		tlsConfig: &tls.Config{ServerName: cfg.host, MinVersion: tls.VersionTLS12},
		now:       time.Now,
	}, nil
}

// checkAddress returns an error unless addr is a bare address, without
// display name or angle brackets, that cannot break out of a header line.
func checkAddress(addr string) error {
	if strings.ContainsAny(addr, "\r\n") {
		return errors.New("address contains a line break")
	}
	if a, err := mail.ParseAddress(addr); err != nil || a.Name != "" || a.Address != addr {
		return fmt.Errorf("%q is not a bare e-mail address", addr)
	}
	return nil
}

// Send delivers m to the address m.To and returns the Message-ID it gave the
// message, angle brackets included. It makes one attempt: dial, TLS for
// smtps, EHLO, STARTTLS when offered on smtp, AUTH PLAIN when the config has
// a user, MAIL, RCPT, DATA and QUIT, all before the mailer's timeout or ctx's
// deadline, whichever is sooner; cancelling ctx aborts it. A recipient or
// subject that could inject headers fails before anything is dialled. Every
// failure is a *SendError, classified as classify describes.
func (s *smtpMailer) Send(ctx context.Context, n notice) (string, error) {
	m := struct {
		OrderID           int64
		To, Subject, Body string
	}{n.OrderID, n.To, fmt.Sprintf("Order #%d placed", n.OrderID), mailText(n)}
	msg, id, err := s.compose(m)
	if err == nil {
		err = s.deliver(ctx, m.To, msg)
	}
	if err != nil {
		return "", s.classify(ctx, err)
	}
	return id, nil
}

// compose renders m as a MIME message with CRLF line endings and returns it
// with its Message-ID. Its failures are permanent *SendErrors.
func (s *smtpMailer) compose(m struct {
	OrderID           int64
	To, Subject, Body string
}) ([]byte, string, error) {
	if err := checkAddress(m.To); err != nil {
		return nil, "", &SendError{Permanent: true, Reason: "mail: recipient " + err.Error()}
	}
	if strings.ContainsAny(m.Subject, "\r\n") {
		return nil, "", &SendError{Permanent: true, Reason: "mail: subject contains a line break"}
	}
	var nonce [16]byte
	rand.Read(nonce[:])
	id := fmt.Sprintf("<%s.%d@%s>", hex.EncodeToString(nonce[:]), m.OrderID,
		s.from[strings.LastIndexByte(s.from, '@')+1:])
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\n"+
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"+
		"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
		s.from, m.To, mime.QEncoding.Encode("utf-8", m.Subject), s.now().Format(time.RFC1123Z), id)
	// Writing to a bytes.Buffer cannot fail. Text mode makes every line
	// break CRLF and keeps lines short enough for any relay.
	qp := quotedprintable.NewWriter(&b)
	qp.Write([]byte(m.Body))
	qp.Close()
	return b.Bytes(), id, nil
}

// deliver runs one SMTP exchange handing msg to the relay for to.
func (s *smtpMailer) deliver(ctx context.Context, to string, msg []byte) error {
	deadline := time.Now().Add(s.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	dialer := net.Dialer{Deadline: deadline}
	conn, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort(s.cfg.host, s.cfg.port))
	if err != nil {
		return err
	}
	defer conn.Close()
	// The deadline stops a relay that goes quiet; closing on cancellation
	// unblocks a read or write already waiting, which net/smtp cannot do.
	conn.SetDeadline(deadline)
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	if s.cfg.implicitTLS {
		tc := tls.Client(conn, s.tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		conn = tc
	}
	c, err := smtp.NewClient(conn, s.cfg.host)
	if err != nil {
		return err
	}
	// EHLO explicitly: Extension would hide a relay refusing EHLO and HELO.
	if err := c.Hello("localhost"); err != nil {
		return err
	}
	if ok, _ := c.Extension("STARTTLS"); ok && !s.cfg.implicitTLS {
		if err := c.StartTLS(s.tlsConfig); err != nil {
			return err
		}
	}
	if s.cfg.username != "" {
		// PlainAuth refuses this too; checking first makes the refusal a
		// permanent failure rather than an unexplained error.
		if _, secure := c.TLSConnectionState(); !secure && !isLocalhost(s.cfg.host) {
			return &SendError{Permanent: true, Reason: errInsecureAuth.Error(), Err: errInsecureAuth}
		}
		if err := c.Auth(smtp.PlainAuth("", s.cfg.username, s.cfg.password, s.cfg.host)); err != nil {
			return err
		}
	}
	if err := c.Mail(s.from); err != nil {
		return err
	}
	if err := c.Rcpt(to); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err = w.Write(msg); err == nil {
		err = w.Close() // reads the relay's verdict on the message
	}
	if err != nil {
		return err
	}
	// The relay has taken the message; a failed QUIT must not make the
	// caller retry and deliver it twice.
	c.Quit()
	return nil
}

// errInsecureAuth is the cause of a Send refused because the connection to a
// remote relay is not encrypted but the config has credentials.
var errInsecureAuth = errors.New("smtp: refusing to send credentials over an unencrypted connection")

// isLocalhost mirrors net/smtp's rule for where PlainAuth may send
// credentials without TLS.
func isLocalhost(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

// classify turns a failure of Send into a *SendError. A relay's reply decides
// first: 4xx is retryable, 5xx permanent, and 530, 534 and 535 are permanent
// authentication failures. Anything else (cancellation, network errors,
// timeouts, TLS failures, garbled replies) is retryable. Reasons are the
// relay's or the network's words, with the password masked.
func (s *smtpMailer) classify(ctx context.Context, err error) *SendError {
	var se *SendError
	if errors.As(err, &se) {
		return se
	}
	cause := ctx.Err()
	if d, ok := ctx.Deadline(); ok && cause == nil && !time.Now().Before(d) {
		// The connection shares ctx's deadline and may report it first.
		cause = context.DeadlineExceeded
	}
	e := &SendError{Reason: "smtp: " + err.Error(), Err: err}
	var te *textproto.Error
	switch {
	case errors.As(err, &te):
		// Flattened so that a multi-line or hostile reply stays one line.
		reply := fmt.Sprintf("%03d %s", te.Code, strings.Map(func(r rune) rune {
			if unicode.IsControl(r) {
				return ' '
			}
			return r
		}, te.Msg))
		e.Reason = "smtp: " + reply
		switch {
		case te.Code == 530 || te.Code == 534 || te.Code == 535:
			e.Permanent, e.Reason = true, "smtp: authentication failed: "+reply
		case te.Code >= 500 && te.Code <= 599:
			e.Permanent = true
		}
	case cause != nil:
		// What broke is only the symptom of the abort: a closed connection.
		e.Reason, e.Err = "smtp: delivery aborted: "+cause.Error(), errors.Join(cause, err)
	}
	if s.cfg.password != "" {
		e.Reason = strings.ReplaceAll(e.Reason, s.cfg.password, "xxxxx")
	}
	return e
}

func mailText(n notice) string {
	return fmt.Sprintf("Dear %s,\n\nyour order #%d for %s (%s %s) has been placed.\n", n.Name, n.OrderID, n.Item, n.Currency, n.Amount)
}
