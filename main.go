// Command order-management serves the REST API for customers, orders and the
// phone-number inventory, and notifies customers of their orders by SMS or
// e-mail through a transactional outbox.
package main

import (
	"bytes"
	"cmp"
	"context"
	_ "embed"
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
	"syscall"
	"time"
)

//go:embed openapi.yaml
var openapiYAML []byte

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "order-management:", err)
		os.Exit(1)
	}
}

// config is the service's configuration, read from the environment.
type config struct {
	databaseURL    string
	port           string
	issuer         string
	audiences      []string
	atUsername     string
	atAPIKey       string
	atSenderID     string
	atBaseURL      string
	callbackSecret string
	smtpURL        string
	mailFrom       string
	notifyRules    string
	logLevel       slog.Level
	patience       time.Duration // how long start-up waits for the database and the provider
	drain          time.Duration // how long shutdown waits for requests and sends
}

// loadConfig reads and checks the environment. Its errors name the variable
// and never include a secret.
func loadConfig(getenv func(string) string) (config, error) {
	c := config{
		databaseURL:    getenv("DATABASE_URL"),
		port:           cmp.Or(getenv("PORT"), "8080"),
		issuer:         getenv("OIDC_ISSUER_URL"),
		atUsername:     getenv("AT_USERNAME"),
		atAPIKey:       getenv("AT_API_KEY"),
		atSenderID:     getenv("AT_SENDER_ID"),
		atBaseURL:      getenv("AT_BASE_URL"),
		callbackSecret: getenv("AT_CALLBACK_SECRET"),
		smtpURL:        getenv("SMTP_URL"),
		mailFrom:       getenv("MAIL_FROM"),
		notifyRules:    cmp.Or(getenv("NOTIFY_RULES"), "*=sms"),
		patience:       30 * time.Second,
		drain:          25 * time.Second,
	}
	for a := range strings.SplitSeq(getenv("OIDC_AUDIENCE"), ",") {
		if a = strings.TrimSpace(a); a != "" {
			c.audiences = append(c.audiences, a)
		}
	}
	if u, err := url.Parse(c.databaseURL); c.databaseURL == "" || err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
		return c, errors.New("DATABASE_URL must be a postgres:// URL with a host (postgres://user:pass@host:5432/db?sslmode=...)")
	}
	if p, err := strconv.Atoi(c.port); err != nil || p < 0 || p > 65535 {
		return c, fmt.Errorf("PORT must be a TCP port number, not %q", c.port)
	}
	if u, err := url.Parse(c.issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return c, errors.New("OIDC_ISSUER_URL must be the provider's issuer, an http(s) URL such as https://login.example.com/realms/acme")
	}
	if len(c.audiences) == 0 {
		return c, errors.New("OIDC_AUDIENCE is required (the aud this API's access tokens carry; several may be given, comma-separated)")
	}
	if (c.atUsername == "") != (c.atAPIKey == "") {
		return c, errors.New("AT_USERNAME and AT_API_KEY must be set together")
	}
	if c.atUsername != "" {
		c.atBaseURL = cmp.Or(c.atBaseURL, atBaseURL(c.atUsername))
		if err := checkATBaseURL(c.atBaseURL); err != nil {
			return c, fmt.Errorf("AT_BASE_URL: %w", err)
		}
	}
	if s := c.callbackSecret; s != "" && (len(s) < 16 || strings.Trim(s, alphanumeric+"-_.~") != "") {
		return c, errors.New("AT_CALLBACK_SECRET must be at least 16 letters, digits, '-', '_', '.' or '~'")
	}
	if c.smtpURL != "" && c.mailFrom == "" {
		return c, errors.New("MAIL_FROM is required when SMTP_URL is set")
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
	app, err := newApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer app.close()
	ln, err := net.Listen("tcp", ":"+cfg.port)
	if err != nil {
		return fmt.Errorf("PORT: %w", err)
	}
	log.Info("listening", "addr", ln.Addr().String())
	return app.serve(ctx, ln)
}

// app is the running service: its store, its HTTP server and its worker.
type app struct {
	cfg    config
	log    *slog.Logger
	store  *store
	server *server
	worker *worker
}

