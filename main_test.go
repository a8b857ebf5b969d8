package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
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
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for key, val := range valid {
			m[key] = val
		}
		m[k] = v
		return m
	}
	withAT := func(base string) map[string]string {
		m := with("AT_USERNAME", "u")
		m["AT_API_KEY"], m["AT_BASE_URL"] = "k", base
		return m
	}
	cases := []struct {
		name  string
		env   map[string]string
		names string // the variable the error must name; "" for success
	}{
		{"valid", valid, ""},
		{"AT base in clear to loopback", withAT("http://127.0.0.1:9100"), ""},
		{"no database", with("DATABASE_URL", ""), "DATABASE_URL"},
		{"database not a URL", with("DATABASE_URL", "host=db user=u password=secret"), "DATABASE_URL"},
		{"database wrong scheme", with("DATABASE_URL", "mysql://u:secret@db/app"), "DATABASE_URL"},
		{"bad port", with("PORT", "http"), "PORT"},
		{"port too big", with("PORT", "70000"), "PORT"},
		{"no issuer", with("OIDC_ISSUER_URL", ""), "OIDC_ISSUER_URL"},
		{"issuer not http", with("OIDC_ISSUER_URL", "login.example.com"), "OIDC_ISSUER_URL"},
		{"issuer with credentials", with("OIDC_ISSUER_URL", "ftp://user:secret@login.example.com"), "OIDC_ISSUER_URL"},
		{"no audience", with("OIDC_AUDIENCE", ""), "OIDC_AUDIENCE"},
		{"only commas for audience", with("OIDC_AUDIENCE", " , ,"), "OIDC_AUDIENCE"},
		{"AT key without user", with("AT_API_KEY", "secret"), "AT_USERNAME"},
		{"AT user without key", with("AT_USERNAME", "acme"), "AT_API_KEY"},
		{"bad AT base", withAT("ftp://x"), "AT_BASE_URL"},
		{"AT base in clear to another host", withAT("http://user:secret@gateway.example.com"), "AT_BASE_URL"},
		{"short callback secret", with("AT_CALLBACK_SECRET", "secret"), "AT_CALLBACK_SECRET"},
		{"callback secret not URL-safe", with("AT_CALLBACK_SECRET", "secret/secret/secret"), "AT_CALLBACK_SECRET"},
		{"SMTP without sender", with("SMTP_URL", "smtp://u:secret@mail:587"), "MAIL_FROM"},
		{"bad log level", with("LOG_LEVEL", "loud"), "LOG_LEVEL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := loadConfig(func(k string) string { return tc.env[k] })
			if tc.names == "" {
				if err != nil {
					t.Fatalf("got %v, want no error", err)
				}
				if cfg.port != "8080" || cfg.notifyRules != "*=sms" || cfg.logLevel.String() != "INFO" || len(cfg.audiences) != 1 {
					t.Errorf("defaults: got port %q rules %q level %v audiences %q", cfg.port, cfg.notifyRules, cfg.logLevel, cfg.audiences)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.names) {
				t.Fatalf("got %v, want an error naming %s", err, tc.names)
			}
			if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q leaks a secret or spans lines", err)
			}
		})
	}
	cfg, _ := loadConfig(func(k string) string {
		return with("AT_USERNAME", "sandbox")[k] + map[string]string{"AT_API_KEY": "k"}[k]
	})
	if cfg.atBaseURL != "https://api.sandbox.africastalking.com" {
		t.Errorf("sandbox base URL: got %q", cfg.atBaseURL)
	}
	cfg, _ = loadConfig(func(k string) string {
		return with("OIDC_AUDIENCE", " api://orders , 8f1c0d2e-0000-4000-8000-000000000001,")[k]
	})
	if strings.Join(cfg.audiences, "|") != "api://orders|8f1c0d2e-0000-4000-8000-000000000001" {
		t.Errorf("audiences: got %q", cfg.audiences)
	}
}

