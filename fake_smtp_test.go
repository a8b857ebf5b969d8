package main

import (
	"bufio"
	"cmp"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"io"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// As a reply in smtpFake.replies, fakeSilent makes the server go quiet and
// fakeDrop makes it hang up.
const (
	fakeSilent = "(silent)"
	fakeDrop   = "(drop)"
)

// testCert is the fake's TLS config, with a self-signed certificate for
// relay.test, and a pool that trusts it. relay.test is not loopback, so a
// mailer must reach it over TLS; tests dial the fake in its place.
var testCert = sync.OnceValues(func() (*tls.Config, *x509.CertPool) {
	pub, key, _ := ed25519.GenerateKey(nil)
	tmpl := &x509.Certificate{NotAfter: time.Now().Add(24 * time.Hour), DNSNames: []string{"relay.test"}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	leaf, _ := x509.ParseCertificate(der) // nil, and AddCert panics, if the lines above failed
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}}}, pool
})

// smtpFake is the SMTP relay, on 127.0.0.1, that every test file shares.
// Set its knobs, then call start; it stops when the test ends.
type smtpFake struct {
	noStartTLS, implicit bool     // do not offer STARTTLS; speak TLS from the first byte, as smtps
	auth                 []string // AUTH mechanisms to offer: PLAIN, LOGIN, or any name
	user, pass           string   // the credentials accepted; when set, MAIL needs AUTH
	// replies replaces the reply to a command verb, to the greeting
	// ("GREETING") or to the message after DATA's final dot ("END"); see
	// fakeSilent and fakeDrop.
	replies map[string]string

	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	msgs []smtpMessage // every message accepted
}

// smtpMessage is one message the fake accepted, and how it arrived.
type smtpMessage struct {
	from, data string // data as sent, dot-stuffing undone
	to         []string
	auth, ehlo string // the AUTH mechanism that succeeded ("" for none); the name given in EHLO or HELO
	tls        bool
}

func (s *smtpFake) start(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	fatalIf(t, err)
	s.ln = ln
	s.wg.Go(func() {
		for c, err := ln.Accept(); err == nil; c, err = ln.Accept() {
			s.wg.Go(func() { s.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
}

// received returns the messages accepted so far.
func (s *smtpFake) received() []smtpMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

func (s *smtpFake) serve(conn net.Conn) {
	defer func() { conn.Close() }()
	conn.SetDeadline(time.Now().Add(10 * time.Second)) // a client that never hangs up cannot keep the test from ending
	tlsConf, _ := testCert()
	if s.implicit {
		conn = tls.Server(conn, tlsConf)
	}
	r := bufio.NewReader(conn)
	// say sends the reply the key's override gives, else reply, and
	// reports whether the session goes on.
	say := func(key, reply string) bool {
		switch reply = cmp.Or(s.replies[key], reply); reply {
		case fakeSilent:
			io.Copy(io.Discard, conn)
		case fakeDrop:
		default:
			_, err := io.WriteString(conn, reply+"\r\n")
			return err == nil
		}
		return false
	}
	// read returns the next line; a broken connection ends the session at
	// the command that follows.
	read := func() string {
		line, _ := r.ReadString('\n')
		return strings.TrimRight(line, "\r\n")
	}
	ehlo, auth, secure := "", "", s.implicit
	var msg *smtpMessage
	for ok := say("GREETING", "220 relay.test ESMTP ready"); ok; {
		verb, arg, _ := strings.Cut(read(), " ")
		switch verb = strings.ToUpper(verb); verb {
		case "":
			return
		case "EHLO", "HELO":
			ehlo = arg
			ext := "250-relay.test"
			if !s.noStartTLS && !secure {
				ext += "\r\n250-STARTTLS"
			}
			if len(s.auth) > 0 {
				ext += "\r\n250-AUTH " + strings.Join(s.auth, " ")
			}
			ok = say(verb, ext+"\r\n250 HELP")
		case "STARTTLS":
			if ok = say(verb, "220 2.0.0 ready to start TLS"); s.replies[verb] == "" {
				tc := tls.Server(conn, tlsConf)
				// RFC 3207: the client starts over, forgetting all it was told.
				conn, r, ok = tc, bufio.NewReader(tc), tc.Handshake() == nil
				ehlo, auth, secure, msg = "", "", true, nil
			}
		case "AUTH":
			mech, resp, _ := strings.Cut(arg, " ")
			creds := decode64(resp) // PLAIN's initial response: NUL user NUL password
			if mech == "LOGIN" {
				say("", "334 VXNlcm5hbWU6") // "Username:"
				user := decode64(read())
				say("", "334 UGFzc3dvcmQ6") // "Password:"
				creds = "\x00" + user + "\x00" + decode64(read())
			}
			if creds != "\x00"+s.user+"\x00"+s.pass || !slices.Contains(s.auth, mech) {
				ok = say(verb, "535 5.7.8 authentication credentials invalid")
			} else {
				auth, ok = mech, say(verb, "235 2.7.0 authentication successful")
			}
		case "MAIL":
			if s.user != "" && auth == "" {
				ok = say(verb, "530 5.7.0 authentication required")
				continue
			}
			msg = &smtpMessage{from: strings.Trim(strings.TrimPrefix(arg, "FROM:"), "<>"), auth: auth, tls: secure, ehlo: ehlo}
			ok = say(verb, "250 2.1.0 sender ok")
		case "RCPT":
			msg.to = append(msg.to, strings.Trim(strings.TrimPrefix(arg, "TO:"), "<>"))
			ok = say(verb, "250 2.1.5 recipient ok")
		case "DATA":
			if ok = say(verb, "354 end data with <CR><LF>.<CR><LF>"); !ok || s.replies[verb] != "" {
				continue
			}
			// Up to the lone dot, dot-stuffing undone, line endings as sent.
			for line, err := r.ReadString('\n'); line != ".\r\n"; line, err = r.ReadString('\n') {
				if err != nil {
					return
				}
				msg.data += strings.TrimPrefix(line, ".")
			}
			// Recorded before the reply, so that a client told 250 finds it.
			if _, rejected := s.replies["END"]; !rejected {
				s.mu.Lock()
				s.msgs = append(s.msgs, *msg)
				s.mu.Unlock()
			}
			msg, ok = nil, say("END", "250 2.0.0 queued")
		case "QUIT":
			say(verb, "221 2.0.0 bye")
			return
		default:
			ok = say(verb, "502 5.5.2 command not recognized")
		}
	}
}

func decode64(s string) string {
	b, _ := base64.StdEncoding.DecodeString(s)
	return string(b)
}

// parseMail returns a received message's header and its decoded
// quoted-printable body.
func parseMail(t testing.TB, data string) (mail.Header, string) {
	t.Helper()
	msg, err := mail.ReadMessage(strings.NewReader(data))
	if err != nil {
		t.Fatalf("received mail does not parse: %v\n%s", err, data)
	}
	b, err := io.ReadAll(quotedprintable.NewReader(msg.Body))
	fatalIf(t, err) // quotedprintable's errors say what is wrong with the body
	return msg.Header, string(b)
}
