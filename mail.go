package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
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
)

// smtpConfig says where an SMTP relay is and how to log in to it.
type smtpConfig struct {
	host               string // also the name the server's certificate must carry
	port               string
	implicitTLS        bool   // smtps: TLS from the first byte rather than STARTTLS
	starttlsOptional   bool   // starttls=optional: a relay without STARTTLS gets the message in clear
	username, password string // no authentication when username is empty
}

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
	defaultPort, known := map[string]string{"smtp": "587", "smtps": "465"}[u.Scheme]
	// User and password are "" when the URL has no user info.
	cfg := smtpConfig{host: u.Hostname(), port: cmp.Or(u.Port(), defaultPort), implicitTLS: u.Scheme == "smtps",
		starttlsOptional: u.Scheme == "smtp" && u.RawQuery == "starttls=optional", username: u.User.Username()}
	cfg.password, _ = u.User.Password()
	port, err := strconv.Atoi(cfg.port)
	switch {
	case !known:
		return smtpConfig{}, fmt.Errorf("mail: SMTP URL scheme %q is not smtp or smtps", u.Scheme)
	case cfg.host == "": // an opaque URL such as smtp:user:pass@host has none either
		return smtpConfig{}, errors.New("mail: SMTP URL has no host")
	case (u.Path != "" && u.Path != "/") || u.Fragment != "" || u.ForceQuery || (u.RawQuery != "" && !cfg.starttlsOptional):
		return smtpConfig{}, errors.New("mail: SMTP URL must have no path or fragment, and no query but ?starttls=optional on smtp://")
	case err != nil || port < 1 || port > 65535:
		return smtpConfig{}, fmt.Errorf("mail: SMTP URL port %q is out of range", cfg.port)
	case cfg.username == "" && cfg.password != "":
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
	return &smtpMailer{cfg: cfg, addr: net.JoinHostPort(cfg.host, cfg.port), from: from, timeout: timeout, hostname: hostname,
		tlsConfig: &tls.Config{ServerName: cfg.host, MinVersion: tls.VersionTLS12}}, nil
}

// checkAddress returns an error unless addr is a bare address in printable
// ASCII, without display name or angle brackets: nothing that could break out
// of a header line, and nothing that needs the SMTPUTF8 extension.
func checkAddress(addr string) error {
	if strings.ContainsFunc(addr, func(r rune) bool { return r < ' ' || r > '~' }) {
		return fmt.Errorf("%q is not a plain ASCII address", addr)
	}
	if a, err := mail.ParseAddress(addr); err != nil || a.Address != addr {
		return fmt.Errorf("%q is not a bare e-mail address", addr)
	}
	return nil
}

// isDomainName reports whether name looks like a fully qualified host name
// (RFC 5321, 2.3.5): letters, digits, hyphens and at least one dot, and not
// an IP address. Neither "localhost" nor a container's bare id passes.
func isDomainName(name string) bool {
	return strings.Contains(name, ".") && net.ParseIP(name) == nil &&
		strings.Trim(name, alphanumeric+"-.") == ""
}

// addressLiteral is how a host without a name a relay could resolve
// introduces itself in EHLO (RFC 5321, 4.1.3 and 4.1.4): by its address.
func addressLiteral(ip net.IP) string {
	if ip.To4() != nil {
		return "[" + ip.String() + "]"
	}
	return "[IPv6:" + ip.String() + "]"
}

