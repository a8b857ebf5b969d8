package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// ---- helpers shared by notify_test.go, outbox_test.go and idempotency_test.go ----

// ntFuncSender is a Sender whose behaviour a test supplies, for the cases a
// recordingSender cannot express (watching ctx, blocking, distinct ids).
type ntFuncSender struct {
	fn func(ctx context.Context, m Message) (string, error)
}

func (s ntFuncSender) Send(ctx context.Context, m Message) (string, error) { return s.fn(ctx, m) }

// ntChannelsLike returns a registry with the same channels and addresses as
// cs, every sender replaced by the one senderFor gives, so that a second
// worker can serve the same outbox through senders of its own.
func ntChannelsLike(cs *channels, senderFor func(name string) Sender) *channels {
	out := newChannels()
	for name, ch := range cs.byName {
		out.register(name, senderFor(name), ch.address)
	}
	out.rules = cs.rules
	return out
}

// ntStartWorker runs w until the test ends, with the given drain.
func ntStartWorker(t testing.TB, w *worker, drain time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx, drain) }()
	t.Cleanup(func() { cancel(); <-done })
}

// ntFast makes ta's worker quick to notice rows and to retry, so that tests
// of retries take milliseconds rather than the production seconds.
func ntFast(ta *testApp) {
	ta.worker.poll = 20 * time.Millisecond
	ta.worker.backoff = func(int) time.Duration { return 10 * time.Millisecond }
}

// ntNotification is an outbox row as stored.
type ntNotification struct {
	channel, recipient, subject, message, status string
	attempts                                     int
	lastError, providerID                        sql.NullString
	sentAt, lockedUntil                          sql.NullTime
}

// ntRowFor reads the outbox row of an order; ok is false when it has none.
func ntRowFor(t testing.TB, db *sql.DB, orderID int64) (n ntNotification, ok bool) {
	t.Helper()
	err := db.QueryRow(`
		SELECT channel, recipient, subject, message, status, attempts, last_error, provider_message_id, sent_at, locked_until
		FROM notifications WHERE order_id = $1`, orderID).
		Scan(&n.channel, &n.recipient, &n.subject, &n.message, &n.status, &n.attempts, &n.lastError, &n.providerID, &n.sentAt, &n.lockedUntil)
	if err == sql.ErrNoRows {
		return n, false
	}
	if err != nil {
		t.Fatalf("reading the notification of order %d: %v", orderID, err)
	}
	return n, true
}

// ntMustRow is ntRowFor for an order that must have a row.
func ntMustRow(t testing.TB, db *sql.DB, orderID int64) ntNotification {
	t.Helper()
	n, ok := ntRowFor(t, db, orderID)
	if !ok {
		t.Fatalf("order %d: got no notification row, want one", orderID)
	}
	return n
}

