// Command order-management serves the REST API for customers, orders and the
// phone-number inventory, and notifies customers of their orders by SMS or
// e-mail through a transactional outbox.
package main

import (
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
	databaseURL  string
	port         string
	issuer       string
	audience     string
	atUsername   string
	atAPIKey     string
	atSenderID   string
	atBaseURL    string
	smtpURL      string
	mailFrom     string
	notifyRules  string
	logLevel     slog.Level
	oidcPatience time.Duration // how long start-up waits for the provider
	drain        time.Duration // how long shutdown waits for requests and sends
}

// loadConfig reads and checks the environment. Its errors name the variable
// and never include a secret.
func loadConfig(getenv func(string) string) (config, error) {
	c := config{
		databaseURL:  getenv("DATABASE_URL"),
		port:         or(getenv("PORT"), "8080"),
		issuer:       getenv("OIDC_ISSUER_URL"),
		audience:     getenv("OIDC_AUDIENCE"),
		atUsername:   getenv("AT_USERNAME"),
		atAPIKey:     getenv("AT_API_KEY"),
		atSenderID:   getenv("AT_SENDER_ID"),
		atBaseURL:    getenv("AT_BASE_URL"),
		smtpURL:      getenv("SMTP_URL"),
		mailFrom:     getenv("MAIL_FROM"),
		notifyRules:  or(getenv("NOTIFY_RULES"), "*=sms"),
		oidcPatience: 30 * time.Second,
		drain:        25 * time.Second,
	}
	if c.databaseURL == "" {
		return c, errors.New("DATABASE_URL is required (postgres://user:pass@host:5432/db?sslmode=...)")
	}
	if u, err := url.Parse(c.databaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
		return c, errors.New("DATABASE_URL must be a postgres:// URL with a host")
	}
	if p, err := strconv.Atoi(c.port); err != nil || p < 0 || p > 65535 {
		return c, fmt.Errorf("PORT must be a TCP port number, not %q", c.port)
	}
	if c.issuer == "" {
		return c, errors.New("OIDC_ISSUER_URL is required (the provider's issuer, e.g. https://login.example.com/realms/acme)")
	}
	if u, err := url.Parse(c.issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return c, fmt.Errorf("OIDC_ISSUER_URL must be an http(s) URL, not %q", c.issuer)
	}
	if c.audience == "" {
		return c, errors.New("OIDC_AUDIENCE is required (the aud this API's access tokens carry)")
	}
	if (c.atUsername == "") != (c.atAPIKey == "") {
		return c, errors.New("AT_USERNAME and AT_API_KEY must be set together")
	}
	if c.atBaseURL == "" && c.atUsername != "" {
		c.atBaseURL = atBaseURL(c.atUsername)
	}
	if c.atBaseURL != "" {
		if u, err := url.Parse(c.atBaseURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return c, fmt.Errorf("AT_BASE_URL must be an http(s) URL, not %q", c.atBaseURL)
		}
	}
	if c.smtpURL != "" && c.mailFrom == "" {
		return c, errors.New("MAIL_FROM is required when SMTP_URL is set")
	}
	switch strings.ToLower(or(getenv("LOG_LEVEL"), "info")) {
	case "debug":
		c.logLevel = slog.LevelDebug
	case "info":
		c.logLevel = slog.LevelInfo
	case "warn":
		c.logLevel = slog.LevelWarn
	case "error":
		c.logLevel = slog.LevelError
	default:
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
func newApp(ctx context.Context, cfg config, log *slog.Logger) (*app, error) {
	st, err := openStore(ctx, cfg.databaseURL)
	if err != nil {
		return nil, err
	}
	if err := waitForDatabase(ctx, st, 30*time.Second, log); err != nil {
		st.close()
		return nil, err
	}
	if err := st.migrate(ctx); err != nil {
		st.close()
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	auth, err := newAuthenticator(ctx, cfg.issuer, cfg.audience, &http.Client{Timeout: 10 * time.Second}, cfg.oidcPatience, log)
	if err != nil {
		st.close()
		return nil, err
	}
	cs, err := newNotificationChannels(cfg, log)
	if err != nil {
		st.close()
		return nil, err
	}
	w := newWorker(st.db, cs, log)
	return &app{
		cfg:    cfg,
		log:    log,
		store:  st,
		worker: w,
		server: &server{store: st, auth: auth, channels: cs, wake: w.wake, log: log, openapi: openapiYAML},
	}, nil
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
	phone := func(c customer) string { return c.Phone }
	email := func(c customer) string {
		if c.Email == nil {
			return ""
		}
		return *c.Email
	}
	if cfg.atUsername != "" {
		cs.register("sms", newAfricasTalking(cfg.atBaseURL, cfg.atUsername, cfg.atAPIKey, cfg.atSenderID, client), phone)
	} else {
		log.Warn("AT_USERNAME is not set: SMS notifications are written to the log, not sent")
		cs.register("sms", logSender{channel: "sms", log: log}, phone)
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
		cs.register("email", mailer, email)
	} else {
		log.Warn("SMTP_URL is not set: e-mail notifications are written to the log, not sent")
		cs.register("email", logSender{channel: "email", log: log}, email)
	}
	if err := cs.setRules(cfg.notifyRules); err != nil {
		return nil, err
	}
	return cs, nil
}

// waitForDatabase pings until the database answers or patience runs out, so
// that a service started alongside its database does not crash-loop.
func waitForDatabase(ctx context.Context, st *store, patience time.Duration, log *slog.Logger) error {
	deadline := time.Now().Add(patience)
	for wait := 250 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := st.ping(pingCtx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().Add(wait).After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("DATABASE_URL: the database does not answer: %w", err)
		}
		log.Warn("database not reachable; retrying", "error", err, "retry_in", wait.String())
		select {
		case <-ctx.Done():
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
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	workerCtx, stopWorker := context.WithCancel(context.WithoutCancel(ctx))
	workerDone := make(chan struct{})
	go func() {
		defer close(workerDone)
		a.worker.run(workerCtx, a.cfg.drain)
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

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
