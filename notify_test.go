package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

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
			"cardio-panel": "email", "panel": "sms", "cardio-panel-2": "sms", "lab-dna-kit": "none", "labkit": "none", "lab-kit-2": "sms",
		}},
		{name: "several stars", spec: "a*b*c=email,*b=none,**=sms", choose: map[string]string{
			"aXXbYYc": "email", "abc": "email", "a\nb\nc": "email", "acb": "none", "bbb": "none", "x": "sms",
		}},
		{name: "non-ASCII", spec: "ü*=email,*ß=none,*=sms", choose: map[string]string{"über-panel": "email", "straß": "none", "uber": "sms"}},
		{name: "only * is special", spec: `?=email,a.c=email,[ab]*=email,lab\*=email,(kit)+=email,*=sms`, choose: map[string]string{
			"?": "email", "x": "sms", "a.c": "email", "abc": "sms", "[ab]-kit": "email", "a": "sms", `lab\x`: "email", "labx": "sms",
			"(kit)+": "email", "kitkit": "sms",
		}},
		{name: "spaces around pairs and names", spec: "  lab-* = email ,  * =  sms  ", choose: map[string]string{"lab-x": "email", "x": "sms"}},
		{name: "empty pairs are skipped", spec: ",,lab-*=email,,*=sms,", choose: map[string]string{"lab-x": "email", "x": "sms"}},
		{name: "first match wins over a later exact rule", spec: "*=none,kit=email", choose: map[string]string{"kit": "none", "other": "none"}},
		{name: "first of two exact rules wins", spec: "kit=email,kit=sms,*=sms", choose: map[string]string{"kit": "email", "kit2": "sms"}},
		{name: "matching is case-sensitive", spec: "Kit=email,*=sms", choose: map[string]string{"Kit": "email", "kit": "sms"}},
		{name: "an item no rule matches is not notified", spec: "lab-*=email", choose: map[string]string{"lab-x": "email", "kit": "none"}},
		{name: "unknown channel", spec: "lab-*=email,*=fax", wantErr: []string{"NOTIFY_RULES", `"fax"`, "sms", "email", "none"}},
		{name: "empty channel", spec: "*=", wantErr: []string{"NOTIFY_RULES", `""`}},
		{name: "missing equals", spec: "sms", wantErr: []string{"NOTIFY_RULES", `"sms"`, "item=channel"}},
		{name: "empty pattern", spec: "=sms", wantErr: []string{"NOTIFY_RULES", `"=sms"`, "item=channel"}},
		{name: "pattern not UTF-8", spec: "lab-\xff*=sms", wantErr: []string{"NOTIFY_RULES", "item=channel"}},
		{name: "two equals", spec: "a=b=c", wantErr: []string{"NOTIFY_RULES", `"b=c"`}},
		{name: "good pair then malformed one", spec: "*=sms,oops", wantErr: []string{"NOTIFY_RULES", `"oops"`}},
		{name: "empty", spec: "", wantErr: []string{"NOTIFY_RULES", "no rules"}},
		{name: "only separators", spec: " , ,", wantErr: []string{"NOTIFY_RULES", "no rules"}},
	}
	for _, tt := range tests {
		cs := newChannels()
		cs.register("sms", &recordingSender{}, "phone")
		cs.register("email", &recordingSender{}, "email")
		err := cs.setRules(tt.spec)
		for _, s := range tt.wantErr {
			if err == nil || !strings.Contains(err.Error(), s) {
				t.Errorf("%s: setRules(%q): got error %v, want one containing %q", tt.name, tt.spec, err, s)
			}
		}
		if tt.wantErr == nil && err != nil {
			t.Errorf("%s: setRules(%q): got error %v, want nil", tt.name, tt.spec, err)
		}
		// A bad spec must not half-replace the rules in force.
		if got, _ := cs.route("anything", ""); tt.wantErr != nil && got != "sms" {
			t.Errorf("%s: after a failed setRules, route: got %q, want the default sms", tt.name, got)
		}
		for item, want := range tt.choose {
			got, address := cs.route(item, "")
			if wantAddress := map[string]string{"sms": "phone", "email": "email", "none": ""}[want]; got != want || address != wantAddress {
				t.Errorf("%s: route(%q) under %q: got %q to %q, want %q to %q", tt.name, item, tt.spec, got, address, want, wantAddress)
			}
		}
		got, _ := cs.route("kit", "email")
		equal(t, tt.name+": the order's own channel", got, "email")
	}
}