// ntCountWhere counts notifications matching a SQL condition.
func ntCountWhere(t testing.TB, db *sql.DB, cond string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM notifications WHERE `+cond, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// ntPlace places an order through the API and returns the 201's body.
func ntPlace(t testing.TB, ta *testApp, body map[string]any) order {
	t.Helper()
	var o order
	ta.do("POST", "/v1/orders", body).must(t, http.StatusCreated).json(t, &o)
	return o
}

// ntGetOrder reads an order through the API.
func ntGetOrder(t testing.TB, ta *testApp, id int64) order {
	t.Helper()
	var o order
	ta.do("GET", "/v1/orders/"+strconv.FormatInt(id, 10), nil).must(t, http.StatusOK).json(t, &o)
	return o
}

// ntImport imports n orders for the customer with code through the JSON
// import and returns their ids; notify false adds ?notify=false.
func ntImport(t testing.TB, ta *testApp, code string, n int, notify bool) []int64 {
	t.Helper()
	rows := make([]map[string]any, n)
	for i := range rows {
		rows[i] = map[string]any{"customer_code": code, "item": fmt.Sprintf("kit-%d", i), "amount": "10.00"}
	}
	path := "/v1/orders/import"
	if !notify {
		path += "?notify=false"
	}
	var res struct {
		Imported int     `json:"imported"`
		IDs      []int64 `json:"ids"`
	}
	ta.do("POST", path, rows).must(t, http.StatusCreated).json(t, &res)
	if res.Imported != n || len(res.IDs) != n {
		t.Fatalf("import: got %d imported, %d ids, want %d", res.Imported, len(res.IDs), n)
	}
	return res.IDs
}

// ntSeen returns how many times s was asked to send order id's message,
// failed attempts included.
func ntSeen(s *recordingSender, id int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[id]
}

// ntPerOrder counts successful sends per order across senders.
func ntPerOrder(senders ...*recordingSender) map[int64]int {
	n := map[int64]int{}
	for _, s := range senders {
		for _, m := range s.messages() {
			n[m.OrderID]++
		}
	}
	return n
}

// ntLogLines decodes the app's JSON log lines.
func ntLogLines(t testing.TB, ta *testApp) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(ta.logs.String(), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

// ntATRequest is one send the Africa's Talking fake received.
type ntATRequest struct {
	at                                  time.Time
	username, to, message, apiKey, from string
}

// ntATFake is an Africa's Talking bulk messaging endpoint that checks the
// wire format and records what it was sent; reply, if set, answers instead
// of the usual 201 with statusCode 101.
type ntATFake struct {
	t       testing.TB
	srv     *httptest.Server
	apiKey  string
	reply   func(w http.ResponseWriter, r *http.Request)
	arrived chan struct{}

	mu   sync.Mutex
	reqs []ntATRequest
}

func ntNewATFake(t testing.TB, apiKey string, reply func(w http.ResponseWriter, r *http.Request)) *ntATFake {
	t.Helper()
	f := &ntATFake{t: t, apiKey: apiKey, reply: reply, arrived: make(chan struct{}, 1000)}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *ntATFake) serve(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	if r.Method != http.MethodPost || r.URL.Path != "/version1/messaging" {
		f.t.Errorf("Africa's Talking request: got %s %s, want POST /version1/messaging", r.Method, r.URL.Path)
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" {
		f.t.Errorf("Content-Type: got %q, want application/x-www-form-urlencoded", ct)
	}
	if err := r.ParseForm(); err != nil {
		f.t.Errorf("form: %v", err)
	}
	req := ntATRequest{at: at, username: r.PostForm.Get("username"), to: r.PostForm.Get("to"),
		message: r.PostForm.Get("message"), apiKey: r.Header.Get("apiKey"), from: r.PostForm.Get("from")}
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	f.mu.Unlock()
	f.arrived <- struct{}{}
	if req.apiKey != f.apiKey {
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, "The supplied authentication is invalid")
		return
	}
	if f.reply != nil {
		f.reply(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"SMSMessageData":{"Message":"Sent to 1/1 Total Cost: KES 0.8000","Recipients":[`+
		`{"statusCode":101,"number":%q,"status":"Success","cost":"KES 0.8000","messageId":"ATXid_%d"}]}}`,
		req.to, len(f.requests()))
}

func (f *ntATFake) requests() []ntATRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ntATRequest(nil), f.reqs...)
}

// ntParseMail returns a received message's decoded Subject and body.
func ntParseMail(t testing.TB, data string) (subject, body string) {
	t.Helper()
	msg, err := mail.ReadMessage(strings.NewReader(data))
	if err != nil {
		t.Fatalf("received mail does not parse: %v\n%s", err, data)
	}
	subject, err = new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
	if err != nil {
		t.Fatalf("Subject %q: %v", msg.Header.Get("Subject"), err)
	}
	b, err := io.ReadAll(quotedprintable.NewReader(msg.Body))
	if err != nil {
		t.Fatalf("body: %v", err)
	}
	return subject, string(b)
}

// ---- rules ----

// ntTestChannels is a registry with sms and email, as production wires it.
func ntTestChannels() *channels {
	cs := newChannels()
	cs.register("sms", &recordingSender{}, func(c customer) string { return c.Phone })
	cs.register("email", &recordingSender{}, func(c customer) string {
		if c.Email == nil {
			return ""
		}
		return *c.Email
	})
	return cs
}

