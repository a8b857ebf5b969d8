package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// testCert is a self-signed certificate for 127.0.0.1, ::1 and localhost,
// and a pool that trusts it.
var testCert = sync.OnceValues(func() (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mock.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
})

// smtpServer is an SMTP server on 127.0.0.1 for tests. Set its options, then
// call start; it stops when the test ends.
type smtpServer struct {
	startTLS   bool   // offer STARTTLS on plain connections
	implicit   bool   // speak TLS from the first byte, as smtps
	user, pass string // if set, offer AUTH PLAIN and require it before MAIL
	silent     bool   // accept connections but never say anything
	// replies overrides the reply to a verb, to the greeting ("GREETING"),
	// to rejected credentials ("AUTHFAIL") or to the message after DATA's
	// final dot ("END").
	replies map[string]string
	rcpt    map[string]string // replies to RCPT by recipient address

	ln     net.Listener
	port   string
	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]bool
	dials  int
	msgs   []received
}

// received is one message the server accepted.
type received struct {
	from    string
	to      []string
	data    string // as sent, after dot-unstuffing
	stuffed int    // lines that arrived dot-stuffed
	tls     bool
	authed  bool
}

func (s *smtpServer) start(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.ln, s.conns = ln, map[net.Conn]bool{}
	_, s.port, _ = net.SplitHostPort(ln.Addr().String())
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		s.closed = true
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
}

func (s *smtpServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.dials++
		if s.closed {
			c.Close()
		}
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.serve(c)
		}()
	}
}

// url returns the server's URL with the given scheme and user info.
func (s *smtpServer) url(scheme string, user *url.Userinfo) string {
	return (&url.URL{Scheme: scheme, User: user, Host: "127.0.0.1:" + s.port}).String()
}

func (s *smtpServer) received() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.msgs...)
}

func (s *smtpServer) dialCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dials
}

func (s *smtpServer) serve(conn net.Conn) {
	if s.silent {
		io.Copy(io.Discard, conn)
		return
	}
	cert, _ := testCert()
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}}
	secure, authed := s.implicit, false
	if s.implicit {
		conn = tls.Server(conn, tlsConf)
	}
	w := bufio.NewWriter(conn)
	r := bufio.NewReader(conn)
	say := func(format string, args ...any) {
		fmt.Fprintf(w, format+"\r\n", args...)
		w.Flush()
	}
	reply := func(key, normal string) {
		if override, ok := s.replies[key]; ok {
			normal = override
		}
		say("%s", normal)
	}
	reply("GREETING", "220 mock.test ESMTP ready")
	var msg *received
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		verb = strings.ToUpper(verb)
		if override, ok := s.replies[verb]; ok {
			say("%s", override)
			continue
		}
		switch verb {
		case "EHLO":
			ext := []string{"mock.test", "8BITMIME"}
			if s.startTLS && !secure {
				ext = append(ext, "STARTTLS")
			}
			if s.user != "" {
				ext = append(ext, "AUTH PLAIN")
			}
			for i, e := range ext {
				sep := "-"
				if i == len(ext)-1 {
					sep = " "
				}
				say("250%s%s", sep, e)
			}
		case "HELO":
			say("250 mock.test")
		case "STARTTLS":
			if !s.startTLS || secure {
				say("503 5.5.1 TLS already active or not offered")
				continue
			}
			say("220 2.0.0 ready to start TLS")
			tc := tls.Server(conn, tlsConf)
			if tc.Handshake() != nil {
				return
			}
			// RFC 3207: the client starts over, forgetting all it was told.
			conn, r, w = tc, bufio.NewReader(tc), bufio.NewWriter(tc)
			secure, authed, msg = true, false, nil
		case "AUTH":
			mech, resp, _ := strings.Cut(arg, " ")
			if s.user == "" || mech != "PLAIN" {
				say("504 5.5.4 mechanism not supported")
				continue
			}
			if resp == "" {
				say("334 ")
				if resp, err = r.ReadString('\n'); err != nil {
					return
				}
			}
			creds, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(resp))
			if parts := strings.Split(string(creds), "\x00"); len(parts) == 3 &&
				parts[1] == s.user && parts[2] == s.pass {
				authed = true
				say("235 2.7.0 authentication successful")
				continue
			}
			reply("AUTHFAIL", "535 5.7.8 authentication credentials invalid")
		case "MAIL":
			if s.user != "" && !authed {
				say("530 5.7.0 authentication required")
				continue
			}
			msg = &received{from: angleAddr(arg), tls: secure, authed: authed}
			say("250 2.1.0 sender ok")
		case "RCPT":
			to := angleAddr(arg)
			switch override, ok := s.rcpt[to]; {
			case msg == nil:
				say("503 5.5.1 need MAIL first")
			case ok:
				say("%s", override)
			default:
				msg.to = append(msg.to, to)
				say("250 2.1.5 recipient ok")
			}
		case "DATA":
			if msg == nil || len(msg.to) == 0 {
				say("503 5.5.1 need RCPT first")
				continue
			}
			say("354 end data with <CR><LF>.<CR><LF>")
			if msg.data, msg.stuffed, err = readData(r); err != nil {
				return
			}
			if override, ok := s.replies["END"]; ok {
				say("%s", override)
				continue
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, *msg)
			s.mu.Unlock()
			msg = nil
			say("250 2.0.0 queued")
		case "RSET":
			msg = nil
			say("250 2.0.0 reset")
		case "NOOP":
			say("250 2.0.0 ok")
		case "QUIT":
			say("221 2.0.0 bye")
			return
		default:
			say("502 5.5.2 command not recognized")
		}
	}
}

