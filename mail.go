package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// smtpConfig says where an SMTP relay is and how to log in to it.
type smtpConfig struct {
	host             string // also the name the server's certificate must carry
	port             string
	implicitTLS      bool   // smtps: TLS from the first byte rather than STARTTLS
	starttlsOptional bool   // starttls=optional: a relay without STARTTLS gets the message in clear
	username         string // empty means no authentication
	password         string
}

// smtpOptOut is the only query SMTP_URL may carry: it lets an smtp:// relay
// that does not offer STARTTLS receive messages in clear.
const smtpOptOut = "starttls=optional"

// parseSMTPURL parses smtp://[user[:pass]@]host[:port][?starttls=optional],
// port 587 by default, or smtps://[user[:pass]@]host[:port], implicit TLS on
// port 465 by default. An smtp:// relay must offer STARTTLS unless its host
// is loopback or the URL carries starttls=optional. User and password are
// URL-decoded. Any other scheme or query, a missing host, a password without
// a user, a path or a fragment is an error. Error texts never contain the
// password.
func parseSMTPURL(raw string) (smtpConfig, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// A *url.Error quotes the whole input, password included.
		return smtpConfig{}, errors.New("mail: SMTP URL is malformed")
	}
	cfg := smtpConfig{port: map[string]string{"smtp": "587", "smtps": "465"}[u.Scheme], implicitTLS: u.Scheme == "smtps"}
	if cfg.port == "" {
		return smtpConfig{}, fmt.Errorf("mail: SMTP URL scheme %q is not smtp or smtps", u.Scheme)
	}
	// An opaque URL such as smtp:user:pass@host has no host either.
	if cfg.host = u.Hostname(); cfg.host == "" {
		return smtpConfig{}, errors.New("mail: SMTP URL has no host")
	}
	cfg.starttlsOptional = u.RawQuery == smtpOptOut && !cfg.implicitTLS
	if (u.Path != "" && u.Path != "/") || u.Fragment != "" || u.ForceQuery || (u.RawQuery != "" && !cfg.starttlsOptional) {
		return smtpConfig{}, errors.New("mail: SMTP URL must have no path or fragment, and no query but ?" +
			smtpOptOut + " on smtp://")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return smtpConfig{}, fmt.Errorf("mail: SMTP URL port %q is out of range", p)
		}
		cfg.port = p
	}
	// Both are "" when the URL has no user info.
	cfg.username = u.User.Username()
	cfg.password, _ = u.User.Password()
	if cfg.username == "" && cfg.password != "" {
		return smtpConfig{}, errors.New("mail: SMTP URL has a password but no user")
	}
	return cfg, nil
}

// smtpMailer is a Sender that delivers e-mail through one SMTP relay, one
// connection per message. It is safe for concurrent use once built.
type smtpMailer struct {
	cfg     smtpConfig
	addr    string        // where the relay is dialled: cfg's host and port
	from    string        // bare envelope and header sender address
	timeout time.Duration // bound on one whole Send, dial included
	// hostname is this host's name for EHLO; empty when it has none a relay
	// could resolve, and EHLO then gives the connection's address instead.
	hostname string
	// tlsConfig is used for both STARTTLS and smtps; its ServerName is the
	// relay's host unless replaced.
	tlsConfig *tls.Config
}

// newSMTPMailer returns a mailer sending as from through the relay cfg
// describes, each Send taking at most timeout. Its one error is a from that
// is not a bare ASCII address such as orders@example.com.
func newSMTPMailer(cfg smtpConfig, from string, timeout time.Duration) (*smtpMailer, error) {
	if err := checkAddress(from); err != nil {
		return nil, fmt.Errorf("mail: sender %w", err)
	}
	hostname, _ := os.Hostname()
	if !isDomainName(hostname) {
		hostname = ""
	}
	return &smtpMailer{
		cfg:       cfg,
		addr:      net.JoinHostPort(cfg.host, cfg.port),
		from:      from,
		timeout:   timeout,
		hostname:  hostname,
		tlsConfig: &tls.Config{ServerName: cfg.host, MinVersion: tls.VersionTLS12},
	}, nil
}

// checkAddress returns an error unless addr is a bare address in printable
// ASCII, without display name or angle brackets: nothing that could break out
// of a header line, and nothing that needs the SMTPUTF8 extension.
func checkAddress(addr string) error {
	if strings.ContainsFunc(addr, func(r rune) bool { return r < ' ' || r > '~' }) {
		return fmt.Errorf("%q is not a plain ASCII address", addr)
	}
	if a, err := mail.ParseAddress(addr); err != nil || a.Name != "" || a.Address != addr {
		return fmt.Errorf("%q is not a bare e-mail address", addr)
	}
	return nil
}

