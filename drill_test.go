//go:build drill

// Fault drills: the real service binary, as a subprocess, under a steady load
// of orders while its SMS gateway fails, while it is SIGKILLed (and restarted,
// or left dead beside a second replica), while its PostgreSQL restarts, and as
// two replicas on one database; and its peak memory under the largest inputs
// it takes. Each load drill then checks the promises the README makes about
// the outbox: no accepted order is lost, no idempotency key makes two orders,
// every order's notification is delivered, and (outside the documented crash
// window) only once. They take minutes, so they are compiled only with
// -tags drill and run by `make drills`, never by `make test`.
package main

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	drillClients      = 8
	drillCustomers    = 5                     // DRILL-1 ... DRILL-5, which the load places orders for
	drillMaxOrders    = 4000                  // a bound on each drill's load, whatever the machine's speed
	drillClientPause  = 40 * time.Millisecond // between one client's orders, so the load spans the fault
	drillRetryPause   = 150 * time.Millisecond
	drillGatewayDelay = 20 * time.Millisecond // what a send takes, unless a drill says otherwise
	drillAPIKey       = "drill-api-key"
)

// drillBinary is the service binary, built before any drill's clock starts
// and without the race detector (-race on `go test` does not reach a
// subprocess), and removed when the tests end.
var drillBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "order-management-drill-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	drillBinary = filepath.Join(dir, "order-management")
	code := 1
	if out, err := exec.Command("go", "build", "-o", drillBinary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// drill is what every drill starts with: the database its processes share, a
// token issuer, the gateway, and a token with every scope for the load.
type drill struct {
	t     *testing.T
	dbURL string
	oidc  *fakeOIDC
	at    *atFake
	token string
}

func newDrill(t *testing.T, dbURL string) *drill {
	oidc := newFakeOIDC(t)
	d := &drill{t: t, dbURL: dbURL, oidc: oidc, at: newATFake(t, drillAPIKey), token: oidc.token(t, "drill", allScopes...)}
	d.at.delay.Store(int64(drillGatewayDelay))
	return d
}

// drillService is one process of the service binary, which may be started
// again after it was killed.
type drillService struct {
	t      *testing.T
	name   string
	env    []string
	url    string
	dir    string // its logs, one file per start
	cmd    *exec.Cmd
	exited chan struct{}
	starts int
}

// start runs a process of the binary named name on the drill's database, on
// a port of its own, and waits until it is ready. It signs in to the gateway as name, so
// that the gateway's records tell replicas apart. The process is stopped when
// the drill ends, and its log shown if the drill failed.
func (d *drill) start(name string) *drillService {
	d.t.Helper()
	port := freePort(d.t)
	s := &drillService{t: d.t, name: name, url: fmt.Sprintf("http://127.0.0.1:%d", port), dir: d.t.TempDir(), env: []string{
		"DATABASE_URL=" + d.dbURL,
		"PORT=" + strconv.Itoa(port),
		"OIDC_ISSUER_URL=" + d.oidc.url,
		"OIDC_AUDIENCE=" + d.oidc.audience,
		"AT_USERNAME=" + name,
		"AT_API_KEY=" + drillAPIKey,
		"AT_BASE_URL=" + d.at.srv.URL,
		"GOMEMLIMIT=200MiB", // as the image sets it
	}}
	d.t.Cleanup(func() {
		s.stop()
		if d.t.Failed() {
			s.printLog()
		}
	})
	s.start()
	return s
}

func (s *drillService) logPath(start int) string {
	return filepath.Join(s.dir, fmt.Sprintf("%s-%d.log", s.name, start))
}

// start runs the process again and waits until it is ready.
func (s *drillService) start() {
	s.t.Helper()
	s.starts++
	logFile, err := os.Create(s.logPath(s.starts))
	fatalIf(s.t, err)
	cmd := exec.Command(drillBinary)
	cmd.Env = s.env // nothing inherited: with-postgres.sh exports DATABASE_URL
	cmd.Stdout, cmd.Stderr = logFile, logFile
	fatalIf(s.t, cmd.Start())
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	eventually(s.t, time.Minute, s.name+" ready", func() bool {
		if !s.alive() {
			s.t.Fatalf("%s exited before it was ready", s.name)
		}
		return drillReadyz(s.url) == http.StatusOK
	})
}

// kill is SIGKILL: no shutdown, no draining, sends cut off wherever they are.
func (s *drillService) kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
}