// angleAddr returns the address between angle brackets in a MAIL or RCPT
// argument such as "FROM:<a@b> BODY=8BITMIME".
func angleAddr(arg string) string {
	_, rest, _ := strings.Cut(arg, "<")
	addr, _, _ := strings.Cut(rest, ">")
	return addr
}

// readData reads DATA up to the lone dot, undoing dot-stuffing but keeping
// line endings as they were sent, and counts the stuffed lines.
func readData(r *bufio.Reader) (data string, stuffed int, err error) {
	var b strings.Builder
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", 0, err
		}
		if line == ".\r\n" {
			return b.String(), stuffed, nil
		}
		if strings.HasPrefix(line, ".") {
			line, stuffed = line[1:], stuffed+1
		}
		b.WriteString(line)
	}
}

const testFrom = "orders@shop.example"

var testNow = time.Date(2025, 3, 14, 15, 9, 26, 0, time.FixedZone("", 3600))

// newTestMailer returns a mailer for rawURL that trusts the test certificate
// and dates messages testNow.
func newTestMailer(t testing.TB, rawURL string, timeout time.Duration) *smtpMailer {
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
	m.now = func() time.Time { return testNow }
	return m
}

// messageID extracts the Message-ID header from a raw message.
func messageID(t *testing.T, data string) string {
	t.Helper()
	msg, err := mail.ReadMessage(strings.NewReader(data))
	if err != nil {
		t.Fatalf("recorded message does not parse: %v", err)
	}
	return msg.Header.Get("Message-ID")
}

func TestParseSMTPURL(t *testing.T) {
	tests := []struct {
		raw     string
		want    smtpConfig
		wantErr string
	}{
		{raw: "smtp://user:pass@mail.example.com:2525",
			want: smtpConfig{host: "mail.example.com", port: "2525", username: "user", password: "pass"}},
		{raw: "smtp://mail.example.com", want: smtpConfig{host: "mail.example.com", port: "587"}},
		{raw: "SMTP://mail.example.com/", want: smtpConfig{host: "mail.example.com", port: "587"}},
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
		{raw: "smtp://user:s3cret@mail.example.com/inbox", wantErr: "path, query or fragment"},
		{raw: "smtp://user:s3cret@mail.example.com?tls=1", wantErr: "path, query or fragment"},
		{raw: "smtp://user:s3cret@mail.example.com?", wantErr: "path, query or fragment"},
		{raw: "smtp://user:s3cret@mail.example.com#x", wantErr: "path, query or fragment"},
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
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("got error %q, want none", err)
				}
				if got != tc.want {
					t.Errorf("got %+v, want %+v", got, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %+v, want error containing %q", got, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got error %q, want it to contain %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("got error %q, want no password in it", err)
			}
		})
	}
}