func TestNotifyRules(t *testing.T) {
	tests := []struct {
		name    string
		spec    string
		wantErr []string          // substrings of the error; nil means success
		choose  map[string]string // item -> channel, when the spec parses
	}{
		{name: "default", spec: "*=sms", choose: map[string]string{"kit": "sms", "": "sms", "lab-panel": "sms"}},
		{name: "prefix glob then catch-all", spec: "sequencing-*=email,*=sms", choose: map[string]string{
			"sequencing-wgs": "email", "sequencing-": "email", "sequencing": "sms", "pre-sequencing-wgs": "sms", "kit": "sms",
		}},
		{name: "suffix and infix globs", spec: "*-panel=email,lab*kit=none,*=sms", choose: map[string]string{
			"cardio-panel": "email", "panel": "sms", "lab-dna-kit": "none", "labkit": "none", "lab-kit-2": "sms",
		}},
		{name: "spaces around pairs and names", spec: "  lab-* = email ,  * =  sms  ", choose: map[string]string{"lab-x": "email", "x": "sms"}},
		{name: "empty pairs are skipped", spec: ",,lab-*=email,,*=sms,", choose: map[string]string{"lab-x": "email", "x": "sms"}},
		{name: "first match wins over a later exact rule", spec: "*=none,kit=email", choose: map[string]string{"kit": "none", "other": "none"}},
		{name: "first of two exact rules wins", spec: "kit=email,kit=sms,*=sms", choose: map[string]string{"kit": "email"}},
		{name: "matching is case-sensitive", spec: "Kit=email,*=sms", choose: map[string]string{"Kit": "email", "kit": "sms"}},
		{name: "an item no rule matches is not notified", spec: "lab-*=email", choose: map[string]string{"lab-x": "email", "kit": "none"}},
		{name: "unknown channel", spec: "lab-*=email,*=fax", wantErr: []string{"NOTIFY_RULES", `"fax"`, "sms", "email", "none"}},
		{name: "empty channel", spec: "*=", wantErr: []string{"NOTIFY_RULES", `""`}},
		{name: "missing equals", spec: "sms", wantErr: []string{"NOTIFY_RULES", `"sms"`, "item=channel"}},
		{name: "empty pattern", spec: "=sms", wantErr: []string{"NOTIFY_RULES", `"=sms"`, "item=channel"}},
		{name: "two equals", spec: "a=b=c", wantErr: []string{"NOTIFY_RULES", `"b=c"`}},
		{name: "good pair then malformed one", spec: "*=sms,oops", wantErr: []string{"NOTIFY_RULES", `"oops"`}},
		{name: "empty", spec: "", wantErr: []string{"NOTIFY_RULES", "no rules"}},
		{name: "only separators", spec: " , ,", wantErr: []string{"NOTIFY_RULES", "no rules"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := ntTestChannels()
			err := cs.setRules(tt.spec)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("setRules(%q): got nil error, want one containing %q", tt.spec, tt.wantErr)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("setRules(%q): got error %q, want it to contain %q", tt.spec, err, s)
					}
				}
				// A bad spec must not half-replace the rules in force.
				if got := cs.choose("anything"); got != "sms" {
					t.Errorf("after a failed setRules, choose: got %q, want the default %q", got, "sms")
				}
				return
			}
			if err != nil {
				t.Fatalf("setRules(%q): got error %v, want nil", tt.spec, err)
			}
			for item, want := range tt.choose {
				if got := cs.choose(item); got != want {
					t.Errorf("choose(%q) under %q: got %q, want %q", item, tt.spec, got, want)
				}
			}
		})
	}

	t.Run("glob", func(t *testing.T) {
		for _, tt := range []struct {
			pattern, s string
			want       bool
		}{
			{"*", "", true},
			{"*", "anything at all", true},
			{"kit", "kit", true},
			{"kit", "kit2", false},
			{"kit", "Kit", false},
			{"", "", true},
			{"", "x", false},
			{"sequencing-*", "sequencing-wgs", true},
			{"sequencing-*", "sequencing-", true},
			{"sequencing-*", "sequencing", false},
			{"sequencing-*", "xsequencing-wgs", false},
			{"*-panel", "cardio-panel", true},
			{"*-panel", "cardio-panel-2", false},
			{"lab*kit", "lab-dna-kit", true},
			{"lab*kit", "labkit", true},
			{"lab*kit", "lab-kit-x", false},
			{"a*b*c", "aXXbYYc", true},
			{"a*b*c", "abc", true},
			{"a*b*c", "acb", false},
			{"**", "x", true},
			{"*b", "bbb", true},
			{"ü*", "über-panel", true},
			{"*ß", "straß", true},
			{"?", "x", false}, // only '*' is special
		} {
			if got := glob(tt.pattern, tt.s); got != tt.want {
				t.Errorf("glob(%q, %q): got %v, want %v", tt.pattern, tt.s, got, tt.want)
			}
		}
	})
}

