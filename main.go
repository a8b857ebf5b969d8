// Command order-management serves the REST API for customers, orders and the
// phone-number inventory, and notifies customers of their orders by SMS or
// e-mail through a transactional outbox.
package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "order-management:", err)
		os.Exit(1)
	}
}

// config is the service's configuration, read from the environment and
// checked, with the notification providers it names built.
type config struct {
	databaseURL    string
	port           string
	issuer         string
	audiences      []string
	sms            *africasTalking // nil when AT_USERNAME is not set
	mailer         *smtpMailer     // nil when SMTP_URL is not set
	callbackSecret string
	notifyRules    string
	logLevel       slog.Level
}

// startupPatience bounds how long start-up waits for the OIDC provider, and
// then for the database.
const startupPatience = 30 * time.Second

// drainTime bounds how long shutdown waits for the requests in flight, and
// then for the sends under way.
const drainTime = 25 * time.Second

// loadConfig reads and checks the environment, and builds the notification
// providers it configures. Its errors name the variable and never include a
// secret.
func loadConfig(getenv func(string) string) (config, error) {
	c := config{
		databaseURL:    getenv("DATABASE_URL"),
		port:           cmp.Or(getenv("PORT"), "8080"),
		issuer:         getenv("OIDC_ISSUER_URL"),
		callbackSecret: getenv("AT_CALLBACK_SECRET"),
		notifyRules:    cmp.Or(getenv("NOTIFY_RULES"), "*=sms"),
	}
	for a := range strings.SplitSeq(getenv("OIDC_AUDIENCE"), ",") {
		if a = strings.TrimSpace(a); a != "" {
			c.audiences = append(c.audiences, a)
		}
	}
	if u, err := url.Parse(c.databaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
		return c, errors.New("DATABASE_URL must be a postgres:// URL with a host (postgres://user:pass@host:5432/db?sslmode=...)")
	}
	if _, err := strconv.ParseUint(c.port, 10, 16); err != nil {
		return c, fmt.Errorf("PORT must be a TCP port number, not %q", c.port)
	}
	// An issuer with credentials could never match a token's iss, and would
	// show its password in every error that quotes it.
	if u, err := url.Parse(c.issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
		return c, errors.New("OIDC_ISSUER_URL must be the provider's issuer, an http(s) URL without credentials such as https://login.example.com/realms/acme")
	}
	if len(c.audiences) == 0 {
		return c, errors.New("OIDC_AUDIENCE is required (the aud this API's access tokens carry; several may be given, comma-separated)")
	}
	user, apiKey := getenv("AT_USERNAME"), getenv("AT_API_KEY")
	if (user == "") != (apiKey == "") {
		return c, errors.New("AT_USERNAME and AT_API_KEY must be set together")
	}
	if user != "" {
		base := cmp.Or(getenv("AT_BASE_URL"), atBaseURL(user))
		if err := checkATBaseURL(base); err != nil {
			return c, fmt.Errorf("AT_BASE_URL: %w", err)
		}
		// One connection per concurrent send stays open between sends: the
		// default two idle connections per host would make most sends dial
		// (and handshake TLS) again.
		transport := http.DefaultTransport.(*http.Transport).Clone()
		transport.MaxIdleConnsPerHost = maxConcurrentSends
		c.sms = newAfricasTalking(base, user, apiKey, getenv("AT_SENDER_ID"), &http.Client{Timeout: 15 * time.Second, Transport: transport})
	}
	if s := c.callbackSecret; s != "" && (len(s) < 16 || strings.Trim(s, alphanumeric+"-_.~") != "") {
		return c, errors.New("AT_CALLBACK_SECRET must be at least 16 letters, digits, '-', '_', '.' or '~'")
	}
	if smtpURL := getenv("SMTP_URL"); smtpURL != "" {
		relay, err := parseSMTPURL(smtpURL)
		if err != nil {
			return c, fmt.Errorf("SMTP_URL: %w", err)
		}
		if c.mailer, err = newSMTPMailer(relay, getenv("MAIL_FROM"), 15*time.Second); err != nil {
			return c, fmt.Errorf("MAIL_FROM must be the sender's bare address when SMTP_URL is set: %w", err)
		}
	}
	if c.logLevel.UnmarshalText([]byte(cmp.Or(getenv("LOG_LEVEL"), "info"))) != nil {
		return c, fmt.Errorf("LOG_LEVEL must be debug, info, warn or error, not %q", getenv("LOG_LEVEL"))
	}
	return c, nil
}