func TestNewSMTPMailer(t *testing.T) {
	cfg := smtpConfig{host: "mail.example.com", port: "587"}
	tests := []struct {
		name    string
		cfg     smtpConfig
		from    string
		timeout time.Duration
		wantErr string
	}{
		{name: "valid", cfg: cfg, from: testFrom, timeout: time.Second},
		{name: "display name", cfg: cfg, from: "Shop <orders@shop.example>", timeout: time.Second, wantErr: "not a bare"},
		{name: "angle brackets", cfg: cfg, from: "<orders@shop.example>", timeout: time.Second, wantErr: "not a bare"},
		{name: "not an address", cfg: cfg, from: "orders", timeout: time.Second, wantErr: "not a bare"},
		{name: "line break", cfg: cfg, from: "orders@shop.example\r\nBcc: x@evil.example", timeout: time.Second, wantErr: "line break"},
		{name: "zero timeout", cfg: cfg, from: testFrom, wantErr: "timeout must be positive"},
		{name: "no host", from: testFrom, timeout: time.Second, wantErr: "no host"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := newSMTPMailer(tc.cfg, tc.from, tc.timeout)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %q, want none", err)
			}
			if got := m.tlsConfig.ServerName; got != tc.cfg.host {
				t.Errorf("got TLS ServerName %q, want %q", got, tc.cfg.host)
			}
			if m.now == nil {
				t.Error("got nil clock, want time.Now")
			}
		})
	}
}

func TestSMTPMailerSendDelivers(t *testing.T) {
	creds := url.UserPassword("shop", "p@ss:wörd")
	tests := []struct {
		name     string
		srv      *smtpServer
		scheme   string
		user     *url.Userinfo
		wantTLS  bool
		wantAuth bool
	}{
		{name: "smtp with STARTTLS and auth", srv: &smtpServer{startTLS: true, user: "shop", pass: "p@ss:wörd"},
			scheme: "smtp", user: creds, wantTLS: true, wantAuth: true},
		{name: "smtp with STARTTLS without auth", srv: &smtpServer{startTLS: true},
			scheme: "smtp", wantTLS: true},
		{name: "smtps with auth", srv: &smtpServer{implicit: true, user: "shop", pass: "p@ss:wörd"},
			scheme: "smtps", user: creds, wantTLS: true, wantAuth: true},
		{name: "plain to 127.0.0.1 without auth", srv: &smtpServer{}, scheme: "smtp"},
		{name: "plain to 127.0.0.1 with auth", srv: &smtpServer{user: "shop", pass: "p@ss:wörd"},
			scheme: "smtp", user: creds, wantAuth: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.srv.start(t)
			m := newTestMailer(t, tc.srv.url(tc.scheme, tc.user), 5*time.Second)
			id, err := m.Send(t.Context(), Message{OrderID: 7, To: "ann@example.org", Subject: "Order 7", Body: "Thanks!"})
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			got := tc.srv.received()
			if len(got) != 1 {
				t.Fatalf("got %d messages, want 1", len(got))
			}
			if got[0].from != testFrom {
				t.Errorf("got MAIL FROM %q, want %q", got[0].from, testFrom)
			}
			if want := []string{"ann@example.org"}; !reflect.DeepEqual(got[0].to, want) {
				t.Errorf("got RCPT TO %q, want %q", got[0].to, want)
			}
			if got[0].tls != tc.wantTLS {
				t.Errorf("got TLS %v, want %v", got[0].tls, tc.wantTLS)
			}
			if got[0].authed != tc.wantAuth {
				t.Errorf("got authenticated %v, want %v", got[0].authed, tc.wantAuth)
			}
			if hdr := messageID(t, got[0].data); id != hdr {
				t.Errorf("got provider id %q, want the Message-ID header %q", id, hdr)
			}
		})
	}
}

