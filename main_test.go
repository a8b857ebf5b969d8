package main

import (
	"cmp"
	"context"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLoadConfig(t *testing.T) {
	valid := map[string]string{
		"DATABASE_URL":    "postgres://u:secret@db:5432/app?sslmode=require",
		"OIDC_ISSUER_URL": "https://login.example.com/realms/acme",
		"OIDC_AUDIENCE":   "order-management",
	}
	// with returns valid changed by the key, value pairs kv.
	with := func(kv ...string) map[string]string {
		env := maps.Clone(valid)
		for i := 0; i+1 < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return env
	}
	for _, tc := range []struct {
		env       map[string]string
		smsBase   string // the SMS provider's base URL; "" for none
		mail      bool   // whether an SMTP relay is configured
		audiences string
	}{
		{valid, "", false, "order-management"},
		{with("AT_USERNAME", "sandbox", "AT_API_KEY", "k"), "https://api.sandbox.africastalking.com", false, "order-management"},
		{with("AT_USERNAME", "acme", "AT_API_KEY", "k"), "https://api.africastalking.com", false, "order-management"},
		{with("AT_USERNAME", "acme", "AT_API_KEY", "k", "AT_BASE_URL", "http://127.0.0.1:9100"), "http://127.0.0.1:9100", false, "order-management"},
		{with("SMTP_URL", "smtp://u:secret@mail:587", "MAIL_FROM", "orders@example.com"), "", true, "order-management"},
		{with("OIDC_AUDIENCE", " api://orders , 8f1c0d2e-0000-4000-8000-000000000001,"), "", false, "api://orders|8f1c0d2e-0000-4000-8000-000000000001"},
	} {
		cfg, err := loadConfig(func(k string) string { return tc.env[k] })
		if err != nil {
			t.Fatalf("%v: got %v, want no error", tc.env, err)
		}
		smsBase := cmp.Or(cfg.sms, &africasTalking{}).baseURL
		if smsBase != tc.smsBase || (cfg.mailer != nil) != tc.mail || strings.Join(cfg.audiences, "|") != tc.audiences ||
			cfg.port != "8080" || cfg.notifyRules != "*=sms" || cfg.logLevel != slog.LevelInfo {
			t.Errorf("%v: got SMS at %q, mail %v, audiences %q, port %q, rules %q, level %v; want %q, %v, %q and the defaults 8080, *=sms, INFO",
				tc.env, smsBase, cfg.mailer != nil, cfg.audiences, cfg.port, cfg.notifyRules, cfg.logLevel, tc.smsBase, tc.mail, tc.audiences)
		}
	}

	for text, level := range map[string]slog.Level{"debug": slog.LevelDebug, "warn": slog.LevelWarn, "error": slog.LevelError} {
		cfg, err := loadConfig(func(k string) string { return with("LOG_LEVEL", text)[k] })
		fatalIf(t, err)
		equal(t, "the level of LOG_LEVEL="+text, cfg.logLevel, level)
	}
	for extra, want := range map[string][2]any{"": {int32(16), 5 * time.Minute}, "&pool_max_conns=4&pool_max_conn_idle_time=1m": {int32(4), time.Minute}} {
		st, err := openStore(valid["DATABASE_URL"] + extra)
		fatalIf(t, err)
		pool := st.pool.Config()
		equal(t, "the pool's size and idle time, DATABASE_URL ending in "+cmp.Or(extra, "sslmode=require"), [2]any{pool.MaxConns, pool.MaxConnIdleTime}, want)
		st.close()
	}

	for _, tc := range []struct {
		name  string
		env   map[string]string
		names string // the variable the error must name
	}{
		{"no database", with("DATABASE_URL", ""), "DATABASE_URL"},
		{"database not a URL", with("DATABASE_URL", "host=db user=u password=secret"), "DATABASE_URL"},
		{"database wrong scheme", with("DATABASE_URL", "mysql://u:secret@db/app"), "DATABASE_URL"},
		{"bad port", with("PORT", "http"), "PORT"},
		{"port too big", with("PORT", "70000"), "PORT"},
		{"no issuer", with("OIDC_ISSUER_URL", ""), "OIDC_ISSUER_URL"},
		{"issuer not http", with("OIDC_ISSUER_URL", "login.example.com"), "OIDC_ISSUER_URL"},
		{"issuer with credentials", with("OIDC_ISSUER_URL", "https://user:secret@login.example.com"), "OIDC_ISSUER_URL"},
		{"no audience", with("OIDC_AUDIENCE", ""), "OIDC_AUDIENCE"},
		{"only commas for audience", with("OIDC_AUDIENCE", " , ,"), "OIDC_AUDIENCE"},
		{"AT key without user", with("AT_API_KEY", "secret"), "AT_USERNAME"},
		{"AT user without key", with("AT_USERNAME", "acme"), "AT_API_KEY"},
		{"bad AT base", with("AT_USERNAME", "u", "AT_API_KEY", "secret", "AT_BASE_URL", "ftp://x"), "AT_BASE_URL"},
		{"AT base in clear to another host", with("AT_USERNAME", "u", "AT_API_KEY", "k", "AT_BASE_URL", "http://user:secret@gateway.example.com"), "AT_BASE_URL"},
		{"short callback secret", with("AT_CALLBACK_SECRET", "secret"), "AT_CALLBACK_SECRET"},
		{"callback secret not URL-safe", with("AT_CALLBACK_SECRET", "secret/secret/secret"), "AT_CALLBACK_SECRET"},
		{"SMTP not smtp", with("SMTP_URL", "http://u:secret@mail", "MAIL_FROM", "a@example.com"), "SMTP_URL"},
		{"SMTP without sender", with("SMTP_URL", "smtp://u:secret@mail:587"), "MAIL_FROM"},
		{"sender with a display name", with("SMTP_URL", "smtp://u:secret@mail:25", "MAIL_FROM", "Shop <a@example.com>"), "MAIL_FROM"},
		{"bad log level", with("LOG_LEVEL", "loud"), "LOG_LEVEL"},
	} {
		_, err := loadConfig(func(k string) string { return tc.env[k] })
		if err == nil || !strings.Contains(err.Error(), tc.names) {
			t.Errorf("%s: got %v, want an error naming %s", tc.name, err, tc.names)
		} else if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %q leaks a secret or spans lines", tc.name, err)
		}
	}
}