// The rules and an order's own channel pick how a customer hears of it, and
// the outbox row says to whom: a rule that picks e-mail for a customer without
// an address falls back to SMS, but an order that asks for e-mail for one is
// refused. Each notification is delivered once, by its channel's sender.
func TestNotifyRouting(t *testing.T) {
	ta := newTestApp(t, nil)
	ta.startWorker(nil, time.Second)
	withEmail := ta.createCustomer("C-MAIL", "+254712345678", ptr("amina@example.com"))
	noEmail := ta.createCustomer("C-NOMAIL", "+254722000111", nil)
	for _, tt := range []struct {
		name      string
		rules     string
		override  string // the order's channel; "" when absent
		c         customer
		channel   string // "" for no notification
		recipient string
	}{
		{"rules pick sms", "*=sms", "", withEmail, "sms", withEmail.Phone},
		{"rules pick email", "*=email", "", withEmail, "email", "amina@example.com"},
		{"rules by item", "kit=email,*=sms", "", withEmail, "email", "amina@example.com"},
		{"sms override beats an email rule", "*=email", "sms", withEmail, "sms", withEmail.Phone},
		{"email override beats an sms rule", "*=sms", "email", withEmail, "email", "amina@example.com"},
		{"sms override beats a none rule", "*=none", "sms", noEmail, "sms", noEmail.Phone},
		{"email rule without an address falls back to sms", "*=email", "", noEmail, "sms", noEmail.Phone},
		{"none override sends nothing", "*=sms", "none", withEmail, "", ""},
		{"none rule sends nothing", "*=none", "", withEmail, "", ""},
		{"no rule matching sends nothing", "lab-*=email", "", withEmail, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fatalIf(t, ta.server.channels.setRules(tt.rules))
			body := map[string]any{"customer_id": tt.c.ID, "item": "kit", "amount": "10.00"}
			if tt.override != "" {
				body["channel"] = tt.override
			}
			o := ta.place(body)
			if tt.channel == "" {
				if o.Notification != nil || ta.getOrder(o.ID).Notification != nil || ta.count("notifications", "order_id = $1", o.ID) != 0 {
					t.Errorf("order %d: got notification %+v, want none at all", o.ID, o.Notification)
				}
				return
			}
			if o.Notification == nil || o.Notification.Channel != tt.channel {
				t.Fatalf("notification: got %+v, want %s", o.Notification, tt.channel)
			}
			if n := ta.settled(o.ID); n.recipient != tt.recipient || n.channel != tt.channel || n.status != "sent" {
				t.Errorf("row: got %s to %s (%s), want %s to %s", n.channel, n.recipient, n.status, tt.channel, tt.recipient)
			}
			got := ta.senders[tt.channel].notices()
			if last := got[len(got)-1]; last.OrderID != o.ID || last.To != tt.recipient || last.Name != tt.c.Name || last.Item != "kit" || last.Amount != 1000 || !last.Time.Equal(o.Time) {
				t.Errorf("notice: got %+v, want order %d to %s", last, o.ID, tt.recipient)
			}
		})
	}

	t.Run("email override without an address is refused", func(t *testing.T) {
		orders := ta.count("orders")
		p := ta.do("POST", "/v1/orders", map[string]any{"customer_id": noEmail.ID, "item": "kit", "amount": "10.00", "channel": "email"}).
			must(t, http.StatusUnprocessableEntity).problem(t)
		checkPointers(t, p, "#/channel")
		equal(t, "orders after the refused one", ta.count("orders"), orders)
	})

	t.Run("imports", func(t *testing.T) {
		fatalIf(t, ta.server.channels.setRules("lab-*=email,*=sms"))
		for _, id := range ta.importOrders("C-MAIL", 3, false) {
			equal(t, fmt.Sprintf("order %d imported with notify=false: notification", id), ta.getOrder(id).Notification, nil)
		}
		var res importResult
		csv := "customer_code,item,amount\nC-MAIL,lab-panel,10.00\nC-MAIL,kit,11.00\nC-NOMAIL,lab-panel,12.00\nC-NOMAIL,kit,13.00\n"
		ta.send("POST", "/v1/orders/import", csv, "text/csv").must(t, http.StatusCreated).json(t, &res)
		for i, want := range []string{"email amina@example.com", "sms " + withEmail.Phone, "sms " + noEmail.Phone, "sms " + noEmail.Phone} {
			n := ta.settled(res.IDs[i])
			equal(t, fmt.Sprint("imported order ", i), n.channel+" "+n.recipient, want)
		}
		for id, n := range perOrder(ta.senders["sms"], ta.senders["email"]) {
			equal(t, fmt.Sprint("messages for order ", id), n, 1)
		}
	})
}