// Start-up refuses what it cannot use, naming the variable.
func TestNewAppRefusesBadNotificationConfig(t *testing.T) {
	iss := newFakeOIDC(t)
	base := map[string]string{"DATABASE_URL": testSchemaURL(t), "OIDC_ISSUER_URL": iss.url, "OIDC_AUDIENCE": iss.audience}
	cases := map[string]map[string]string{
		"NOTIFY_RULES": {"NOTIFY_RULES": "*=fax"},
		"SMTP_URL":     {"SMTP_URL": "http://mail", "MAIL_FROM": "a@example.com"},
		"MAIL_FROM":    {"SMTP_URL": "smtp://mail:25", "MAIL_FROM": "Shop <a@example.com>"},
	}
	for name, extra := range cases {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		for k, v := range extra {
			env[k] = v
		}
		err := run(t.Context(), func(k string) string { return env[k] }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: got %v, want an error naming it", name, err)
		}
	}
	cfg, _ := loadConfig(func(k string) string {
		return map[string]string{"DATABASE_URL": "postgres://nobody:secret@127.0.0.1:1/none", "OIDC_ISSUER_URL": iss.url, "OIDC_AUDIENCE": "a"}[k]
	})
	cfg.patience = 300 * time.Millisecond
	if _, err := newApp(t.Context(), cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "DATABASE_URL") || strings.Contains(err.Error(), "secret") {
		t.Errorf("unreachable database: got %v, want an error naming DATABASE_URL without the password", err)
	}
}

// run starts the whole service from its environment on port 0, serves, and
// on cancellation finishes the request in flight before returning.
func TestRunServesAndShutsDownGracefully(t *testing.T) {
	iss := newFakeOIDC(t)
	env := map[string]string{"DATABASE_URL": testSchemaURL(t), "OIDC_ISSUER_URL": iss.url, "OIDC_AUDIENCE": iss.audience, "PORT": "0"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, logs := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- run(ctx, func(k string) string { return env[k] }, logs); logs.Close() }()

	addr := make(chan string, 1)
	var seen strings.Builder
	var mu sync.Mutex
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mu.Lock()
			seen.WriteString(sc.Text() + "\n")
			mu.Unlock()
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == "listening" {
				addr <- strings.Replace(line["addr"].(string), "[::]", "127.0.0.1", 1)
			}
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case err := <-done:
		t.Fatalf("run returned before listening: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("run did not start listening")
	}
	res, err := http.Get(base + "/healthz")
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v %v", res, err)
	}
	res.Body.Close()

	// A slow client is mid-request when the shutdown begins: its request is
	// still answered.
	req, _ := http.NewRequest("POST", base+"/v1/customers", &slowBody{data: `{"code":"SLOW","name":"S","phone":"+254712345678"}`, delay: 300 * time.Millisecond})
	req.Header.Set("Authorization", "Bearer "+iss.token(t, "staff-1", allScopes...))
	req.Header.Set("Content-Type", "application/json")
	status := make(chan int, 1)
	go func() {
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			status <- 0
			return
		}
		res.Body.Close()
		status <- res.StatusCode
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	if got := <-status; got != http.StatusCreated {
		t.Errorf("in-flight request during shutdown: got %d, want 201", got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: got %v, want nil after a clean shutdown", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancellation")
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("the server still answers after shutdown")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{`"msg":"shutting down"`, `"msg":"stopped"`, "SMS notifications are written to the log"} {
		if !strings.Contains(seen.String(), want) {
			t.Errorf("log lacks %s", want)
		}
	}
}

// slowBody is a request body that trickles in after a delay.
type slowBody struct {
	data  string
	delay time.Duration
	done  bool
}

func (b *slowBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	time.Sleep(b.delay)
	b.done = true
	return copy(p, b.data), nil
}

// Several replicas starting at once apply the schema one at a time, and
// applying it again changes nothing in the catalog.
func TestMigrateConcurrently(t *testing.T) {
	url := testSchemaURL(t)
	st, err := openStore(url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	// The schema's tables, columns, constraints and indexes, with the
	// identities (OIDs) that re-creating any of them would change.
	catalog := func() string {
		var got string
		err := st.db.QueryRow(`
			SELECT string_agg(format('%s %s %s %s', c.oid, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)), E'\n' ORDER BY c.relname, a.attnum)
				|| (SELECT string_agg(format('%s %s %s', oid, conname, pg_get_constraintdef(oid)), E'\n' ORDER BY conname)
					FROM pg_constraint WHERE connamespace = current_schema()::regnamespace)
			FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
			WHERE c.relnamespace = current_schema()::regnamespace`).Scan(&got)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if err := st.migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := catalog()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			other, err := openStore(url)
			if err == nil {
				err = other.migrate(t.Context())
				other.close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("migrate: %v", err)
		}
	}
	if after := catalog(); after != before {
		t.Errorf("applying the schema again changed the catalog:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if !strings.Contains(before, "notifications_status_known") || !strings.Contains(before, "delivered_at") {
		t.Errorf("catalog lacks the notification statuses:\n%s", before)
	}
}
