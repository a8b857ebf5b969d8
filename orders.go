package main

import (
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"
)

// order is an order as the API shows it. Notification is null when the
// order was placed with channel "none" or imported without notifying.
type order struct {
	ID           int64             `json:"id"`
	CustomerID   int64             `json:"customer_id"`
	Item         string            `json:"item"`
	Amount       Money             `json:"amount"`
	Currency     string            `json:"currency"`
	Time         time.Time         `json:"time"`
	CreatedBy    string            `json:"created_by"`
	Notification *notificationView `json:"notification"`
}

// notificationView is the delivery state of an order's notification.
type notificationView struct {
	Channel   string     `json:"channel"`
	Status    string     `json:"status"`
	Attempts  int        `json:"attempts"`
	LastError *string    `json:"last_error"`
	SentAt    *time.Time `json:"sent_at"`
}

// orderInput is the body of POST /v1/orders and one row of an import.
type orderInput struct {
	CustomerID   *int64     `json:"customer_id"`
	CustomerCode *string    `json:"customer_code"`
	Item         string     `json:"item"`
	Amount       moneyInput `json:"amount"`
	Currency     *string    `json:"currency"`
	Time         *string    `json:"time"`
	Channel      *string    `json:"channel"`
}

// orderDraft is a checked order waiting for its customer to be found.
type orderDraft struct {
	CustomerID   int64  // 0 when the order names its customer by code
	CustomerCode string // "" when it names it by id
	Item         string
	Amount       Money
	Currency     string
	Time         time.Time
	Channel      string // "" means: as NOTIFY_RULES say
}

// draft checks in and returns the order it describes; now is the default time.
func (in *orderInput) draft(now time.Time, channelKnown func(string) bool, c *checker) orderDraft {
	d := orderDraft{Item: in.Item, Currency: "KES", Time: now}
	switch {
	case in.CustomerID != nil && in.CustomerCode != nil:
		c.add("customer_code", "must not be given together with customer_id")
	case in.CustomerID != nil:
		if *in.CustomerID <= 0 {
			c.add("customer_id", "must be a positive integer")
		}
		d.CustomerID = *in.CustomerID
	case in.CustomerCode != nil:
		if msg := checkCode(*in.CustomerCode); msg != "" {
			c.add("customer_code", "%s", msg)
		}
		d.CustomerCode = *in.CustomerCode
	default:
		c.add("customer_id", "is required (or give customer_code)")
	}
	if msg := checkText(in.Item, 200); msg != "" {
		c.add("item", "%s", msg)
	}
	if !in.Amount.set {
		c.add("amount", "is required")
	} else if m, err := parseMoney(in.Amount.text); err != nil {
		c.add("amount", "%s", err.Error())
	} else {
		d.Amount = m
	}
	if in.Currency != nil {
		if msg := checkCurrency(*in.Currency); msg != "" {
			c.add("currency", "%s", msg)
		}
		d.Currency = *in.Currency
	}
	if in.Time != nil {
		t, err := time.Parse(time.RFC3339Nano, *in.Time)
		if err != nil {
			c.add("time", "must be an RFC 3339 time such as 2026-11-21T09:30:00Z")
		}
		d.Time = t
	}
	// PostgreSQL keeps microseconds; trimming here makes the answer to a create
	// match every later read.
	d.Time = d.Time.UTC().Truncate(time.Microsecond)
	if in.Channel != nil {
		if !channelKnown(*in.Channel) {
			c.add("channel", "must be one of sms, email, none")
		}
		d.Channel = *in.Channel
	}
	return d
}

// customerField returns the field naming the draft's customer and the error
// for a customer that does not exist, for checker.add.
func (d orderDraft) customerField() (string, string, any) {
	if d.CustomerCode != "" {
		return "customer_code", "no customer has code %q", d.CustomerCode
	}
	return "customer_id", "no customer has id %d", d.CustomerID
}

// fingerprint identifies a request for Idempotency-Key by the order it
// describes once checked: the amount's value, the currency with its default,
// the time as an instant. A time or channel left out stays left out (the
// server's "now" and rules are not part of the request), and naming the
// customer by id or by code are different requests.
func (d orderDraft) fingerprint(timeGiven bool) []byte {
	at := ""
	if timeGiven {
		at = d.Time.Format(time.RFC3339Nano)
	}
	b, _ := json.Marshal([]any{d.CustomerID, d.CustomerCode, d.Item, int64(d.Amount), d.Currency, at, d.Channel})
	sum := sha256.Sum256(b)
	return sum[:]
}