// newApp connects to the database, applies the schema, discovers the OIDC
// provider and wires the notification channels.
func newApp(ctx context.Context, cfg config, log *slog.Logger) (_ *app, err error) {
	st, err := openStore(cfg.databaseURL)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	// A service started alongside its database waits for it rather than
	// crash-looping.
	err = retry(ctx, time.Now().Add(cfg.patience), func() error {
		pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return st.ping(pingCtx)
	}, func(err error, wait time.Duration) {
		log.Warn("database not reachable; retrying", "error", err, "retry_in", wait.String())
	})
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: the database does not answer: %w", err)
	}
	if err := st.migrate(ctx); err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	auth, err := newAuthenticator(ctx, cfg.issuer, cfg.audiences, &http.Client{Timeout: 10 * time.Second}, cfg.patience, log)
	if err != nil {
		return nil, err
	}
	cs, err := newNotificationChannels(cfg, log)
	if err != nil {
		return nil, err
	}
	w := newWorker(st.db, cs, log)
	return &app{cfg: cfg, log: log, store: st, worker: w, server: &server{
		store: st, auth: auth, channels: cs, outbox: w, log: log, openapi: openapiYAML,
		callbackSecret: cfg.callbackSecret, imports: make(chan struct{}, maxImports),
	}}, nil
}

// newNotificationChannels registers every channel: the real provider where
// it is configured, the log where it is not (with a warning, so nobody takes
// a local run's silence for delivery).
func newNotificationChannels(cfg config, log *slog.Logger) (*channels, error) {
	cs := newChannels()
	// One connection per concurrent send stays open between sends: the
	// default two idle connections per host would make most sends dial (and
	// handshake TLS) again.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = maxConcurrentSends
	client := &http.Client{Timeout: 15 * time.Second, Transport: transport}
	if cfg.atUsername != "" {
		cs.register("sms", newAfricasTalking(cfg.atBaseURL, cfg.atUsername, cfg.atAPIKey, cfg.atSenderID, client), "phone")
	} else {
		log.Warn("AT_USERNAME is not set: SMS notifications are written to the log, not sent")
		cs.register("sms", logSender{channel: "sms", render: smsText, log: log}, "phone")
	}
	if cfg.smtpURL != "" {
		smtpCfg, err := parseSMTPURL(cfg.smtpURL)
		if err != nil {
			return nil, fmt.Errorf("SMTP_URL: %w", err)
		}
		mailer, err := newSMTPMailer(smtpCfg, cfg.mailFrom, 15*time.Second)
		if err != nil {
			return nil, fmt.Errorf("MAIL_FROM: %w", err)
		}
		cs.register("email", mailer, "email")
	} else {
		log.Warn("SMTP_URL is not set: e-mail notifications are written to the log, not sent")
		cs.register("email", logSender{channel: "email", render: mailText, log: log}, "email")
	}
	return cs, cs.setRules(cfg.notifyRules)
}

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

// serve answers requests on ln and runs the worker until ctx ends, then shuts
// both down within the drain time.
func (a *app) serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           a.server.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second, // imports may be 32 MiB
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	workerCtx, stopWorker := context.WithCancel(context.WithoutCancel(ctx))
	workerDone := make(chan struct{})
	go func() {
		defer close(workerDone)
		a.worker.run(workerCtx, a.cfg.drain)
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(nosniffListener{ln}) }()

	var err error
	select {
	case err = <-serveErr:
	case <-ctx.Done():
		a.log.Info("shutting down")
		// The parent context is already cancelled; shutdown gets its own.
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.drain)
		err = srv.Shutdown(shutdownCtx)
		cancel()
	}
	// Requests are finished, so no new outbox rows can appear from this
	// process; the worker now finishes the sends it has under way.
	stopWorker()
	<-workerDone
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	a.log.Info("stopped")
	return err
}

func (a *app) close() { a.store.close() }

// nosniffListener adds "X-Content-Type-Options: nosniff" to the plain-text
// answers net/http writes on its own to requests it cannot parse (400, 431,
// 501). They are written to the connection before any handler could run, so
// the connection is the only place to reach them.
type nosniffListener struct{ net.Listener }

func (l nosniffListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return nosniffConn{c}, nil
}

type nosniffConn struct{ net.Conn }

// serverErrorHeaders are the headers of net/http's own error answers.
var serverErrorHeaders = []byte("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n")

func (c nosniffConn) Write(b []byte) (int, error) {
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 ")) || !bytes.Contains(b, serverErrorHeaders) {
		return c.Conn.Write(b)
	}
	patched := bytes.Replace(b, serverErrorHeaders, []byte("\r\nX-Content-Type-Options: nosniff"+string(serverErrorHeaders)), 1)
	if _, err := c.Conn.Write(patched); err != nil {
		return 0, err
	}
	return len(b), nil
}

// CloseWrite lets the server half-close, as it does before hanging up on a
// request whose headers were too large.
func (c nosniffConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