func TestNotifyOutboxRow(t *testing.T) {
	withEmail := customer{ID: 1, Code: "C-MAIL", Name: "Amina Njoroge", Phone: "+254712345678", Email: ptr("amina@example.com")}
	noEmail := customer{ID: 2, Code: "C-NOMAIL", Name: "Baraka Otieno", Phone: "+254722000111"}
	tests := []struct {
		name        string
		rules       string
		override    string // the order's channel field; "" when absent
		c           customer
		wantChannel string // "" means no row
		wantTo      string
		wantProblem []string
	}{
		{name: "rules pick sms", rules: "*=sms", c: withEmail, wantChannel: "sms", wantTo: withEmail.Phone},
		{name: "rules pick email", rules: "*=email", c: withEmail, wantChannel: "email", wantTo: "amina@example.com"},
		{name: "sms override beats an email rule", rules: "*=email", override: "sms", c: withEmail, wantChannel: "sms", wantTo: withEmail.Phone},
		{name: "email override beats an sms rule", rules: "*=sms", override: "email", c: withEmail, wantChannel: "email", wantTo: "amina@example.com"},
		{name: "sms override beats a none rule", rules: "*=none", override: "sms", c: noEmail, wantChannel: "sms", wantTo: noEmail.Phone},
		{name: "email override without an address is a problem", rules: "*=sms", override: "email", c: noEmail,
			wantProblem: []string{"C-NOMAIL", "email"}},
		{name: "email rule without an address falls back to sms", rules: "*=email", c: noEmail, wantChannel: "sms", wantTo: noEmail.Phone},
		{name: "none override sends nothing", rules: "*=sms", override: "none", c: withEmail},
		{name: "none rule sends nothing", rules: "*=none", c: withEmail},
		{name: "no rule matching sends nothing", rules: "lab-*=email", c: withEmail},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := ntTestChannels()
			if err := cs.setRules(tt.rules); err != nil {
				t.Fatal(err)
			}
			d := orderDraft{CustomerID: tt.c.ID, Item: "whole-exome-sequencing", Amount: 125000, Currency: "KES", Channel: tt.override}
			o := order{ID: 4242, CustomerID: tt.c.ID, Item: d.Item, Amount: d.Amount, Currency: d.Currency}
			row, problem := cs.outboxRow(d, o, tt.c)
			if tt.wantProblem != nil {
				if row != nil {
					t.Errorf("row: got %+v, want nil with a problem", *row)
				}
				if problem == "" {
					t.Fatalf("problem: got none, want one naming %q", tt.wantProblem)
				}
				for _, s := range tt.wantProblem {
					if !strings.Contains(problem, s) {
						t.Errorf("problem: got %q, want it to contain %q", problem, s)
					}
				}
				return
			}
			if problem != "" {
				t.Fatalf("problem: got %q, want none", problem)
			}
			if tt.wantChannel == "" {
				if row != nil {
					t.Fatalf("row: got %+v, want nil", *row)
				}
				return
			}
			if row == nil {
				t.Fatalf("row: got nil, want one on %s", tt.wantChannel)
			}
			if row.channel != tt.wantChannel || row.recipient != tt.wantTo {
				t.Errorf("row: got channel %q to %q, want %q to %q", row.channel, row.recipient, tt.wantChannel, tt.wantTo)
			}
			if !strings.Contains(row.subject, "4242") {
				t.Errorf("subject: got %q, want it to name order 4242", row.subject)
			}
			if want := orderMessage(tt.c, o); row.message != want {
				t.Errorf("message: got %q, want %q", row.message, want)
			}
		})
	}
}

// ntItemOf returns the item as an order message renders it.
func ntItemOf(msg string) string {
	_, rest, _ := strings.Cut(msg, " for ")
	i := strings.LastIndex(rest, " (")
	if i < 0 {
		return ""
	}
	return rest[:i]
}