// Send renders n as a plain-text MIME message with CRLF line endings that
// carries the whole order, delivers it to n.To, and returns the Message-ID it
// gave the message, angle brackets included. It makes one attempt: dial, TLS
// for smtps, EHLO, STARTTLS for smtp (a relay that is not loopback must offer
// it unless the URL opted out), AUTH PLAIN or LOGIN when the config has a
// user, MAIL, RCPT, DATA and QUIT, all before the mailer's timeout or ctx's
// deadline, whichever is sooner; cancelling ctx aborts it. A recipient that
// is not a bare ASCII address fails before anything is dialled. Every failure
// is a *SendError, classified as classify describes.
func (s *smtpMailer) Send(ctx context.Context, n notice) (string, error) {
	if err := checkAddress(n.To); err != nil {
		return "", &SendError{Permanent: true, Reason: "mail: recipient " + err.Error()}
	}
	id := fmt.Sprintf("<%s.%d@%s>", rand.Text(), n.OrderID, s.from[strings.LastIndexByte(s.from, '@')+1:])
	if err := s.deliver(ctx, n, id); err != nil {
		return "", s.classify(ctx, err)
	}
	return id, nil
}

// mailText is the body of the e-mail telling a customer of their order: the
// whole order, nothing shortened.
func mailText(n notice) string {
	return fmt.Sprintf("Hello %s,\n\nYour order #%d has been placed:\n\nItem:   %s\nAmount: %s %s\nTime:   %s\n\nThank you!\n",
		n.Name, n.OrderID, n.Item, n.Currency, n.Amount, n.Time.Format("Monday, 2 January 2006, 15:04 MST"))
}

// errNoVerdict marks a failure after the whole message reached the relay:
// the relay may have queued it.
var errNoVerdict = errors.New("the message was sent but no reply to it arrived")

// deliver runs one SMTP exchange that hands the relay n, for n.To, as a
// plain-text MIME message with Message-ID id, written straight onto the
// connection.
func (s *smtpMailer) deliver(ctx context.Context, n notice, id string) error {
	deadline := time.Now().Add(s.timeout)
	conn, err := (&net.Dialer{Deadline: deadline}).DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return err
	}
	if s.cfg.implicitTLS {
		// The handshake runs on the first read, bounded like every other.
		conn = tls.Client(conn, s.tlsConfig)
	}
	defer conn.Close()
	// The deadline stops a relay that goes quiet. ctx, which net/smtp cannot
	// take, ends the exchange by closing the connection when it is cancelled
	// or its deadline passes: that unblocks a read or write already waiting.
	conn.SetDeadline(deadline)
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	c, err := smtp.NewClient(conn, s.cfg.host)
	if err != nil {
		return err
	}
	// EHLO explicitly: Extension would hide a relay refusing EHLO and HELO.
	// EHLO, STARTTLS and AUTH hand err on: each runs only while it is nil.
	err = c.Hello(cmp.Or(s.hostname, addressLiteral(conn.LocalAddr().(*net.TCPAddr).IP)))
	switch starttls, _ := c.Extension("STARTTLS"); {
	case err != nil || s.cfg.implicitTLS:
	case starttls:
		err = c.StartTLS(s.tlsConfig)
	case !slices.Contains([]string{"localhost", "127.0.0.1", "::1"}, s.cfg.host) && (!s.cfg.starttlsOptional || s.cfg.username != ""):
		// Only this machine, named as smtp.PlainAuth knows it, gets messages
		// in clear by default, and credentials in clear at all.
		return &SendError{Permanent: true, Reason: "smtp: " + s.cfg.host + " does not offer STARTTLS; to send to it in clear, " +
			"SMTP_URL needs ?starttls=optional and no user"}
	}
	// PLAIN when the relay offers it, else LOGIN; the connection is TLS or
	// loopback by now, as smtp.PlainAuth requires.
	_, offer := c.Extension("AUTH")
	switch mechs := strings.Fields(strings.ToUpper(offer)); {
	case err != nil || s.cfg.username == "":
	case slices.Contains(mechs, "PLAIN"):
		err = c.Auth(smtp.PlainAuth("", s.cfg.username, s.cfg.password, s.cfg.host))
	case slices.Contains(mechs, "LOGIN"):
		err = c.Auth(&loginAuth{s.cfg.username, s.cfg.password})
	default:
		return &SendError{Permanent: true, Reason: fmt.Sprintf("smtp: SMTP_URL has a user, but the relay offers AUTH %q: neither PLAIN nor LOGIN", offer)}
	}
	if err != nil {
		return err
	}
	if err := c.Mail(s.from); err != nil {
		return err
	}
	if err := c.Rcpt(n.To); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	// Auto-Submitted tells well-behaved responders not to answer (RFC 3834).
	fmt.Fprintf(w, "From: %s\r\nTo: %s\r\nSubject: Order #%d placed\r\nDate: %s\r\nMessage-ID: %s\r\n"+
		"Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"+
		"Content-Transfer-Encoding: quoted-printable\r\n\r\n", s.from, n.To, n.OrderID, time.Now().Format(time.RFC1123Z), id)
	// Text mode makes every line break CRLF and keeps lines short enough for
	// any relay.
	qp := quotedprintable.NewWriter(w)
	fmt.Fprint(qp, mailText(n))
	qp.Close()
	// Close writes the final dot, then reads the relay's verdict. A write that
	// failed, there or above, is kept by the connection's bufio.Writer, whose
	// first error sticks: a flush that succeeds after a failed Close means the
	// whole message reached the relay, and only the verdict is missing.
	if err := w.Close(); err != nil {
		if _, verdict := errors.AsType[*textproto.Error](err); !verdict && c.Text.W.Flush() == nil {
			return fmt.Errorf("%w: %w", errNoVerdict, err)
		}
		return err
	}
	// The relay has taken the message; a failed QUIT must not make the
	// caller retry and deliver it twice.
	c.Quit()
	return nil
}