// isDomainName reports whether name looks like a fully qualified host name
// (RFC 5321, 2.3.5): letters, digits, hyphens and at least one dot, and not
// an IP address. Neither "localhost" nor a container's bare id passes.
func isDomainName(name string) bool {
	return strings.Contains(name, ".") && net.ParseIP(name) == nil &&
		strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") == ""
}

// addressLiteral is how a host without a name a relay could resolve
// introduces itself in EHLO (RFC 5321, 4.1.3 and 4.1.4): by its address.
func addressLiteral(ip net.IP) string {
	if ip.To4() != nil {
		return "[" + ip.String() + "]"
	}
	return "[IPv6:" + ip.String() + "]"
}

// isLoopback reports whether host is this machine: localhost, 127.0.0.0/8 or
// ::1. Only there may messages and credentials travel in clear by default.
func isLoopback(host string) bool {
	return strings.EqualFold(host, "localhost") || net.ParseIP(host).IsLoopback()
}

// Send renders n as an e-mail and delivers it to n.To, returning the
// Message-ID it gave the message, angle brackets included. It makes one
// attempt: dial, TLS for smtps, EHLO, STARTTLS for smtp (a relay that is not
// loopback must offer it unless the URL opted out), AUTH PLAIN or LOGIN when
// the config has a user, MAIL, RCPT, DATA and QUIT, all before the mailer's
// timeout or ctx's deadline, whichever is sooner; cancelling ctx aborts it. A
// recipient that is not a bare ASCII address fails before anything is
// dialled. Every failure is a *SendError, classified as classify describes.
func (s *smtpMailer) Send(ctx context.Context, n notice) (string, error) {
	if err := checkAddress(n.To); err != nil {
		return "", &SendError{Permanent: true, Reason: "mail: recipient " + err.Error()}
	}
	msg, id := s.compose(n)
	if err := s.deliver(ctx, n.To, msg); err != nil {
		return "", s.classify(ctx, err)
	}
	return id, nil
}

// compose renders n as a plain-text MIME message with CRLF line endings that
// carries the whole order, and returns it with its Message-ID.
func (s *smtpMailer) compose(n notice) (msg, id string) {
	id = fmt.Sprintf("<%s.%d@%s>", rand.Text(), n.OrderID, s.from[strings.LastIndexByte(s.from, '@')+1:])
	var b strings.Builder
	// Auto-Submitted tells well-behaved responders not to answer (RFC 3834).
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: Order #%d placed\r\nDate: %s\r\nMessage-ID: %s\r\n"+
		"Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"+
		"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
		s.from, n.To, n.OrderID, time.Now().Format(time.RFC1123Z), id)
	// Writing to a strings.Builder cannot fail. Text mode makes every line
	// break CRLF and keeps lines short enough for any relay.
	qp := quotedprintable.NewWriter(&b)
	io.WriteString(qp, mailText(n))
	qp.Close()
	return b.String(), id
}

// mailText is the body of the e-mail telling a customer of their order: the
// whole order, nothing shortened.
func mailText(n notice) string {
	return fmt.Sprintf("Hello %s,\n\nYour order #%d has been placed:\n\n"+
		"Item:   %s\nAmount: %s %s\nTime:   %s\n\nThank you!\n",
		n.Name, n.OrderID, n.Item, n.Currency, n.Amount, n.Time.Format("Monday, 2 January 2006, 15:04 MST"))
}

// errNoVerdict marks a failure after the whole message reached the relay:
// the relay may have queued it.
var errNoVerdict = errors.New("the message was sent but no reply to it arrived")