func TestNotifyOrderMessage(t *testing.T) {
	longItem := strings.Repeat("comprehensive-genomic-profile-", 6) // 180 characters
	tests := []struct {
		name      string
		custName  string
		o         order
		wantExact string // when set, the whole message
		wantLimit int    // the segment the message must fit, when it can
		wantName  string // the first name as it must appear
		wantCut   bool   // the item must come out shortened with "..."
	}{
		{
			name: "short order unchanged", custName: "Amina Njoroge",
			o:         order{ID: 12, Item: "whole-exome-sequencing", Amount: 125000, Currency: "KES"},
			wantExact: "Hi Amina, your order #12 for whole-exome-sequencing (KES 1250.00) has been placed. Thank you!",
			wantLimit: gsmSegment, wantName: "Amina",
		},
		{
			name: "first name only, surrounding space ignored", custName: "  Baraka  Otieno Odhiambo ",
			o:         order{ID: 7, Item: "kit", Amount: 5, Currency: "USD"},
			wantExact: "Hi Baraka, your order #7 for kit (USD 0.05) has been placed. Thank you!",
			wantLimit: gsmSegment, wantName: "Baraka",
		},
		{
			name: "long item shortened to fit 160", custName: "Amina Njoroge",
			o:         order{ID: 123456789, Item: longItem, Amount: maxMoney, Currency: "KES"},
			wantLimit: gsmSegment, wantName: "Amina", wantCut: true,
		},
		{
			name: "long item of two-septet characters fits 160 septets", custName: "Amina Njoroge",
			o:         order{ID: 99, Item: strings.Repeat("[a]{b}", 30), Amount: 100, Currency: "KES"},
			wantLimit: gsmSegment, wantName: "Amina", wantCut: true,
		},
		{
			name: "euro sign stays GSM-7", custName: "Amina Njoroge",
			o:         order{ID: 5, Item: "panel €", Amount: 100, Currency: "EUR"},
			wantExact: "Hi Amina, your order #5 for panel € (EUR 1.00) has been placed. Thank you!",
			wantLimit: gsmSegment, wantName: "Amina",
		},
		{
			name: "very long first name shortened after the item", custName: strings.Repeat("Bartholomew", 12) + " Kamau",
			o:         order{ID: 8, Item: "kit", Amount: 100, Currency: "KES"},
			wantLimit: gsmSegment, wantName: "Bartholom...",
		},
		{
			name: "UCS-2 name with a short order fits 70 unchanged", custName: "Zoë Wanjiru",
			o:         order{ID: 7, Item: "kit", Amount: 500, Currency: "KES"},
			wantExact: "Hi Zoë, your order #7 for kit (KES 5.00) has been placed. Thank you!",
			wantLimit: ucs2Segment, wantName: "Zoë",
		},
		{
			// The fixed text and a 9-character item already exceed 70, so
			// the most the rules can do is cut the item to its floor.
			name: "UCS-2 name with a long item is cut as far as allowed", custName: "Wanjirũ Kamau",
			o:         order{ID: 42, Item: "whole-exome-sequencing-premium", Amount: 125000, Currency: "KES"},
			wantLimit: ucs2Segment, wantName: "Wanjirũ", wantCut: true,
		},
		{
			name: "UCS-2 item", custName: "Amina Njoroge",
			o:         order{ID: 3, Item: "ゲノム解析", Amount: 100, Currency: "JPY"},
			wantExact: "Hi Amina, your order #3 for ゲノム解析 (JPY 1.00) has been placed. Thank you!",
			wantLimit: ucs2Segment, wantName: "Amina",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := customer{Name: tt.custName}
			msg := orderMessage(c, tt.o)
			if tt.wantExact != "" && msg != tt.wantExact {
				t.Errorf("message: got %q, want %q", msg, tt.wantExact)
			}
			for _, part := range []string{
				"Hi " + tt.wantName + ",",
				"#" + strconv.FormatInt(tt.o.ID, 10) + " ",
				"(" + tt.o.Currency + " " + tt.o.Amount.String() + ")",
			} {
				if !strings.Contains(msg, part) {
					t.Errorf("message %q: want it to contain %q", msg, part)
				}
			}
			if got := segmentFor(msg); got != tt.wantLimit {
				t.Errorf("segment: got %d, want %d for %q", got, tt.wantLimit, msg)
			}
			item := ntItemOf(msg)
			if tt.wantCut {
				if !strings.HasSuffix(item, "...") {
					t.Errorf("item: got %q, want it shortened with \"...\"", item)
				}
				if !strings.HasPrefix(tt.o.Item, strings.TrimSuffix(item, "...")) {
					t.Errorf("item: got %q, want a prefix of %q", item, tt.o.Item)
				}
			} else if item != tt.o.Item {
				t.Errorf("item: got %q, want %q unchanged", item, tt.o.Item)
			}
			// Fitting the segment is required whenever cutting could achieve
			// it: the only excuse is an item already at its 9-character floor
			// (or not long enough to cut) and a name of at most 12.
			if n := smsLength(msg); n > tt.wantLimit {
				name, _, _ := strings.Cut(strings.TrimPrefix(msg, "Hi "), ",")
				itemFloor := utf8.RuneCountInString(item) <= 9 || (!tt.wantCut && utf8.RuneCountInString(item) <= 12)
				if !itemFloor || utf8.RuneCountInString(name) > 12 {
					t.Errorf("length: got %d, want at most %d (item %q, name %q could be cut further): %q", n, tt.wantLimit, item, name, msg)
				}
			}
		})
	}
}

// ---- through the API ----

func TestNotifyEndToEndSMS(t *testing.T) {
	const apiKey = "atsk_nt_e2e_key"
	fake := ntNewATFake(t, apiKey, nil)
	ta := newTestApp(t, map[string]string{
		"KEEP_SENDERS": "1",
		"AT_USERNAME":  "acme-lab",
		"AT_API_KEY":   apiKey,
		"AT_BASE_URL":  fake.srv.URL,
	})
	ta.startWorker()
	c := ta.createCustomer("CUST-SMS", "+254712345678", nil)

	start := time.Now()
	o := ntPlace(t, ta, map[string]any{"customer_id": c.ID, "item": "whole-exome-sequencing", "amount": "1250.00"})
	got201 := time.Now()
	if o.Notification == nil || o.Notification.Channel != "sms" || o.Notification.Status != "pending" {
		t.Fatalf("201 notification: got %+v, want sms pending", o.Notification)
	}
	select {
	case <-fake.arrived:
	case <-time.After(time.Until(got201.Add(time.Second))):
		t.Fatalf("SMS: none within 1s of the 201 (the request took %v)", got201.Sub(start))
	}
	reqs := fake.requests()
	t.Logf("SMS reached the gateway %v after the request began, %v after the 201", reqs[0].at.Sub(start), reqs[0].at.Sub(got201))

	var n ntNotification
	eventually(t, 5*time.Second, "notification recorded as sent", func() bool {
		n = ntMustRow(t, ta.store.db, o.ID)
		return n.status != "pending"
	})
	// Nothing more may arrive once the row is settled.
	time.Sleep(200 * time.Millisecond)
	reqs = fake.requests()
	if len(reqs) != 1 {
		t.Fatalf("SMS requests: got %d, want exactly 1: %+v", len(reqs), reqs)
	}
	r := reqs[0]
	if r.to != c.Phone || r.username != "acme-lab" || r.apiKey != apiKey {
		t.Errorf("request: got to %q username %q apiKey %q, want %q, %q, %q", r.to, r.username, r.apiKey, c.Phone, "acme-lab", apiKey)
	}
	if want := orderMessage(c, o); r.message != want {
		t.Errorf("message: got %q, want %q", r.message, want)
	}

	got := ntGetOrder(t, ta, o.ID).Notification
	if got == nil {
		t.Fatal("GET notification: got null, want the delivery state")
	}
	if got.Status != "sent" || got.Attempts != 1 || got.SentAt == nil || got.LastError != nil || got.Channel != "sms" {
		t.Errorf("GET notification: got %+v, want sms sent, attempts 1, sent_at set, no last_error", *got)
	}
	if got.SentAt != nil && (got.SentAt.Before(start.Add(-time.Second)) || got.SentAt.After(time.Now().Add(time.Second))) {
		t.Errorf("sent_at: got %v, want between %v and now", got.SentAt, start)
	}
	if !n.providerID.Valid || n.providerID.String != "ATXid_1" {
		t.Errorf("provider_message_id: got %v, want %q", n.providerID, "ATXid_1")
	}
}