// With no provider configured, a channel writes its messages to the log and
// start-up says so; nothing is dropped.
func TestNotifyLogSender(t *testing.T) {
	ta := newTestApp(t, map[string]string{"KEEP_SENDERS": "1"})
	for _, want := range []string{"AT_USERNAME is not set: SMS notifications are written to the log", "SMTP_URL is not set: e-mail notifications are written to the log"} {
		equal(t, fmt.Sprintf("start-up warnings %q", want), len(logLines(t, ta.logs.String(), "level", "WARN", "msg", want+", not sent")), 1)
	}
	ta.startWorker(nil, time.Second)
	c := ta.createCustomer("CUST-LOG", "+254712345678", ptr("amina@example.com"))
	for ch, render := range map[string]func(notice) string{"sms": smsText, "email": mailText} {
		o := ta.place(map[string]any{"customer_id": c.ID, "item": "kit-" + ch, "amount": "10.00", "channel": ch})
		n := ta.settled(o.ID)
		equal(t, ch+" status", n.status, "sent")
		equal(t, ch+" provider id", n.providerID.String, fmt.Sprint("log-", o.ID))
		want := render(notice{OrderID: o.ID, To: n.recipient, Name: c.Name, Item: o.Item, Amount: o.Amount, Currency: o.Currency, Time: o.Time})
		if lines := logLines(t, ta.logs.String(), "order_id", o.ID, "channel", ch, "to", n.recipient, "message", want); len(lines) != 1 {
			t.Errorf("%s: got %d log lines with the message, want 1; log:\n%s", ch, len(lines), ta.logs.String())
		}
	}
}

// An order's SMS reaches Africa's Talking within a second of the 201, once,
// and the gateway's delivery reports then say whether it reached the phone.
func TestNotifyEndToEndSMS(t *testing.T) {
	const apiKey, secret = "atsk_e2e_key", "callback-secret-0123456789"
	fake := newATFake(t, apiKey)
	ta := newTestApp(t, map[string]string{"KEEP_SENDERS": "1", "AT_USERNAME": "acme-lab", "AT_API_KEY": apiKey,
		"AT_BASE_URL": fake.srv.URL, "AT_CALLBACK_SECRET": secret})
	ta.startWorker(nil, time.Second)
	c := ta.createCustomer("CUST-SMS", "+254712345678", nil)

	o := ta.place(map[string]any{"customer_id": c.ID, "item": "whole-exome-sequencing", "amount": "1250.00"})
	got201 := time.Now()
	if o.Notification == nil || o.Notification.Channel != "sms" || o.Notification.Status != "pending" {
		t.Fatalf("201 notification: got %+v, want sms pending", o.Notification)
	}
	n := ta.settled(o.ID)
	time.Sleep(200 * time.Millisecond) // nothing more may arrive once the row is settled
	reqs := fake.requests()
	if len(reqs) != 1 || reqs[0].at.After(got201.Add(time.Second)) {
		t.Fatalf("SMS requests: got %+v, want exactly 1 within a second of the 201", reqs)
	}
	r := reqs[0]
	want := smsText(notice{OrderID: o.ID, To: c.Phone, Name: c.Name, Item: o.Item, Amount: o.Amount, Currency: o.Currency, Time: o.Time})
	if r.to != c.Phone || r.username != "acme-lab" || r.message != want || n.providerID.String != r.messageID {
		t.Errorf("request: got to %q username %q message %q (provider id %q), want %q, acme-lab, %q (%q)", r.to, r.username, r.message, n.providerID.String, c.Phone, want, r.messageID)
	}
	got := ta.getOrder(o.ID).Notification
	if got == nil || got.Status != "sent" || got.Attempts != 1 || got.SentAt == nil || got.LastError != nil || got.DeliveredAt != nil ||
		got.SentAt.Before(got201.Add(-time.Minute)) || got.SentAt.After(time.Now()) {
		t.Errorf("GET notification: got %+v, want sms sent now, attempts 1, no last_error, not yet delivered", got)
	}

	hook := ta.url + "/hooks/africastalking/" + secret
	other := newTestApp(t, nil) // no AT_CALLBACK_SECRET: the route is unknown
	second := ta.place(map[string]any{"customer_id": c.ID, "item": "panel", "amount": "1.00"})
	third := ta.place(map[string]any{"customer_id": c.ID, "item": "kit", "amount": "1.00"})
	for _, tc := range []struct {
		name, url, id, status, reason string
		code                          int
	}{
		{"interim report changes nothing", hook, r.messageID, "Buffered", "", 200},
		{"delivered", hook, r.messageID, "Success", "", 200},
		{"a late report changes nothing", hook, r.messageID, "Failed", "DeliveryFailure", 200},
		{"undelivered", hook, ta.settled(second.ID).providerID.String, "Failed", "DeliveryFailure", 200},
		{"absent subscriber", hook, ta.settled(third.ID).providerID.String, "AbsentSubscriber", "", 200},
		{"unknown message", hook, "ATXid_unknown", "Success", "", 200},
		{"unknown status", hook, r.messageID, "Vanished", "", 400},
		{"no id", hook, "", "Success", "", 400},
		{"an id PostgreSQL's text cannot hold", hook, "ATXid\x00", "Success", "", 400},
		{"wrong secret", ta.url + "/hooks/africastalking/not-the-secret-at-all", r.messageID, "Failed", "", 404},
		{"no secret", ta.url + "/hooks/africastalking/", r.messageID, "Failed", "", 404},
		{"no AT_CALLBACK_SECRET configured", other.url + "/hooks/africastalking/" + secret, r.messageID, "Success", "", 404},
	} {
		equal(t, tc.name, fake.report(t, tc.url, tc.id, tc.status, tc.reason), tc.code)
	}
	for body, status := range map[string]int{`{"id":"x","status":"Success"}`: 415, "status=Success&id=" + strings.Repeat("x", 64<<10): 400} {
		contentType := map[int]string{415: "application/json", 400: "application/x-www-form-urlencoded"}[status]
		ta.request("POST", "/hooks/africastalking/"+secret, body, contentType, nil).must(t, status).problem(t)
	}
	for _, tc := range []struct {
		id                int64
		status, lastError string
	}{
		{o.ID, "delivered", ""},
		{second.ID, "undelivered", "Failed: DeliveryFailure"},
		{third.ID, "undelivered", "AbsentSubscriber"},
	} {
		v := ta.getOrder(tc.id).Notification
		if v.Status != tc.status || (v.LastError == nil) != (tc.lastError == "") || v.LastError != nil && *v.LastError != tc.lastError ||
			(v.DeliveredAt != nil) != (tc.status == "delivered") || v.SentAt == nil {
			t.Errorf("order %d after its report: got %+v, want %s, last_error %q", tc.id, v, tc.status, tc.lastError)
		}
	}
	if strings.Contains(ta.logs.String(), secret) {
		t.Error("the callback secret reached the log")
	}
}