// loginAuth speaks AUTH LOGIN (draft-murchison-sasl-login): it answers the
// relay's two challenges (nominally "Username:" and "Password:") in turn,
// their text ignored as the draft says.
type loginAuth []string

func (a *loginAuth) Start(*smtp.ServerInfo) (string, []byte, error) { return "LOGIN", nil, nil }

func (a *loginAuth) Next(_ []byte, more bool) (answer []byte, err error) {
	switch {
	case !more:
	case len(*a) == 0:
		err = errors.New("unexpected AUTH LOGIN challenge")
	default:
		answer, *a = []byte((*a)[0]), (*a)[1:]
	}
	return answer, err
}

// classify turns a failure of Send into a *SendError. A relay's reply decides
// first: 4xx is retryable, 5xx permanent, and 530, 534 and 535 are permanent
// authentication failures. Anything else (cancellation, network errors,
// timeouts, TLS failures, garbled replies) is retryable, and Uncertain when it
// struck after the whole message was written, while waiting for the relay's
// verdict. Reasons are the relay's or the network's words, made storable
// (so that a multi-line or hostile reply stays one bounded line) with the
// password redacted.
func (s *smtpMailer) classify(ctx context.Context, err error) *SendError {
	if se, ok := errors.AsType[*SendError](err); ok {
		return se
	}
	cause := ctx.Err()
	if d, ok := ctx.Deadline(); ok && cause == nil && !time.Now().Before(d) {
		// The dial may report ctx's deadline as its own timeout before ctx
		// itself has noticed.
		cause = context.DeadlineExceeded
	}
	te, isReply := errors.AsType[*textproto.Error](err)
	e := &SendError{Permanent: isReply && te.Code/100 == 5, Uncertain: errors.Is(err, errNoVerdict), Reason: "smtp: " + err.Error(), Err: err}
	// A reply is given as the relay sent it: textproto.Error's own text quotes it.
	switch {
	case isReply && (te.Code == 530 || te.Code == 534 || te.Code == 535):
		e.Reason = fmt.Sprintf("smtp: authentication failed: %03d %s", te.Code, te.Msg)
	case isReply:
		e.Reason = fmt.Sprintf("smtp: %03d %s", te.Code, te.Msg)
	case cause != nil:
		// What broke is only the symptom of the abort: a closed connection.
		e.Reason, e.Err = "smtp: delivery aborted: "+cause.Error(), errors.Join(cause, err)
	}
	e.Reason = storable(e.Reason, s.cfg.password)
	return e
}