func TestNotifyEndToEndEmail(t *testing.T) {
	relay := &smtpServer{} // mail_test.go
	relay.start(t)
	ta := newTestApp(t, map[string]string{
		"KEEP_SENDERS": "1",
		"SMTP_URL":     relay.url("smtp", nil),
		"MAIL_FROM":    "orders@lab.example",
		"NOTIFY_RULES": "*=email",
	})
	ta.worker.poll = 20 * time.Millisecond
	ta.startWorker()

	t.Run("rule sends e-mail with the order id in the subject", func(t *testing.T) {
		c := ta.createCustomer("CUST-MAIL", "+254712345678", ptr("amina@example.com"))
		o := ntPlace(t, ta, map[string]any{"customer_id": c.ID, "item": "whole-exome-sequencing", "amount": "1250.00"})
		if o.Notification == nil || o.Notification.Channel != "email" {
			t.Fatalf("201 notification: got %+v, want email", o.Notification)
		}
		eventually(t, 5*time.Second, "e-mail recorded as sent", func() bool {
			return ntMustRow(t, ta.store.db, o.ID).status == "sent"
		})
		msgs := relay.received()
		if len(msgs) != 1 {
			t.Fatalf("e-mails: got %d, want 1", len(msgs))
		}
		m := msgs[0]
		if m.from != "orders@lab.example" || len(m.to) != 1 || m.to[0] != "amina@example.com" {
			t.Errorf("envelope: got from %q to %q, want orders@lab.example to [amina@example.com]", m.from, m.to)
		}
		subject, body := ntParseMail(t, m.data)
		if id := "#" + strconv.FormatInt(o.ID, 10); !strings.Contains(subject, id) {
			t.Errorf("Subject: got %q, want it to contain %q", subject, id)
		}
		if want := orderMessage(c, o); strings.TrimRight(body, "\r\n") != want {
			t.Errorf("body: got %q, want %q", body, want)
		}
		n := ntMustRow(t, ta.store.db, o.ID)
		if !n.providerID.Valid || !strings.HasPrefix(n.providerID.String, "<") {
			t.Errorf("provider_message_id: got %v, want the Message-ID", n.providerID)
		}
	})

	t.Run("email channel for a customer without e-mail is 422 and stores nothing", func(t *testing.T) {
		c := ta.createCustomer("CUST-NOMAIL", "+254712345679", nil)
		orders, notes := ta.count("orders"), ta.count("notifications")
		res := ta.do("POST", "/v1/orders", map[string]any{"customer_id": c.ID, "item": "kit", "amount": "10.00", "channel": "email"})
		res.must(t, http.StatusUnprocessableEntity)
		p := res.problem(t)
		if len(p.Errors) != 1 || p.Errors[0].Pointer != "#/channel" {
			t.Errorf("errors: got %+v, want one at #/channel", p.Errors)
		}
		if got := ta.count("orders"); got != orders {
			t.Errorf("orders: got %d, want %d (none stored)", got, orders)
		}
		if got := ta.count("notifications"); got != notes {
			t.Errorf("notifications: got %d, want %d", got, notes)
		}
	})

	t.Run("email rule for a customer without e-mail falls back to sms", func(t *testing.T) {
		c := ta.createCustomer("CUST-NOMAIL2", "+254712345670", nil)
		o := ntPlace(t, ta, map[string]any{"customer_id": c.ID, "item": "kit", "amount": "10.00"})
		if o.Notification == nil || o.Notification.Channel != "sms" {
			t.Fatalf("notification: got %+v, want sms", o.Notification)
		}
		if n := ntMustRow(t, ta.store.db, o.ID); n.recipient != c.Phone {
			t.Errorf("recipient: got %q, want %q", n.recipient, c.Phone)
		}
	})
}