// stop is SIGTERM, as a platform sends it, and SIGKILL after the drain time.
func (s *drillService) stop() {
	if s.cmd == nil {
		return // never started
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(40 * time.Second):
		s.t.Errorf("%s: still running 40 s after SIGTERM; killed", s.name)
		s.kill()
	}
}

func (s *drillService) alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// printLog shows the last lines of each run's log that are not routine.
func (s *drillService) printLog() {
	for start := 1; start <= s.starts; start++ {
		b, err := os.ReadFile(s.logPath(start))
		var notable []string
		for line := range strings.SplitSeq(string(b), "\n") {
			if line != "" && !strings.Contains(line, `"level":"INFO"`) {
				notable = append(notable, line)
			}
		}
		s.t.Logf("%s, run %d (%v): the last of its %d lines above INFO:\n%s", s.name, start, err, len(notable),
			strings.Join(notable[max(0, len(notable)-60):], "\n"))
	}
}

var drillProbe = &http.Client{Timeout: 3 * time.Second}

// drillReadyz returns the status of GET /readyz, 0 for a network error.
func drillReadyz(base string) int {
	res, err := drillProbe.Get(base + "/readyz")
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode
}

// request sends one request with the drill's token (and key as its
// Idempotency-Key, unless empty) and returns the status (0 for a network
// error) and the body (or the error).
func (d *drill) request(client *http.Client, method, url, contentType, key string, body []byte) (int, []byte) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return 0, []byte(err.Error())
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	for name, value := range map[string]string{"Content-Type": contentType, "Idempotency-Key": key} {
		if value != "" {
			req.Header.Set(name, value)
		}
	}
	res, err := client.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, []byte(err.Error())
	}
	return res.StatusCode, b
}

// drillLoad is a bounded load of orders from drillClients clients, each order
// with its own Idempotency-Key, retried with the same key and body after a
// network error or a 5xx, on the next target (a replica may have died), until
// it is accepted or the load gives up.
type drillLoad struct {
	start    time.Time
	wg       sync.WaitGroup
	mu       sync.Mutex
	keys     map[string]int64 // every key sent, with the id its 201 named (0: none)
	attempts []drillAttempt
}

// drillAttempt is one POST: when it started (since the load began), how long
// it took, and its status (0 for a network error).
type drillAttempt struct {
	at, latency time.Duration
	status      int
}

// load creates, through the first target, the customers the load places
// orders for; then it starts orders for duration, client i first posting to
// targets[i % len(targets)], and retries them until giveUp after the start.
func (d *drill) load(targets []*drillService, duration, giveUp time.Duration) *drillLoad {
	d.t.Helper()
	var customers []string
	for i := 1; i <= drillCustomers; i++ {
		customers = append(customers, fmt.Sprintf(`{"code":"DRILL-%d","name":"Drill Customer %d","phone":"+2547123456%02d"}`, i, i, i))
	}
	body := []byte("[" + strings.Join(customers, ",") + "]")
	if status, b := d.request(http.DefaultClient, "POST", targets[0].url+"/v1/customers/import", "application/json", "", body); status != http.StatusCreated {
		d.t.Fatalf("seeding customers: got %d %s, want 201", status, b)
	}
	l := &drillLoad{start: time.Now(), keys: map[string]int64{}}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: drillClients}}
	d.t.Cleanup(l.wg.Wait) // a drill that failed early still ends its load before the test
	var issued atomic.Int64
	for c := range drillClients {
		l.wg.Go(func() {
			target := c
			for seq := 0; time.Since(l.start) < duration && issued.Add(1) <= drillMaxOrders; seq++ {
				key := fmt.Sprintf("drill-%d-%d", c, seq)
				body := fmt.Appendf(nil, `{"customer_code":"DRILL-%d","item":"drill-kit-%d","amount":"%d.%02d"}`,
					1+(c+seq)%drillCustomers, c, 1+seq%500, seq%100)
				for {
					begin := time.Now()
					status, b := d.request(client, "POST", targets[target%len(targets)].url+"/v1/orders", "application/json", key, body)
					var o order
					accepted := status == http.StatusCreated && json.Unmarshal(b, &o) == nil && o.ID > 0
					l.note(key, o.ID, drillAttempt{at: begin.Sub(l.start), latency: time.Since(begin), status: status})
					if accepted {
						break
					}
					if status != 0 && status < 500 {
						d.t.Errorf("key %s: got %d %s, want 201 with an order id", key, status, b)
						break
					}
					if time.Since(l.start) > giveUp {
						break
					}
					target++
					time.Sleep(drillRetryPause)
				}
				time.Sleep(drillClientPause)
			}
		})
	}
	return l
}