// Start-up refuses what it cannot use, naming the variable and never the
// password.
func TestStartupRefuses(t *testing.T) {
	iss := newFakeOIDC(t)
	env := map[string]string{"DATABASE_URL": "postgres://nobody:secret@127.0.0.1:1/none", "OIDC_ISSUER_URL": iss.url, "OIDC_AUDIENCE": iss.audience}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second) // how long the database is waited for
	defer cancel()
	for variable, rules := range map[string]string{"NOTIFY_RULES": "*=fax", "DATABASE_URL": "*=sms"} {
		env["NOTIFY_RULES"] = rules
		err := run(ctx, func(k string) string { return env[k] }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), variable) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: got %v, want an error naming it without the password", variable, err)
		}
	}
}

// run starts the whole service from its environment on port 0, serves, and
// on cancellation finishes the request in flight before returning.
func TestRunServesAndShutsDownGracefully(t *testing.T) {
	iss := newFakeOIDC(t)
	env := map[string]string{"DATABASE_URL": testSchemaURL(t), "OIDC_ISSUER_URL": iss.url, "OIDC_AUDIENCE": iss.audience, "PORT": "0"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, func(k string) string { return env[k] }, logs) }()
	var listening []map[string]any
	eventually(t, 20*time.Second, "run logs the address it listens on, or returns", func() bool {
		listening = logLines(t, logs.String(), "msg", "listening")
		return len(listening) == 1 || len(done) == 1
	})
	if len(listening) != 1 {
		t.Fatalf("run returned before listening: %v", <-done)
	}
	addr := strings.Replace(listening[0]["addr"].(string), "[::]", "127.0.0.1", 1)

	// net/http's own answers carry nosniff too, and one to headers too large
	// arrives whole: the server half-closes before it hangs up.
	conn, err := net.Dial("tcp", addr)
	fatalIf(t, err)
	defer conn.Close()
	go io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 2*maxHeaderBytes)+"\r\n\r\n")
	if answer, err := io.ReadAll(conn); err != nil || !strings.HasPrefix(string(answer), "HTTP/1.1 431 ") || !strings.Contains(string(answer), "\r\nX-Content-Type-Options: nosniff\r\n") {
		t.Errorf("headers too large: got %q, %v; want a 431 with nosniff", answer, err)
	}

	// A slow client is mid-request when the shutdown begins: its request is
	// still answered.
	body, slow := io.Pipe()
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/customers", body)
	req.Header.Set("Authorization", "Bearer "+iss.token(t, "staff-1", allScopes...))
	req.Header.Set("Content-Type", "application/json")
	answered := make(chan *http.Response, 1)
	go func() {
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
		}
		answered <- res
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	time.Sleep(200 * time.Millisecond)
	io.WriteString(slow, `{"code":"SLOW","name":"S","phone":"+254712345678"}`)
	slow.Close()
	if res := <-answered; res == nil || res.StatusCode != http.StatusCreated {
		t.Errorf("in-flight request during shutdown: got %v, want 201", res)
	}
	select {
	case err := <-done:
		equal(t, "run's error after a clean shutdown", err, nil)
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancellation")
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Error("the server still answers after shutdown")
	}
	for _, want := range []string{`"msg":"shutting down"`, `"msg":"stopped"`, "SMS notifications are written to the log", "e-mail notifications are written to the log"} {
		contains(t, "the log", logs.String(), want)
	}
}

// Several replicas starting at once (here, on connections of their own) apply
// the schema one at a time, and applying it again changes nothing in the
// catalog.
func TestMigrateConcurrently(t *testing.T) {
	ta := newTestApp(t, nil) // start-up has applied the schema
	// The schema's tables, columns, constraints and indexes, with the
	// identities (OIDs) that re-creating any of them would change.
	catalog := func() string {
		var got string
		err := ta.store.db.QueryRow(`
			SELECT string_agg(format('%s %s %s %s', c.oid, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)), E'\n' ORDER BY c.relname, a.attnum)
				|| (SELECT string_agg(format('%s %s %s', oid, conname, pg_get_constraintdef(oid)), E'\n' ORDER BY conname)
					FROM pg_constraint WHERE connamespace = current_schema()::regnamespace)
			FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
			WHERE c.relnamespace = current_schema()::regnamespace`).Scan(&got)
		fatalIf(t, err)
		return got
	}
	before := catalog()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := ta.store.migrate(t.Context()); err != nil {
				t.Errorf("migrate: %v", err)
			}
		})
	}
	wg.Wait()
	if after := catalog(); after != before {
		t.Errorf("applying the schema again changed the catalog:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if !strings.Contains(before, "notifications_status_known") || !strings.Contains(before, "delivered_at") {
		t.Errorf("catalog lacks the notification statuses:\n%s", before)
	}
}