func TestNotifyRulesAndOverrides(t *testing.T) {
	ta := newTestApp(t, map[string]string{"NOTIFY_RULES": "lab-*=email,*=sms"})
	ntFast(ta)
	ta.startWorker()
	sms, email := ta.senders["sms"], ta.senders["email"]
	mailer := ta.createCustomer("CUST-A", "+254712345678", ptr("amina@example.com"))
	plain := ta.createCustomer("CUST-B", "+254712345679", nil)

	delivered := func(t *testing.T, s *recordingSender, id int64, to string) {
		t.Helper()
		eventually(t, 5*time.Second, fmt.Sprintf("order %d delivered", id), func() bool {
			return ntMustRow(t, ta.store.db, id).status == "sent"
		})
		var got []Message
		for _, m := range s.messages() {
			if m.OrderID == id {
				got = append(got, m)
			}
		}
		if len(got) != 1 || got[0].To != to {
			t.Errorf("order %d: got %+v, want one message to %s", id, got, to)
		}
	}

	for _, tt := range []struct {
		name     string
		c        customer
		item     string
		channel  string
		want     string // channel in the answer
		wantTo   string
		wantSent *recordingSender
	}{
		{"lab item by email", mailer, "lab-panel", "", "email", "amina@example.com", email},
		{"lab item without e-mail falls back to sms", plain, "lab-panel", "", "sms", plain.Phone, sms},
		{"other item by sms", mailer, "kit", "", "sms", mailer.Phone, sms},
		{"sms override beats the lab rule", mailer, "lab-panel", "sms", "sms", mailer.Phone, sms},
		{"email override beats the catch-all", mailer, "kit", "email", "email", "amina@example.com", email},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := map[string]any{"customer_id": tt.c.ID, "item": tt.item, "amount": "10.00"}
			if tt.channel != "" {
				body["channel"] = tt.channel
			}
			o := ntPlace(t, ta, body)
			if o.Notification == nil || o.Notification.Channel != tt.want {
				t.Fatalf("notification: got %+v, want channel %s", o.Notification, tt.want)
			}
			delivered(t, tt.wantSent, o.ID, tt.wantTo)
		})
	}

	t.Run("channel none", func(t *testing.T) {
		o := ntPlace(t, ta, map[string]any{"customer_id": mailer.ID, "item": "lab-panel", "amount": "10.00", "channel": "none"})
		if o.Notification != nil {
			t.Errorf("201 notification: got %+v, want null", *o.Notification)
		}
		if got := ntGetOrder(t, ta, o.ID).Notification; got != nil {
			t.Errorf("GET notification: got %+v, want null", *got)
		}
		if _, ok := ntRowFor(t, ta.store.db, o.ID); ok {
			t.Errorf("outbox: got a row for order %d, want none", o.ID)
		}
		// A later order's delivery shows the worker had its chance.
		later := ntPlace(t, ta, map[string]any{"customer_id": mailer.ID, "item": "kit", "amount": "10.00"})
		delivered(t, sms, later.ID, mailer.Phone)
		if n := ntPerOrder(sms, email)[o.ID]; n != 0 {
			t.Errorf("order %d: got %d messages, want 0", o.ID, n)
		}
	})

	t.Run("import with notify=false queues nothing", func(t *testing.T) {
		before := ta.count("notifications")
		ids := ntImport(t, ta, "CUST-A", 3, false)
		if got := ta.count("notifications"); got != before {
			t.Errorf("notifications: got %d, want %d", got, before)
		}
		for _, id := range ids {
			if n := ntGetOrder(t, ta, id).Notification; n != nil {
				t.Errorf("order %d notification: got %+v, want null", id, *n)
			}
		}
		later := ntPlace(t, ta, map[string]any{"customer_id": mailer.ID, "item": "kit", "amount": "10.00"})
		delivered(t, sms, later.ID, mailer.Phone)
		counts := ntPerOrder(sms, email)
		for _, id := range ids {
			if counts[id] != 0 {
				t.Errorf("order %d: got %d messages, want 0", id, counts[id])
			}
		}
	})

	t.Run("import notifies each order once", func(t *testing.T) {
		before := ta.count("notifications")
		csv := "customer_code,item,amount\nCUST-A,lab-panel,10.00\nCUST-A,kit,11.00\nCUST-B,lab-panel,12.00\nCUST-B,kit,13.00\n"
		var res struct {
			IDs []int64 `json:"ids"`
		}
		ta.request("POST", "/v1/orders/import", csv, "text/csv", map[string]string{"Authorization": "Bearer " + ta.token}).
			must(t, http.StatusCreated).json(t, &res)
		if len(res.IDs) != 4 {
			t.Fatalf("imported ids: got %v, want 4", res.IDs)
		}
		if got := ta.count("notifications"); got != before+4 {
			t.Errorf("notifications: got %d, want %d", got, before+4)
		}
		wantTo := []string{"amina@example.com", mailer.Phone, plain.Phone, plain.Phone}
		wantBy := []*recordingSender{email, sms, sms, sms}
		for i, id := range res.IDs {
			delivered(t, wantBy[i], id, wantTo[i])
		}
		counts := ntPerOrder(sms, email)
		for _, id := range res.IDs {
			if counts[id] != 1 {
				t.Errorf("order %d: got %d messages, want 1", id, counts[id])
			}
		}
	})
}