// run starts the service with the environment getenv reads, logs to stdout,
// and serves until ctx ends; then it stops accepting requests, finishes those
// in flight and the deliveries under way, and returns.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stdout, &slog.HandlerOptions{Level: cfg.logLevel}))
	a, err := newApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.close()
	ln, err := net.Listen("tcp", ":"+cfg.port)
	if err != nil {
		return fmt.Errorf("PORT: %w", err)
	}
	log.Info("listening", "addr", ln.Addr().String())
	srv := &http.Server{
		Handler:           a.server.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second, // imports may be 32 MiB
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	workerCtx, stopWorker := context.WithCancel(context.WithoutCancel(ctx))
	var worker sync.WaitGroup
	worker.Go(func() { a.worker.run(workerCtx, drainTime) })
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(nosniffListener{ln.(*net.TCPListener)}) }()

	// Serve returns nothing but an accept error before Shutdown is called.
	select {
	case err = <-serveErr:
	case <-ctx.Done():
		log.Info("shutting down")
		// The parent context is already cancelled; shutdown gets its own.
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTime)
		err = srv.Shutdown(shutdownCtx)
		cancel()
	}
	// Requests are finished, so no new outbox rows can appear from this
	// process; the worker now finishes the sends it has under way.
	stopWorker()
	worker.Wait()
	log.Info("stopped")
	return err
}

// app is the running service: its store, its HTTP server and its worker.
type app struct {
	cfg    config
	log    *slog.Logger
	store  *store
	server *server
	worker *worker
}

// newApp wires the notification channels, discovers the OIDC provider,
// connects to the database and applies the schema. A channel whose provider
// is not configured writes to the log, with a warning so that nobody takes a
// local run's silence for delivery.
func newApp(ctx context.Context, cfg config, log *slog.Logger) (*app, error) {
	cs := newChannels()
	if cfg.sms != nil {
		cs.register("sms", cfg.sms, "phone")
	} else {
		log.Warn("AT_USERNAME is not set: SMS notifications are written to the log, not sent")
		cs.register("sms", logSender{channel: "sms", render: smsText, log: log}, "phone")
	}
	if cfg.mailer != nil {
		cs.register("email", cfg.mailer, "email")
	} else {
		log.Warn("SMTP_URL is not set: e-mail notifications are written to the log, not sent")
		cs.register("email", logSender{channel: "email", render: mailText, log: log}, "email")
	}
	if err := cs.setRules(cfg.notifyRules); err != nil {
		return nil, err
	}
	auth, err := newAuthenticator(ctx, cfg.issuer, cfg.audiences, &http.Client{Timeout: 10 * time.Second}, startupPatience, log)
	if err != nil {
		return nil, err
	}
	st, err := openStore(cfg.databaseURL)
	if err != nil {
		return nil, err
	}
	// A service started alongside its database waits for it rather than
	// crash-looping.
	err = retry(ctx, time.Now().Add(startupPatience), func() error {
		pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return st.ping(pingCtx)
	}, func(err error, wait time.Duration) {
		log.Warn("database not reachable; retrying", "error", err, "retry_in", wait.String())
	})
	if err != nil {
		st.close()
		return nil, fmt.Errorf("DATABASE_URL: the database does not answer: %w", err)
	}
	if err := st.migrate(ctx); err != nil {
		st.close()
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	w := newWorker(st.db, cs, log)
	return &app{cfg: cfg, log: log, store: st, worker: w, server: &server{
		store: st, auth: auth, channels: cs, outbox: w, log: log,
		callbackSecret: cfg.callbackSecret, imports: make(chan struct{}, maxImports),
	}}, nil
}

func (a *app) close() { a.store.close() }

// retry calls try until it returns nil, ctx ends, or deadline passes (a
// zero deadline never does), and returns the last error (ctx's error when ctx
// ended). It waits 100 ms after the first failure, doubling up to 5 s, and
// makes its last try at the deadline; it tells onRetry of each failure it
// will retry.
func retry(ctx context.Context, deadline time.Time, try func() error, onRetry func(err error, wait time.Duration)) error {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := try()
		if err == nil || !deadline.IsZero() && !time.Now().Before(deadline) {
			return err
		}
		if !deadline.IsZero() {
			wait = min(wait, time.Until(deadline))
		}
		onRetry(err, wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// nosniffListener adds "X-Content-Type-Options: nosniff" to the plain-text
// answers net/http writes on its own to requests it cannot parse (400, 431,
// 501). They are written to the connection before any handler could run, so
// the connection is the only place to reach them.
type nosniffListener struct{ *net.TCPListener }

func (l nosniffListener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	return nosniffConn{c}, nil
}

// nosniffConn keeps the TCP connection's CloseWrite, which the server uses to
// half-close before hanging up on a request whose headers were too large.
type nosniffConn struct{ *net.TCPConn }

// serverErrorHeaders are the headers of net/http's own error answers.
var serverErrorHeaders = []byte("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n")

func (c nosniffConn) Write(b []byte) (int, error) {
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 ")) || !bytes.Contains(b, serverErrorHeaders) {
		return c.TCPConn.Write(b)
	}
	patched := bytes.Replace(b, serverErrorHeaders, []byte("\r\nX-Content-Type-Options: nosniff"+string(serverErrorHeaders)), 1)
	if _, err := c.TCPConn.Write(patched); err != nil {
		return 0, err
	}
	return len(b), nil
}