func TestSMTPMailerMessageFormat(t *testing.T) {
	body := "Hello Zoë,\n\nyour order is confirmed.\n.hidden line starting with a dot\n" +
		"..and one with two\n.\nTotal: 12,50 € — merci!\ttab\ntrailing spaces   \n" +
		strings.Repeat("a long line ", 20) + "\nlast line without newline"
	tests := []struct {
		name       string
		subject    string
		wantRawSub string // prefix of the Subject header as sent
	}{
		{name: "ASCII subject", subject: "Order 42 confirmed", wantRawSub: "Order 42 confirmed"},
		{name: "non-ASCII subject", subject: "Commande n°42 confirmée ✓", wantRawSub: "=?utf-8?q?"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := &smtpServer{startTLS: true}
			srv.start(t)
			m := newTestMailer(t, srv.url("smtp", nil), 5*time.Second)
			id, err := m.Send(t.Context(), Message{OrderID: 42, To: "zoe@example.org", Subject: tc.subject, Body: body})
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			recv := srv.received()
			if len(recv) != 1 {
				t.Fatalf("got %d messages, want 1", len(recv))
			}
			data := recv[0].data
			if n, crlf := strings.Count(data, "\n"), strings.Count(data, "\r\n"); n != crlf {
				t.Errorf("got %d LF of which %d in CRLF, want every line ending CRLF", n, crlf)
			}
			if recv[0].stuffed == 0 {
				t.Error("got no dot-stuffed line on the wire, want the leading dots stuffed")
			}
			msg, err := mail.ReadMessage(strings.NewReader(data))
			if err != nil {
				t.Fatalf("got unparsable message: %v", err)
			}
			h := msg.Header
			for name, want := range map[string]string{
				"From":                      testFrom,
				"To":                        "zoe@example.org",
				"Mime-Version":              "1.0",
				"Content-Type":              "text/plain; charset=utf-8",
				"Content-Transfer-Encoding": "quoted-printable",
				"Date":                      "Fri, 14 Mar 2025 15:09:26 +0100",
			} {
				if got := h.Get(name); got != want {
					t.Errorf("got %s %q, want %q", name, got, want)
				}
			}
			if date, err := h.Date(); err != nil || !date.Equal(testNow) {
				t.Errorf("got Date %v (error %v), want %v", date, err, testNow)
			}
			if got := h.Get("Subject"); !strings.HasPrefix(got, tc.wantRawSub) {
				t.Errorf("got raw Subject %q, want prefix %q", got, tc.wantRawSub)
			}
			if got, err := new(mime.WordDecoder).DecodeHeader(h.Get("Subject")); err != nil || got != tc.subject {
				t.Errorf("got decoded Subject %q (error %v), want %q", got, err, tc.subject)
			}
			wantID := regexp.MustCompile(`^<[0-9a-f]{32}\.42@shop\.example>$`)
			if got := h.Get("Message-Id"); !wantID.MatchString(got) || got != id {
				t.Errorf("got Message-ID %q and provider id %q, want equal and matching %s", got, id, wantID)
			}
			decoded, err := io.ReadAll(quotedprintable.NewReader(msg.Body))
			if err != nil {
				t.Fatalf("got undecodable body: %v", err)
			}
			// Line breaks travel as CRLF; the final CRLF is DATA's terminator.
			want := strings.ReplaceAll(body, "\n", "\r\n") + "\r\n"
			if string(decoded) != want {
				t.Errorf("got body %q, want %q", decoded, want)
			}
		})
	}
}