// note records an attempt at key, and the id of its order once accepted.
func (l *drillLoad) note(key string, id int64, a drillAttempt) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.attempts = append(l.attempts, a)
	l.keys[key] = max(l.keys[key], id)
}

// drillPercentiles returns how many attempts started in [from, to) and got an
// answer, and their p50 and p99 latency.
func drillPercentiles(attempts []drillAttempt, from, to time.Duration) (n int, p50, p99 time.Duration) {
	var ls []time.Duration
	for _, a := range attempts {
		if a.at >= from && a.at < to && a.status != 0 {
			ls = append(ls, a.latency)
		}
	}
	if len(ls) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ls)
	at := func(p float64) time.Duration {
		return ls[min(len(ls)-1, int(p*float64(len(ls))))].Round(10 * time.Microsecond)
	}
	return len(ls), at(0.50), at(0.99)
}

var drillOrderRef = regexp.MustCompile(`your order #(\d+) `)

// drillOutcome is what a drill's orders became.
type drillOutcome struct {
	attempts   map[int64]int      // the notification's attempts, by order
	accepted   map[int64][]atSend // the messages the gateway accepted, by order, in order of arrival
	duplicates int
}

// drillDrained reports whether no notification is pending.
func drillDrained(db *sql.DB) func() bool {
	return func() bool {
		var pending int
		return db.QueryRow(`SELECT count(*) FROM notifications WHERE status = 'pending'`).Scan(&pending) == nil && pending == 0
	}
}

// verify waits up to settle for the outbox to drain, then compares what the
// clients were told, what the database holds and what the gateway accepted.
// It prints one line of figures and fails on any accepted order lost, made
// twice or never answered, any notification not sent or not at the gateway,
// and any message accepted twice unless inWindow (nil: none) says it is in
// the documented crash window, of which at most maxConcurrentSends.
func (d *drill) verify(name string, load *drillLoad, settle time.Duration, inWindow func(order int64, sends []atSend) bool) drillOutcome {
	t := d.t
	t.Helper()
	load.wg.Wait()
	db := openDB(t, d.dbURL)
	began := time.Now()
	eventually(t, settle, "the outbox drained", drillDrained(db))
	settled := time.Since(began).Round(10 * time.Millisecond)

	out := drillOutcome{attempts: map[int64]int{}, accepted: map[int64][]atSend{}}
	requests := d.at.requests()
	for _, s := range requests {
		if m := drillOrderRef.FindStringSubmatch(s.message); m != nil && s.messageID != "" {
			id, _ := strconv.ParseInt(m[1], 10, 64)
			out.accepted[id] = append(out.accepted[id], s)
		}
	}
	var problems []string
	problem := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	rows, err := db.Query(`
		SELECT o.id, coalesce(k.key, ''), coalesce(n.status, 'missing'), coalesce(n.attempts, 0), coalesce(n.last_error, '')
		FROM orders o
		LEFT JOIN idempotency_keys k ON k.order_id = o.id AND k.subject = 'drill'
		LEFT JOIN notifications n ON n.order_id = o.id`)
	fatalIf(t, err)
	keyOf, resent := map[int64]string{}, 0
	for rows.Next() {
		var id int64
		var key, status, lastError string
		var attempts int
		fatalIf(t, rows.Scan(&id, &key, &status, &attempts, &lastError))
		if other, twice := keyOf[id]; twice {
			problem("order %d is named by keys %s and %s", id, other, key)
		}
		keyOf[id], out.attempts[id] = key, attempts
		if attempts > 1 {
			resent++
		}
		if status != "sent" {
			problem("order %d: notification %s after %d attempts: %s", id, status, attempts, lastError)
		} else if len(out.accepted[id]) == 0 {
			problem("order %d: no message reached the gateway", id)
		}
	}
	fatalIf(t, rows.Close())
	accepted := 0
	for key, id := range load.keys {
		stored, ok := keyOf[id]
		switch {
		case id == 0:
			problem("key %s: never accepted (refused, or retried until the load gave up)", key)
		case !ok:
			problem("key %s was answered with order %d, which is not in the database", key, id)
		case stored != key:
			problem("key %s was answered with order %d, which the database has under key %q", key, id, stored)
		default:
			accepted++
		}
	}
	for id, key := range keyOf {
		if load.keys[key] != id {
			problem("order %d (key %q) was never answered to a client: a duplicate made by a retry?", id, key)
		}
	}
	for id, sends := range out.accepted {
		if _, ok := keyOf[id]; !ok {
			problem("the gateway accepted a message for order %d, which does not exist", id)
		}
		if len(sends) > 1 {
			out.duplicates += len(sends) - 1
			if inWindow == nil || !inWindow(id, sends) {
				problem("order %d: %d messages accepted, outside the crash window", id, len(sends))
			}
		}
	}
	if out.duplicates > maxConcurrentSends {
		problem("%d duplicate messages, more than the %d sends a worker has under way", out.duplicates, maxConcurrentSends)
	}
	_, p50, p99 := drillPercentiles(load.attempts, 0, time.Hour)
	t.Logf("%s: accepted=%d stored=%d delivered=%d duplicate_messages=%d (posts=%d retried=%d post_p50=%v post_p99=%v"+
		" notifications_attempted_more_than_once=%d gateway_requests=%d settled_in=%v)",
		name, accepted, len(keyOf), len(out.accepted), out.duplicates, len(load.attempts), len(load.attempts)-len(load.keys),
		p50, p99, resent, len(requests), settled)
	for i, p := range problems {
		if i == 20 {
			t.Errorf("... and %d more problems", len(problems)-i)
			break
		}
		t.Error(p)
	}
	return out
}