func (s *server) handleCreateOrder(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	if _, given := r.Header["Idempotency-Key"]; given && (key == "" || utf8.RuneCountInString(key) > 255) {
		fail(w, r, &validationError{fields: []fieldError{{Parameter: "Idempotency-Key", Detail: "Idempotency-Key must be 1 to 255 characters"}}})
		return
	}
	var in orderInput
	if err := decodeJSON(w, r, maxBody, &in); err != nil {
		fail(w, r, err)
		return
	}
	c := newChecker()
	d := in.draft(time.Now(), s.channels.known, c)
	if err := c.err(); err != nil {
		fail(w, r, err)
		return
	}
	p := placement{by: subject(r), drafts: []orderDraft{d}, outbox: s.channels.outboxRow, at: func(int) *checker { return c }}
	if key != "" {
		p.idempotency = &idempotency{key: key, fingerprint: d.fingerprint(in.Time != nil)}
	}
	placed, replayed, err := s.store.placeOrders(r.Context(), p)
	if err != nil {
		fail(w, r, err)
		return
	}
	if !replayed && placed[0].Notification != nil {
		s.wake()
	}
	w.Header().Set("Location", "/v1/orders/"+strconv.FormatInt(placed[0].ID, 10))
	writeJSON(w, http.StatusCreated, placed[0])
}

func (s *server) handleListOrders(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	c := newChecker()
	p := parsePage(q, 'o', true, c)
	var f orderFilter
	if v := q.Get("customer_id"); q.Has("customer_id") {
		id, err := strconv.ParseInt(v, 10, 64)
		if err != nil || id <= 0 {
			c.fields = append(c.fields, fieldError{Parameter: "customer_id", Detail: "customer_id must be a positive integer"})
		}
		f.customerID = id
	}
	if q.Has("customer_code") {
		f.customerCode = q.Get("customer_code")
		if msg := checkCode(f.customerCode); msg != "" {
			c.fields = append(c.fields, fieldError{Parameter: "customer_code", Detail: "customer_code " + msg})
		}
	}
	if err := c.err(); err != nil {
		fail(w, r, err)
		return
	}
	os, err := s.store.listOrders(r.Context(), f, p)
	if err != nil {
		fail(w, r, err)
		return
	}
	writePage(w, r, os, p.limit, func(o order) cursor { return cursor{Kind: 'o', Time: o.Time, ID: o.ID} })
}

func (s *server) handleGetOrder(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err == nil {
		var o order
		if o, err = s.store.getOrder(r.Context(), id); err == nil {
			writeJSON(w, http.StatusOK, o)
			return
		}
	}
	fail(w, r, err)
}

func (s *server) handleImportOrders(w http.ResponseWriter, r *http.Request) {
	notify := true
	if v := r.URL.Query().Get("notify"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			fail(w, r, &validationError{fields: []fieldError{{Parameter: "notify", Detail: "notify must be true or false"}}})
			return
		}
		notify = b
	}
	columns := []string{"customer_id", "customer_code", "item", "amount", "currency", "time", "channel"}
	batch, err := readImport(w, r, columns, orderFromCSV)
	if err != nil {
		fail(w, r, err)
		return
	}
	now := time.Now()
	drafts := make([]orderDraft, len(batch.items))
	check := func(i int, in *orderInput, c *checker) { drafts[i] = in.draft(now, s.channels.known, c) }
	if err := batch.validate(check); err != nil {
		// Name unknown customers in the same answer as the other bad rows, so
		// that one round trip shows everything wrong with the file.
		unknown, lookupErr := s.store.unknownCustomers(r.Context(), drafts)
		if lookupErr != nil {
			fail(w, r, lookupErr)
			return
		}
		fail(w, r, batch.validate(func(i int, in *orderInput, c *checker) {
			check(i, in, c)
			if unknown[i] {
				c.add(drafts[i].customerField())
			}
		}))
		return
	}
	p := placement{by: subject(r), drafts: drafts, at: batch.checker}
	if notify {
		p.outbox = s.channels.outboxRow
	}
	placed, _, err := s.store.placeOrders(r.Context(), p)
	if err != nil {
		fail(w, r, err)
		return
	}
	if notify {
		s.wake()
	}
	ids := make([]int64, len(placed))
	for i, o := range placed {
		ids[i] = o.ID
	}
	writeJSON(w, http.StatusCreated, importResult{Imported: len(ids), IDs: ids})
}

// orderFromCSV turns a CSV record into the input a JSON row would give;
// empty cells are absent fields.
func orderFromCSV(rec map[string]string) orderInput {
	in := orderInput{Item: rec["item"]}
	if v := rec["customer_id"]; v != "" {
		id, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			id = -1 // reported by draft as not a positive integer
		}
		in.CustomerID = &id
	}
	optionalCell := func(name string) *string {
		if v := rec[name]; v != "" {
			return &v
		}
		return nil
	}
	in.CustomerCode = optionalCell("customer_code")
	in.Currency = optionalCell("currency")
	in.Time = optionalCell("time")
	in.Channel = optionalCell("channel")
	if v, ok := rec["amount"]; ok {
		in.Amount = moneyInput{text: v, set: true}
	}
	return in
}