func TestSMTPMailerMessageIDsAreUnique(t *testing.T) {
	m, err := newSMTPMailer(smtpConfig{host: "h", port: "25"}, testFrom, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, a, _ := m.compose(Message{OrderID: 1, To: "a@example.org"})
	_, b, _ := m.compose(Message{OrderID: 1, To: "a@example.org"})
	if a == b {
		t.Errorf("got the same Message-ID %q twice, want distinct ones", a)
	}
}

func TestSMTPMailerSendFailures(t *testing.T) {
	const pass = "hunter2"
	creds := url.UserPassword("shop", pass)
	wrong := url.UserPassword("shop", "hunter2-wrong")
	tests := []struct {
		name          string
		srv           *smtpServer
		scheme        string
		user          *url.Userinfo
		host          string // dialled instead of 127.0.0.1
		untrusted     bool   // the mailer does not trust the server's certificate
		to            string
		wantPermanent bool
		wantReason    string // substring
	}{
		{name: "bad credentials", srv: &smtpServer{startTLS: true, user: "shop", pass: pass},
			scheme: "smtp", user: wrong, wantPermanent: true,
			wantReason: "smtp: authentication failed: 535 5.7.8 authentication credentials invalid"},
		{name: "rejection quoting the password", srv: &smtpServer{implicit: true, user: "shop", pass: "other",
			replies: map[string]string{"AUTHFAIL": "535 5.7.8 hunter2 is not the password of shop"}},
			scheme: "smtps", user: creds, wantPermanent: true, wantReason: "535 5.7.8 xxxxx is not the password"},
		{name: "sender needs authentication", srv: &smtpServer{startTLS: true, user: "shop", pass: pass},
			scheme: "smtp", wantPermanent: true, wantReason: "smtp: authentication failed: 530 5.7.0"},
		{name: "credentials without TLS to a remote host", srv: &smtpServer{user: "shop", pass: pass},
			scheme: "smtp", user: creds, host: "::ffff:127.0.0.1", wantPermanent: true, wantReason: "unencrypted"},
		{name: "recipient unknown", srv: &smtpServer{rcpt: map[string]string{"gone@example.org": "550 5.1.1 mailbox unavailable"}},
			scheme: "smtp", to: "gone@example.org", wantPermanent: true, wantReason: "smtp: 550 5.1.1 mailbox unavailable"},
		{name: "multi-line reply", srv: &smtpServer{rcpt: map[string]string{"x@example.org": "550-5.1.1 no such user\r\n550 5.1.1 see \x1b[31mhttps://help.example\x1b[0m"}},
			scheme: "smtp", to: "x@example.org", wantPermanent: true,
			wantReason: "smtp: 550 5.1.1 no such user 5.1.1 see  [31mhttps://help.example [0m"},
		{name: "recipient greylisted", srv: &smtpServer{rcpt: map[string]string{"grey@example.org": "451 4.7.1 try again later"}},
			scheme: "smtp", to: "grey@example.org", wantReason: "smtp: 451 4.7.1 try again later"},
		{name: "greeting refuses service", srv: &smtpServer{replies: map[string]string{"GREETING": "554 5.3.2 no service"}},
			scheme: "smtp", wantPermanent: true, wantReason: "smtp: 554 5.3.2 no service"},
		{name: "greeting busy", srv: &smtpServer{replies: map[string]string{"GREETING": "421 4.3.2 too busy"}},
			scheme: "smtp", wantReason: "smtp: 421 4.3.2 too busy"},
		{name: "EHLO and HELO refused", srv: &smtpServer{replies: map[string]string{"EHLO": "502 5.5.2 no", "HELO": "550 5.7.1 go away"}},
			scheme: "smtp", wantPermanent: true, wantReason: "smtp: 550 5.7.1 go away"},
		{name: "STARTTLS unavailable", srv: &smtpServer{startTLS: true, replies: map[string]string{"STARTTLS": "454 4.7.0 TLS not available"}},
			scheme: "smtp", wantReason: "smtp: 454 4.7.0 TLS not available"},
		{name: "untrusted certificate on STARTTLS", srv: &smtpServer{startTLS: true},
			scheme: "smtp", untrusted: true, wantReason: "certificate"},
		{name: "untrusted certificate on smtps", srv: &smtpServer{implicit: true},
			scheme: "smtps", untrusted: true, wantReason: "certificate"},
		{name: "smtps to a plain server", srv: &smtpServer{}, scheme: "smtps", wantReason: "smtp: "},
		{name: "DATA refused", srv: &smtpServer{replies: map[string]string{"DATA": "554 5.7.1 no data"}},
			scheme: "smtp", wantPermanent: true, wantReason: "smtp: 554 5.7.1 no data"},
		{name: "message rejected", srv: &smtpServer{replies: map[string]string{"END": "552 5.3.4 message too big"}},
			scheme: "smtp", wantPermanent: true, wantReason: "smtp: 552 5.3.4 message too big"},
		{name: "message deferred", srv: &smtpServer{replies: map[string]string{"END": "452 4.3.1 insufficient storage"}},
			scheme: "smtp", wantReason: "smtp: 452 4.3.1 insufficient storage"},
		{name: "garbled reply", srv: &smtpServer{replies: map[string]string{"MAIL": "hello?"}},
			scheme: "smtp", wantReason: "short response"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.srv.start(t)
			rawURL := tc.srv.url(tc.scheme, tc.user)
			if tc.host != "" {
				rawURL = (&url.URL{Scheme: tc.scheme, User: tc.user, Host: net.JoinHostPort(tc.host, tc.srv.port)}).String()
			}
			m := newTestMailer(t, rawURL, 5*time.Second)
			if tc.untrusted {
				m.tlsConfig.RootCAs = nil
			}
			if tc.to == "" {
				tc.to = "ann@example.org"
			}
			id, err := m.Send(t.Context(), Message{OrderID: 9, To: tc.to, Subject: "s", Body: "b"})
			se := checkSendError(t, id, err, tc.wantPermanent, tc.wantReason)
			if strings.Contains(se.Reason, pass) {
				t.Errorf("got reason %q, want no password in it", se.Reason)
			}
			if se.Err == nil {
				t.Error("got no underlying error, want the cause kept")
			}
			if n := len(tc.srv.received()); n != 0 {
				t.Errorf("got %d messages accepted, want 0", n)
			}
		})
	}
}