// TestDrillGatewayDown: in the middle of the load the SMS gateway fails for
// ten seconds, three ways in turn: it answers 503, it drops every connection,
// and it hangs (takes requests and never answers, so sends wait for the
// sender's timeout and fill the worker's slots). Orders are still accepted as
// fast as before (the gateway is never on the request's path), and once it
// recovers every notification is delivered, once.
func TestDrillGatewayDown(t *testing.T) {
	d := newDrill(t, testSchemaURL(t))
	svc := d.start("service")
	const outageFrom, outageTo = 5 * time.Second, 15 * time.Second
	load := d.load([]*drillService{svc}, 20*time.Second, 50*time.Second)
	failures := []http.HandlerFunc{atAnswer(http.StatusServiceUnavailable, "text/plain", "Service Unavailable"), atDrop, atHang}
	for i, reply := range failures {
		time.Sleep(time.Until(load.start.Add(outageFrom + time.Duration(i)*(outageTo-outageFrom)/time.Duration(len(failures)))))
		d.at.setReply(reply)
	}
	time.Sleep(time.Until(load.start.Add(outageTo)))
	d.at.setReply(nil)
	load.wg.Wait()

	nBefore, p50Before, p99Before := drillPercentiles(load.attempts, 0, outageFrom)
	nDuring, p50During, p99During := drillPercentiles(load.attempts, outageFrom, outageTo)
	t.Logf("GatewayDown: POST latency before the outage p50=%v p99=%v (n=%d), during p50=%v p99=%v (n=%d)",
		p50Before, p99Before, nBefore, p50During, p99During, nDuring)
	// Generous bounds, since the machine may be busy with other work: what
	// they guard against is a request path that waits on the gateway, which
	// the hanging phase would stretch to seconds (the sender's timeout is 15 s).
	if nBefore == 0 || nDuring == 0 {
		t.Errorf("answered POSTs before and during the outage: got %d and %d, want some of each", nBefore, nDuring)
	}
	if p50During > 2*p50Before+25*time.Millisecond || p99During > 3*p99Before+time.Second {
		t.Errorf("POST latency during the gateway outage: got p50 %v, p99 %v; want about the %v and %v before it", p50During, p99During, p50Before, p99Before)
	}
	// Retries follow the backoff (about 2 s doubling, with jitter) and hung
	// sends end at the sender's 15 s timeout, so all are due within a minute.
	d.verify("GatewayDown", load, 90*time.Second, nil)
}