func TestNotifyLogSender(t *testing.T) {
	ta := newTestApp(t, map[string]string{"KEEP_SENDERS": "1"})
	ta.worker.poll = 20 * time.Millisecond

	var warned []string
	for _, rec := range ntLogLines(t, ta) {
		if rec["level"] == "WARN" {
			warned = append(warned, fmt.Sprint(rec["msg"]))
		}
	}
	for _, want := range [][]string{{"AT_USERNAME", "SMS", "log"}, {"SMTP_URL", "e-mail", "log"}} {
		found := false
		for _, w := range warned {
			if strings.Contains(w, want[0]) && strings.Contains(w, want[1]) && strings.Contains(w, want[2]) {
				found = true
			}
		}
		if !found {
			t.Errorf("startup warnings: got %q, want one naming %s and the %s channel", warned, want[0], want[1])
		}
	}

	ta.startWorker()
	c := ta.createCustomer("CUST-LOG", "+254712345678", ptr("amina@example.com"))
	for _, ch := range []string{"sms", "email"} {
		t.Run(ch, func(t *testing.T) {
			o := ntPlace(t, ta, map[string]any{"customer_id": c.ID, "item": "kit-" + ch, "amount": "10.00", "channel": ch})
			eventually(t, 5*time.Second, "notification marked sent", func() bool {
				return ntMustRow(t, ta.store.db, o.ID).status == "sent"
			})
			n := ntMustRow(t, ta.store.db, o.ID)
			if want := "log-" + strconv.FormatInt(o.ID, 10); n.providerID.String != want {
				t.Errorf("provider_message_id: got %q, want %q", n.providerID.String, want)
			}
			if v := ntGetOrder(t, ta, o.ID).Notification; v == nil || v.Status != "sent" || v.Attempts != 1 {
				t.Errorf("GET notification: got %+v, want sent after 1 attempt", v)
			}
			var logged map[string]any
			for _, rec := range ntLogLines(t, ta) {
				if id, _ := rec["order_id"].(float64); int64(id) == o.ID && rec["body"] != nil {
					logged = rec
				}
			}
			if logged == nil {
				t.Fatalf("log: got no line carrying order %d's message, want one; log:\n%s", o.ID, ta.logs.String())
			}
			if logged["channel"] != ch || logged["to"] != n.recipient || logged["body"] != n.message {
				t.Errorf("log line: got channel %v to %v body %v, want %s, %q, %q", logged["channel"], logged["to"], logged["body"], ch, n.recipient, n.message)
			}
			if ch == "email" && logged["subject"] != n.subject {
				t.Errorf("log line subject: got %v, want %q", logged["subject"], n.subject)
			}
		})
	}
}

func TestSMSSegments(t *testing.T) {
	cases := []struct {
		text    string
		length  int
		segment int
	}{
		{"Hi Amina", 8, gsmSegment},
		{"Hi José, 5 € {x}", 19, gsmSegment}, // é is GSM-7; €, { and } take two septets
		{"Ça coûte 3 $", 12, ucs2Segment},    // û is not GSM-7
		{"Hi 😀", 5, ucs2Segment},             // an emoji is two UTF-16 units
	}
	for _, tc := range cases {
		if got := smsLength(tc.text); got != tc.length {
			t.Errorf("smsLength(%q): got %d, want %d", tc.text, got, tc.length)
		}
		if got := segmentFor(tc.text); got != tc.segment {
			t.Errorf("segmentFor(%q): got %d, want %d", tc.text, got, tc.segment)
		}
	}
	long := orderMessage(customer{Name: "José"}, order{ID: 7, Item: strings.Repeat("sequencing-", 20), Amount: 100, Currency: "KES"})
	if smsLength(long) > gsmSegment || !strings.Contains(long, "José") {
		t.Errorf("a GSM-7 message with an accented name: got %q (%d septets)", long, smsLength(long))
	}
}