// An e-mail carries the whole order, however long its item.
func TestNotifyEndToEndEmail(t *testing.T) {
	relay := &smtpFake{noStartTLS: true} // the service does not trust the fake's certificate
	relay.start(t)
	ta := newTestApp(t, map[string]string{"KEEP_SENDERS": "1", "SMTP_URL": "smtp://" + relay.ln.Addr().String(),
		"MAIL_FROM": "orders@lab.example", "NOTIFY_RULES": "*=email"})
	ta.startWorker(nil, time.Second)
	c := ta.createCustomer("CUST-MAIL", "+254712345678", ptr("amina@example.com"))
	item := strings.Repeat("comprehensive-genomic-panel-", 6)[:167]
	o := ta.place(map[string]any{"customer_id": c.ID, "item": item, "amount": "1250.00", "time": "2026-11-21T09:30:00Z"})
	if n := ta.settled(o.ID); n.status != "sent" || !strings.HasPrefix(n.providerID.String, "<") {
		t.Fatalf("row: got %+v, want sent with the Message-ID", n)
	}
	msgs := relay.received()
	if len(msgs) != 1 || msgs[0].from != "orders@lab.example" || len(msgs[0].to) != 1 || msgs[0].to[0] != "amina@example.com" {
		t.Fatalf("e-mails: got %+v, want one from orders@lab.example to amina@example.com", msgs)
	}
	// The text itself is TestSMTPMailerSend's; here it is the order as stored.
	h, body := parseMail(t, msgs[0].data)
	placed := time.Date(2026, 11, 21, 9, 30, 0, 0, time.UTC)
	want := mailText(notice{OrderID: o.ID, Name: c.Name, Item: item, Amount: 125000, Currency: "KES", Time: placed})
	equal(t, "Subject", h.Get("Subject"), fmt.Sprintf("Order #%d placed", o.ID))
	equal(t, "body", strings.ReplaceAll(body, "\r\n", "\n"), want)
}