// TestDrillKilled: a process is SIGKILLed in the middle of the load, while
// slow sends keep dozens under way, and is either started again a second
// later on the same port, or left dead beside a second replica on the same
// database. Clients retry with the same keys (on the other replica, if there
// is one), so no accepted order is lost and none is made twice. The rows the
// dead process had claimed fall due when their lease ends, and each must be
// sent within 10 s of the restart, or of the kill when another replica
// rescues it. The only duplicates allowed are the documented crash window: a
// message the gateway accepted from the dead process, which it never recorded
// as sent.
func TestDrillKilled(t *testing.T) {
	for _, tc := range []struct {
		name     string
		replicas int
		restart  bool
	}{
		{"Restarted", 1, true},
		{"ReplicaLeftDead", 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDrill(t, testSchemaURL(t))
			d.at.delay.Store(int64(250 * time.Millisecond))
			var replicas []*drillService
			for i := range tc.replicas {
				replicas = append(replicas, d.start(fmt.Sprint("replica-", i)))
			}
			dead := replicas[0]
			load := d.load(replicas, 15*time.Second, 45*time.Second)
			time.Sleep(time.Until(load.start.Add(6 * time.Second)))
			dead.kill()
			killed := time.Now()
			rescueFrom, since := killed, "kill"
			if tc.restart {
				time.Sleep(time.Second)
				rescueFrom, since = time.Now(), "restart"
				dead.start()
			}
			logged, err := os.ReadFile(dead.logPath(1))
			fatalIf(t, err)
			recorded := map[int64]bool{} // what the dead process recorded as sent
			for _, line := range logLines(t, string(logged), "msg", "notification sent") {
				id, _ := line["order_id"].(float64)
				recorded[int64(id)] = true
			}
			out := d.verify("Killed/"+tc.name, load, time.Minute, func(id int64, sends []atSend) bool {
				return len(sends) == 2 && sends[0].username == dead.name && sends[0].at.Before(killed) &&
					sends[1].at.After(killed) && !recorded[id]
			})

			// Every row claimed more than once was claimed by the dead
			// process (the gateway never fails here): it is rescued by the
			// first message after the kill.
			var rescues []time.Duration
			for id, attempts := range out.attempts {
				if attempts < 2 {
					continue
				}
				i := slices.IndexFunc(out.accepted[id], func(s atSend) bool { return s.at.After(killed) })
				if i < 0 {
					t.Errorf("order %d: claimed %d times, but no message after the kill", id, attempts)
					continue
				}
				rescues = append(rescues, out.accepted[id][i].at.Sub(rescueFrom))
			}
			if len(rescues) == 0 {
				t.Fatal("rows claimed twice: got none, want the dead process's; the kill found no send under way")
			}
			slices.Sort(rescues)
			worst := rescues[len(rescues)-1]
			t.Logf("Killed/%s: rows rescued=%d, sent after the %s within max=%v median=%v; duplicate_messages=%d",
				tc.name, len(rescues), since, worst.Round(time.Millisecond), rescues[len(rescues)/2].Round(time.Millisecond), out.duplicates)
			if worst >= 10*time.Second { // the contract's bound
				t.Errorf("the slowest rescued row: got %v after the %s, want under 10s", worst, since)
			}
		})
	}
}

// drillCluster is a PostgreSQL cluster of the drill's own, which it may stop
// and start.
type drillCluster struct {
	t        *testing.T
	dir, url string
	port     int
	as       []string // the command prefix that runs a program as the cluster's owner
}

func newDrillCluster(t *testing.T) *drillCluster {
	// Not t.TempDir: its parent is private to root, and the cluster runs as
	// postgres.
	dir, err := os.MkdirTemp("", "drill-pg-")
	fatalIf(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &drillCluster{t: t, dir: dir, port: freePort(t), as: []string{"env"}}
	c.url = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root.
		c.as = []string{"runuser", "-u", "postgres", "--"}
		if out, err := exec.Command("chown", "postgres", dir).CombinedOutput(); err != nil {
			t.Fatalf("running as root, the cluster needs the postgres user: %v %s", err, out)
		}
	}
	fatalIf(t, c.run("initdb", "-D", c.data(), "-U", "postgres", "--auth=trust", "--no-sync"))
	t.Cleanup(func() {
		// Immediate: a drill that failed may leave the cluster in any state,
		// and nothing in it is worth a clean shutdown.
		c.run("pg_ctl", "-D", c.data(), "-m", "immediate", "-w", "stop")
		if log, err := os.ReadFile(filepath.Join(dir, "postgres.log")); err == nil && t.Failed() {
			t.Logf("PostgreSQL log:\n%s", log)
		}
	})
	c.start()
	return c
}