// deliver runs one SMTP exchange handing msg to the relay for to.
func (s *smtpMailer) deliver(ctx context.Context, to, msg string) error {
	deadline := time.Now().Add(s.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	dialer := net.Dialer{Deadline: deadline}
	conn, err := dialer.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return err
	}
	hello := s.hostname
	if hello == "" {
		hello = addressLiteral(conn.LocalAddr().(*net.TCPAddr).IP)
	}
	if s.cfg.implicitTLS {
		// The handshake runs on the first read, bounded like every other.
		conn = tls.Client(conn, s.tlsConfig)
	}
	defer conn.Close()
	// The deadline stops a relay that goes quiet; closing on cancellation
	// unblocks a read or write already waiting, which net/smtp cannot do.
	conn.SetDeadline(deadline)
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	c, err := smtp.NewClient(conn, s.cfg.host)
	if err != nil {
		return err
	}
	// EHLO explicitly: Extension would hide a relay refusing EHLO and HELO.
	if err := c.Hello(hello); err != nil {
		return err
	}
	if !s.cfg.implicitTLS {
		if ok, _ := c.Extension("STARTTLS"); ok {
			if err := c.StartTLS(s.tlsConfig); err != nil {
				return err
			}
		} else if !isLoopback(s.cfg.host) && (!s.cfg.starttlsOptional || s.cfg.username != "") {
			// Credentials never travel in clear but to this machine.
			return &SendError{Permanent: true, Reason: "smtp: " + s.cfg.host + " does not offer STARTTLS; to send to it in clear, " +
				"SMTP_URL needs ?" + smtpOptOut + " and no user"}
		}
	}
	if s.cfg.username != "" {
		if err := s.login(c); err != nil {
			return err
		}
	}
	if err := c.Mail(s.from); err != nil {
		return err
	}
	if err := c.Rcpt(to); err != nil {
		return err
	}
	// DATA by hand: c.Data's writer hides whether the final dot reached the
	// relay, which is what makes a later failure Uncertain.
	if err := c.Text.PrintfLine("DATA"); err != nil {
		return err
	}
	if _, _, err := c.Text.ReadResponse(354); err != nil {
		return err
	}
	w := c.Text.DotWriter()
	if _, err = io.WriteString(w, msg); err == nil {
		err = w.Close() // writes and flushes the final dot
	}
	if err != nil {
		return err
	}
	if _, _, err := c.Text.ReadResponse(250); err != nil {
		if _, verdict := errors.AsType[*textproto.Error](err); !verdict {
			return fmt.Errorf("%w: %w", errNoVerdict, err)
		}
		return err
	}
	// The relay has taken the message; a failed QUIT must not make the
	// caller retry and deliver it twice.
	c.Quit()
	return nil
}

// login authenticates with PLAIN when the relay offers it, else LOGIN.
func (s *smtpMailer) login(c *smtp.Client) error {
	_, offer := c.Extension("AUTH")
	switch mechs := strings.Fields(strings.ToUpper(offer)); {
	case slices.Contains(mechs, "PLAIN"):
		return c.Auth(&saslAuth{mech: "PLAIN", initial: []byte("\x00" + s.cfg.username + "\x00" + s.cfg.password)})
	case slices.Contains(mechs, "LOGIN"):
		return c.Auth(&saslAuth{mech: "LOGIN", answers: []string{s.cfg.username, s.cfg.password}})
	}
	return &SendError{Permanent: true, Reason: fmt.Sprintf("smtp: SMTP_URL has a user, but the relay offers AUTH %q: neither PLAIN nor LOGIN", offer)}
}

// saslAuth speaks AUTH PLAIN (RFC 4616), the credentials in its initial
// response, or AUTH LOGIN (draft-murchison-sasl-login), which answers the
// relay's two challenges (nominally "Username:" and "Password:") in turn, their
// text ignored as the draft says.
type saslAuth struct {
	mech    string
	initial []byte
	answers []string // to the relay's challenges, in turn
}

func (a *saslAuth) Start(*smtp.ServerInfo) (string, []byte, error) { return a.mech, a.initial, nil }

func (a *saslAuth) Next(_ []byte, more bool) ([]byte, error) {
	switch {
	case !more:
		return nil, nil
	case len(a.answers) == 0:
		return nil, errors.New("unexpected AUTH " + a.mech + " challenge")
	}
	answer := a.answers[0]
	a.answers = a.answers[1:]
	return []byte(answer), nil
}

// classify turns a failure of Send into a *SendError. A relay's reply decides
// first: 4xx is retryable, 5xx permanent, and 530, 534 and 535 are permanent
// authentication failures. Anything else (cancellation, network errors,
// timeouts, TLS failures, garbled replies) is retryable, and Uncertain when it
// struck after the whole message was written, while waiting for the relay's
// verdict. Reasons are the relay's or the network's words, with the password
// masked.
func (s *smtpMailer) classify(ctx context.Context, err error) *SendError {
	if se, ok := errors.AsType[*SendError](err); ok {
		return se
	}
	cause := ctx.Err()
	if d, ok := ctx.Deadline(); ok && cause == nil && !time.Now().Before(d) {
		// The connection shares ctx's deadline and may report it first.
		cause = context.DeadlineExceeded
	}
	e := &SendError{Uncertain: errors.Is(err, errNoVerdict), Reason: "smtp: " + err.Error(), Err: err}
	te, isReply := errors.AsType[*textproto.Error](err)
	switch {
	case isReply:
		// Flattened so that a multi-line or hostile reply stays one line.
		reply := fmt.Sprintf("%03d %s", te.Code, strings.Map(func(r rune) rune {
			if unicode.IsControl(r) {
				return ' '
			}
			return r
		}, te.Msg))
		e.Reason, e.Permanent = "smtp: "+reply, te.Code/100 == 5
		if te.Code == 530 || te.Code == 534 || te.Code == 535 {
			e.Reason = "smtp: authentication failed: " + reply
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