// checkSendError fails t unless Send returned no id and a *SendError with the
// given permanence whose reason contains wantReason.
func checkSendError(t *testing.T, id string, err error, wantPermanent bool, wantReason string) *SendError {
	t.Helper()
	if id != "" {
		t.Errorf("got provider id %q, want none", id)
	}
	var se *SendError
	if !errors.As(err, &se) {
		t.Fatalf("got error %v (%T), want a *SendError", err, err)
	}
	if err.Error() != se.Reason {
		t.Errorf("got Error() %q, want the reason %q", err.Error(), se.Reason)
	}
	if se.Permanent != wantPermanent {
		t.Errorf("got Permanent %v (reason %q), want %v", se.Permanent, se.Reason, wantPermanent)
	}
	if !strings.Contains(se.Reason, wantReason) {
		t.Errorf("got reason %q, want it to contain %q", se.Reason, wantReason)
	}
	return se
}

func TestSMTPMailerSendRejectsInjection(t *testing.T) {
	tests := []struct {
		name       string
		msg        Message
		wantReason string
	}{
		{name: "CRLF in To", msg: Message{To: "ann@example.org\r\nBcc: all@example.org", Subject: "s"}, wantReason: "line break"},
		{name: "LF in To", msg: Message{To: "ann@example.org\nBcc: all@example.org", Subject: "s"}, wantReason: "line break"},
		{name: "CR in Subject", msg: Message{To: "ann@example.org", Subject: "hi\rBcc: all@example.org"}, wantReason: "subject contains a line break"},
		{name: "LF in Subject", msg: Message{To: "ann@example.org", Subject: "hi\nBcc: all@example.org"}, wantReason: "subject contains a line break"},
		{name: "display name in To", msg: Message{To: "Ann <ann@example.org>"}, wantReason: "not a bare e-mail address"},
		{name: "phone number in To", msg: Message{To: "+15551234567"}, wantReason: "not a bare e-mail address"},
		{name: "empty To", msg: Message{}, wantReason: "not a bare e-mail address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := &smtpServer{}
			srv.start(t)
			m := newTestMailer(t, srv.url("smtp", nil), 5*time.Second)
			id, err := m.Send(t.Context(), tc.msg)
			se := checkSendError(t, id, err, true, tc.wantReason)
			if !strings.HasPrefix(se.Reason, "mail: ") {
				t.Errorf("got reason %q, want it to start with %q", se.Reason, "mail: ")
			}
			if n := srv.dialCount(); n != 0 {
				t.Errorf("got %d connections, want 0", n)
			}
		})
	}
}

func TestSMTPMailerSendConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	m := newTestMailer(t, "smtp://"+addr, 5*time.Second)
	id, err := m.Send(t.Context(), Message{To: "ann@example.org"})
	checkSendError(t, id, err, false, "refused")
}

func TestSMTPMailerSendSilentServerTimesOut(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, scheme := range []string{"smtp", "smtps"} {
		t.Run(scheme, func(t *testing.T) {
			srv := &smtpServer{silent: true}
			srv.start(t)
			m := newTestMailer(t, srv.url(scheme, nil), timeout)
			start := time.Now()
			id, err := m.Send(t.Context(), Message{To: "ann@example.org"})
			elapsed := time.Since(start)
			checkSendError(t, id, err, false, "timeout")
			if elapsed < timeout || elapsed > timeout+2*time.Second {
				t.Errorf("got Send returning after %v, want just after %v", elapsed, timeout)
			}
		})
	}
}

func TestSMTPMailerSendContext(t *testing.T) {
	tests := []struct {
		name    string
		scheme  string
		ctx     func(context.Context) (context.Context, context.CancelFunc)
		wantErr error
	}{
		{name: "cancelled while waiting for the greeting", scheme: "smtp", wantErr: context.Canceled,
			ctx: func(parent context.Context) (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(parent)
				time.AfterFunc(100*time.Millisecond, cancel)
				return ctx, cancel
			}},
		{name: "cancelled during the TLS handshake", scheme: "smtps", wantErr: context.Canceled,
			ctx: func(parent context.Context) (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(parent)
				time.AfterFunc(100*time.Millisecond, cancel)
				return ctx, cancel
			}},
		{name: "cancelled before dialling", scheme: "smtp", wantErr: context.Canceled,
			ctx: func(parent context.Context) (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(parent)
				cancel()
				return ctx, cancel
			}},
		{name: "deadline sooner than the timeout", scheme: "smtp", wantErr: context.DeadlineExceeded,
			ctx: func(parent context.Context) (context.Context, context.CancelFunc) {
				return context.WithTimeout(parent, 100*time.Millisecond)
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := &smtpServer{silent: true}
			srv.start(t)
			m := newTestMailer(t, srv.url(tc.scheme, nil), time.Minute)
			ctx, cancel := tc.ctx(t.Context())
			defer cancel()
			start := time.Now()
			id, err := m.Send(ctx, Message{To: "ann@example.org"})
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Errorf("got Send returning after %v, want it to stop with ctx", elapsed)
			}
			checkSendError(t, id, err, false, "smtp: delivery aborted: ")
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
	m, err := newSMTPMailer(smtpConfig{host: "h", port: "25"}, testFrom, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	got := m.classify(expiredCtx{context.Background()}, timeout)
	checkSendError(t, "", got, false, "smtp: delivery aborted: context deadline exceeded")
	if !errors.Is(got, context.DeadlineExceeded) || !errors.Is(got, os.ErrDeadlineExceeded) {
		t.Errorf("got error %v, want it to wrap both ctx's deadline and the connection's", got)
	}
}

func TestSMTPMailerSendConcurrently(t *testing.T) {
	srv := &smtpServer{startTLS: true, user: "shop", pass: "pw"}
	srv.start(t)
	m := newTestMailer(t, srv.url("smtp", url.UserPassword("shop", "pw")), 5*time.Second)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			_, err := m.Send(t.Context(), Message{OrderID: int64(i), To: fmt.Sprintf("c%d@example.org", i), Body: "hi"})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("got error %v, want none", err)
		}
	}
	if got := len(srv.received()); got != n {
		t.Errorf("got %d messages, want %d", got, n)
	}
}

func BenchmarkSMTPMailerSend(b *testing.B) {
	srv := &smtpServer{startTLS: true, user: "shop", pass: "pw"}
	srv.start(b)
	m := newTestMailer(b, srv.url("smtp", url.UserPassword("shop", "pw")), 5*time.Second)
	msg := Message{OrderID: 1, To: "ann@example.org", Subject: "Commande confirmée", Body: strings.Repeat("Merci pour votre commande.\n", 40)}
	for b.Loop() {
		if _, err := m.Send(b.Context(), msg); err != nil {
			b.Fatal(err)
		}
	}
}