func (c *drillCluster) data() string { return filepath.Join(c.dir, "data") }

func (c *drillCluster) start() {
	c.ctl("-l", filepath.Join(c.dir, "postgres.log"), "-t", "60",
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", c.port, c.dir), "start")
}

// run runs a PostgreSQL program as the cluster's owner, from PATH or the
// Debian layout.
func (c *drillCluster) run(prog string, args ...string) error {
	path, err := exec.LookPath(prog)
	if found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + prog); err != nil && len(found) > 0 {
		path = slices.Max(found)
	}
	if out, err := exec.Command(c.as[0], append(c.as[1:], append([]string{path}, args...)...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
	}
	return nil
}

// ctl runs pg_ctl on the cluster and waits for it to finish the job.
func (c *drillCluster) ctl(args ...string) {
	c.t.Helper()
	fatalIf(c.t, c.run("pg_ctl", append([]string{"-D", c.data(), "-w"}, args...)...))
}

// TestDrillPostgresRestarted: the drill's own PostgreSQL cluster is stopped
// (fast: sessions are terminated, as in a managed database's maintenance
// restart) in the middle of the load and started again three seconds later.
// While it is down /readyz says 503; afterwards the same process, never
// restarted, is ready again, every accepted order and its notification are
// there, and no message was sent twice: the process knew every outcome, so a
// resend here would be one the service could have avoided.
func TestDrillPostgresRestarted(t *testing.T) {
	cluster := newDrillCluster(t)
	d := newDrill(t, cluster.url)
	svc := d.start("service")
	load := d.load([]*drillService{svc}, 15*time.Second, 60*time.Second)
	time.Sleep(time.Until(load.start.Add(5 * time.Second)))
	cluster.ctl("-m", "fast", "stop")
	readyz := map[int]int{} // answers while the database is down
	for down := time.Now(); time.Since(down) < 3*time.Second; time.Sleep(100 * time.Millisecond) {
		readyz[drillReadyz(svc.url)]++
	}
	cluster.start()
	up := time.Now()
	eventually(t, 30*time.Second, "/readyz 200 after the database's restart", func() bool { return drillReadyz(svc.url) == http.StatusOK })
	t.Logf("PostgresRestarted: /readyz while the database was down: %v (status: count); 200 again %v after it was up",
		readyz, time.Since(up).Round(time.Millisecond))
	if len(readyz) != 1 || readyz[http.StatusServiceUnavailable] == 0 {
		t.Errorf("/readyz while the database was down: got %v (status: count), want 503 only", readyz)
	}
	d.verify("PostgresRestarted", load, time.Minute, nil)
	if !svc.alive() || svc.starts != 1 {
		t.Errorf("the service process: got alive %v after %d starts, want alive after 1", svc.alive(), svc.starts)
	}
}

// TestDrillTwoReplicas: two processes on one database, the load split across
// them. A short gateway outage in the middle makes hundreds of retries fall
// due at once, found by both workers' polls, so they contend for the same
// rows; still every notification is delivered exactly once.
func TestDrillTwoReplicas(t *testing.T) {
	d := newDrill(t, testSchemaURL(t))
	replicas := []*drillService{d.start("replica-a"), d.start("replica-b")}
	load := d.load(replicas, 15*time.Second, 45*time.Second)
	time.Sleep(time.Until(load.start.Add(5 * time.Second)))
	d.at.setReply(atAnswer(http.StatusServiceUnavailable, "text/plain", "Service Unavailable"))
	time.Sleep(time.Until(load.start.Add(8 * time.Second)))
	d.at.setReply(nil)
	out := d.verify("TwoReplicas", load, 90*time.Second, nil)
	sent := map[string]int{}
	for _, sends := range out.accepted {
		for _, s := range sends {
			sent[s.username]++
		}
	}
	t.Logf("TwoReplicas: messages sent by replica-a=%d replica-b=%d", sent["replica-a"], sent["replica-b"])
	if sent["replica-a"] == 0 || sent["replica-b"] == 0 {
		t.Errorf("messages sent per replica: got %v, want some from each", sent)
	}
}

// TestDrillMemory: the service's peak RSS (VmHWM) stays within the 256 MiB it
// is deployed with (fly.toml, the Helm chart, compose.prod.yaml) under the
// largest inputs it takes, each alone and several at once, measured on a
// fresh process per run once its answers are in and the notifications they
// queued are sent. It prints a table of the peaks for the README.
func TestDrillMemory(t *testing.T) {
	const budget = 256 << 20
	d := newDrill(t, testSchemaURL(t))
	idle := d.start("memory-idle") // which also applies the schema for the rows below
	table := []string{"| case | at once | peak RSS | answers |", "|---|---|---|---|",
		fmt.Sprintf("| idle, after start-up | 1 | %d MiB | |", drillPeakRSS(t, idle)>>20)}
	idle.stop()
	db := openDB(t, d.dbURL)
	// A first page of 100 customers, each with more orders than a customer
	// embeds, the first with 100,000.
	var heavy int64
	err := db.QueryRow(`
		WITH c AS (
			INSERT INTO customers (code, name, phone, created_by)
			SELECT 'HEAVY-' || g, 'Heavy Customer ' || g, '+2547' || lpad(g::text, 8, '0'), 'drill' FROM generate_series(1, 100) g
			RETURNING id, code
		), o AS ( -- run though not referenced, as every data-modifying CTE is
			INSERT INTO orders (customer_id, item, amount, currency, time, created_by)
			SELECT c.id, 'whole-exome-sequencing-' || g, 1250.00, 'KES', now() - g * interval '1 second', 'drill'
			FROM c, generate_series(1, CASE c.code WHEN 'HEAVY-1' THEN 100000 ELSE 2 * $1 END) g
		)
		SELECT id FROM c WHERE code = 'HEAVY-1'`, embeddedOrders).Scan(&heavy)
	fatalIf(t, err)

	rows := func(row func(i int) string) []byte {
		all := make([]string, maxImportRows)
		for i := range all {
			all[i] = row(i)
		}
		return []byte("[" + strings.Join(all, ",") + "]")
	}
	padded := func(head string, size int, pad byte, tail string) []byte {
		return []byte(head + strings.Repeat(string(pad), size-len(head)-len(tail)) + tail)
	}
	same := func(b []byte) func() []byte { return func() []byte { return b } }
	batch := 0
	customers := func() []byte { // with codes no other import used
		batch++
		return rows(func(i int) string {
			return fmt.Sprintf(`{"code":"M%d-%d","name":"Memory Drill %d","phone":"+2547%08d","email":"m%d@example.com"}`, batch, i, i, i, i)
		})
	}
	cases := []struct {
		name, method, path, contentType string
		body                            func() []byte // nil: none, and the answers are read slowly
		want                            int
		copies                          []int
	}{
		{"import of 10,000 valid customers", "POST", "/v1/customers/import", "application/json", customers, http.StatusCreated, []int{1, 4}},
		{"import of 10,000 valid orders (notified)", "POST", "/v1/orders/import", "application/json",
			same(rows(func(int) string {
				return `{"customer_code":"HEAVY-2","item":"whole-exome-sequencing","amount":"1250.00"}`
			})),
			http.StatusCreated, []int{1, 4}},
		{"import of a 32 MiB JSON array of {}", "POST", "/v1/customers/import", "application/json",
			same(padded("[", maxImportBody, ' ', strings.Repeat("{},", (maxImportBody-4)/3)+"{}]")), http.StatusRequestEntityTooLarge, []int{1, 4}},
		{"import of 10,000 rows of {}", "POST", "/v1/customers/import", "application/json",
			same(rows(func(int) string { return "{}" })), http.StatusUnprocessableEntity, []int{1, 4}},
		{"import of 32 MiB of CSV garbage (a quoted field never closed)", "POST", "/v1/customers/import", "text/csv",
			same(padded("code,name,phone,email\n\"", maxImportBody, 'x', "")), http.StatusBadRequest, []int{1, 4}},
		{"GET /v1/customers/{id} of 100,000 orders, slow readers", "GET", fmt.Sprint("/v1/customers/", heavy), "", nil, http.StatusOK, []int{4, 30}},
		{"GET /v1/customers?limit=100, slow readers", "GET", "/v1/customers?limit=100", "", nil, http.StatusOK, []int{4, 30, 250}},
		{"POST /v1/orders, 1 MiB bodies", "POST", "/v1/orders", "application/json",
			same(padded(`{"customer_code":"HEAVY-2","amount":"1.00","item":"`, maxBody, 'x', `"}`)), http.StatusUnprocessableEntity, []int{50, 250}},
	}
	for i, c := range cases {
		for _, n := range c.copies {
			svc := d.start(fmt.Sprintf("memory-%d-%d", i, n))
			client, bodies := drillSlowClient(), make([][]byte, n)
			if c.body != nil {
				client = &http.Client{Timeout: 2 * time.Minute}
				for k := range bodies {
					bodies[k] = c.body()
				}
			}
			var mu sync.Mutex
			answers := map[int]int{}
			var wg sync.WaitGroup
			for _, body := range bodies {
				wg.Go(func() {
					status, b := d.request(client, c.method, svc.url+c.path, c.contentType, "", body)
					mu.Lock()
					answers[status]++
					mu.Unlock()
					// Imports beyond maxImports at once, and large bodies
					// beyond largeBodies' slots, are refused with a 503.
					if status != c.want && (status != http.StatusServiceUnavailable || c.method != "POST") {
						t.Errorf("%s: got %d %.300s, want %d", c.name, status, b, c.want)
					}
					var p problem
					if status == http.StatusUnprocessableEntity && (json.Unmarshal(b, &p) != nil || len(p.Errors) == 0 || len(p.Errors) > 100) {
						t.Errorf("%s: got %d errors in the 422, want 1 to 100", c.name, len(p.Errors))
					}
				})
			}
			wg.Wait()
			if answers[c.want] == 0 {
				t.Errorf("%s, %d at once: no request answered %d", c.name, n, c.want)
			}
			eventually(t, 2*time.Minute, "the outbox drained", drillDrained(db))
			peak := drillPeakRSS(t, svc)
			svc.stop()
			table = append(table, fmt.Sprintf("| %s | %d | %d MiB | %v |", c.name, n, peak>>20, answers))
			if peak > budget {
				t.Errorf("%s, %d at once: peak RSS %d MiB, over the %d MiB budget by %d MiB", c.name, n, peak>>20, budget>>20, (peak-budget)>>20)
			}
		}
	}
	t.Logf("Memory: peak RSS of a fresh process per run (answers: status: count)\n%s", strings.Join(table, "\n"))
}

// drillSlowClient reads each answer 4 KiB at a time, every 5 ms, through a
// 4 KiB receive buffer, so that the service holds what it is writing for as
// long as the reader takes.
func drillSlowClient() *http.Client {
	dialer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10) })
	}}
	return &http.Client{Timeout: 2 * time.Minute, Transport: drillSlowReads{&http.Transport{DialContext: dialer.DialContext}}}
}

// drillSlowReads is a RoundTripper whose answers are read slowly.
type drillSlowReads struct{ http.RoundTripper }

func (s drillSlowReads) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := s.RoundTripper.RoundTrip(req)
	if err == nil {
		res.Body = drillSlowBody{res.Body}
	}
	return res, err
}

type drillSlowBody struct{ io.ReadCloser }

func (b drillSlowBody) Read(p []byte) (int, error) {
	time.Sleep(5 * time.Millisecond)
	return b.ReadCloser.Read(p[:min(len(p), 4<<10)])
}

// drillPeakRSS returns the peak resident set size (VmHWM) of the process, in
// bytes.
func drillPeakRSS(t *testing.T, s *drillService) int64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	fatalIf(t, err)
	for line := range strings.SplitSeq(string(status), "\n") {
		var kB int64
		if _, err := fmt.Sscanf(line, "VmHWM: %d kB", &kB); err == nil {
			return kB << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status:\n%s", s.cmd.Process.Pid, status)
	return 0
}
