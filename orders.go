package main

import (
	"cmp"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
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
	Channel     string     `json:"channel"`
	Status      string     `json:"status"`
	Attempts    int        `json:"attempts"`
	LastError   *string    `json:"last_error"`
	SentAt      *time.Time `json:"sent_at"`
	DeliveredAt *time.Time `json:"delivered_at"`
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

// check reports to c every rule it breaks and returns the order it asks for;
// now is the default time. Where a field is bad the order holds a
// placeholder, so that the store, asked only which customers the orders
// reach, never meets a value it could not take (a NUL, a year past 9999).
func (in *orderInput) check(now time.Time, cs *channels, c *checker) newOrder {
	o := newOrder{Currency: "KES", Time: now.UTC().Truncate(time.Microsecond)}
	switch {
	case in.CustomerID != nil && in.CustomerCode != nil:
		c.add("customer_code", "must not be given together with customer_id")
	case in.CustomerID != nil && *in.CustomerID <= 0:
		c.add("customer_id", "must be a positive integer")
	case in.CustomerID != nil:
		o.CustomerID = *in.CustomerID
	case in.CustomerCode == nil:
		c.add("customer_id", "is required (or give customer_code)")
	case c.add("customer_code", checkCode(*in.CustomerCode)):
		o.CustomerCode = *in.CustomerCode
	}
	if c.add("item", checkText(in.Item, 200)) {
		o.Item = in.Item
	}
	o.Amount = *in.Amount.check("amount", true, c)
	if in.Currency != nil && c.add("currency", checkCurrency(*in.Currency)) {
		o.Currency = *in.Currency
	}
	if in.Time != nil {
		if t, d := parseTime(*in.Time); c.add("time", d) {
			o.Time = t
		}
	}
	named := ""
	if in.Channel != nil {
		if named = *in.Channel; !cs.known(named) {
			c.add("channel", "must be one of "+strings.Join(cs.names(), ", "))
			named = channelNone
		}
	}
	o.Channel, o.Address = cs.route(o.Item, named)
	o.Explicit = named != ""
	return o
}

// fingerprint identifies a request for Idempotency-Key by the order it asks
// for once checked: the amount's value, the currency with its default, the
// time as an instant. What the client left to the server stays left out
// (the server's "now" and rules are not part of the request), and naming the
// customer by id or by code are different requests.
func (in *orderInput) fingerprint(o newOrder) []byte {
	at, named := "", ""
	if in.Time != nil {
		at = o.Time.Format(time.RFC3339Nano)
	}
	if in.Channel != nil {
		named = o.Channel
	}
	b, _ := json.Marshal([]any{o.CustomerID, o.CustomerCode, o.Item, int64(o.Amount), o.Currency, at, named})
	sum := sha256.Sum256(b)
	return sum[:]
}

// idempotencyKey returns the request's Idempotency-Key ("" when it has none);
// c learns what is wrong with a key that is not 1 to 255 printable characters.
func idempotencyKey(r *http.Request, c *checker) string {
	keys := r.Header.Values("Idempotency-Key")
	if len(keys) == 0 {
		return ""
	}
	key := keys[0]
	if len(keys) != 1 || key == "" || !utf8.ValidString(key) || utf8.RuneCountInString(key) > 255 ||
		!printable(key) {
		c.addError(fieldError{Header: "Idempotency-Key", Detail: "Idempotency-Key must be one header of 1 to 255 printable characters"})
	}
	return key
}

func (s *server) handleCreateOrder(w http.ResponseWriter, r *http.Request) {
	c := newChecker()
	key := idempotencyKey(r, c)
	var in orderInput
	if err := decodeJSON(w, r, &in); err != nil {
		fail(w, r, err)
		return
	}
	o := in.check(time.Now(), s.channels, c)
	p := placement{by: subject(r), orders: []newOrder{o}}
	if key != "" && c.total == 0 {
		p.key, p.fingerprint = key, in.fingerprint(o)
	}
	placed, err := s.place(r, p, c, func(int) {})
	if errors.Is(err, errKeyReused) {
		err = invalid(fieldError{Header: "Idempotency-Key", Detail: "this Idempotency-Key was used with a different request body"})
	}
	if err != nil {
		fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/orders/"+strconv.FormatInt(placed[0].ID, 10))
	writeJSON(w, r, http.StatusCreated, placed[0])
}

// place hands p to the store, only to learn what it could not place when c
// already holds errors, wakes the worker for what it placed, and adds what it
// could not place to c; locate(i) moves c to order i. It returns the placed
// orders, or the errors of the lot.
func (s *server) place(r *http.Request, p placement, c *checker, locate func(i int)) ([]order, error) {
	p.checkOnly = c.total > 0
	placed, err := s.store.placeOrders(r.Context(), p)
	s.outbox.wake()
	if unplaced, ok := errors.AsType[*unplacedError](err); ok {
		for _, u := range unplaced.orders {
			locate(u.index)
			o := p.orders[u.index]
			switch {
			case !u.customerFound && o.CustomerCode != "":
				c.add("customer_code", fmt.Sprintf("must name a customer; none has code %q", o.CustomerCode))
			case !u.customerFound:
				c.add("customer_id", fmt.Sprintf("must name a customer; none has id %d", o.CustomerID))
			default:
				c.add("channel", "cannot be "+o.Channel+": the customer has no "+o.Address)
			}
		}
		err = nil
	}
	if err == nil {
		err = c.err()
	}
	return placed, err
}

func (s *server) handleListOrders(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	c := newChecker()
	p := parsePage(q, 'o', c)
	var f orderFilter
	if q.Has("customer_id") {
		id, err := strconv.ParseInt(q.Get("customer_id"), 10, 64)
		if err != nil || id <= 0 {
			c.addError(fieldError{Parameter: "customer_id", Detail: "customer_id must be a positive integer"})
		}
		f.customerID = id
	}
	if q.Has("customer_code") {
		f.customerCode = q.Get("customer_code")
		if d := checkCode(f.customerCode); d != "" {
			c.addError(fieldError{Parameter: "customer_code", Detail: "customer_code " + d})
		}
	}
	orders, err := []order(nil), c.err()
	if err == nil {
		orders, err = s.store.listOrders(r.Context(), f, p)
	}
	respondPage(w, r, orders, err, p.limit, orderCursor)
}

func orderCursor(o order) cursor { return cursor{Kind: 'o', Time: o.Time, ID: o.ID} }

func (s *server) handleImportOrders(w http.ResponseWriter, r *http.Request) {
	notify, err := strconv.ParseBool(cmp.Or(r.URL.Query().Get("notify"), "true"))
	if err != nil {
		fail(w, r, invalid(fieldError{Parameter: "notify", Detail: "notify must be true or false"}))
		return
	}
	columns := []string{"customer_id", "customer_code", "item", "amount", "currency", "time", "channel"}
	serveImport(w, r, s.imports, columns, orderFromCSV, func(batch importBatch[orderInput], c *checker) ([]int64, error) {
		p := placement{by: subject(r), orders: make([]newOrder, len(batch.items))}
		now := time.Now()
		for i := range batch.items {
			c.at(i, batch.csv)
			p.orders[i] = batch.items[i].check(now, s.channels, c)
			if !notify {
				p.orders[i].Channel, p.orders[i].Address = channelNone, ""
			}
		}
		placed, err := s.place(r, p, c, func(i int) { c.at(i, batch.csv) })
		ids := make([]int64, len(placed))
		for i, o := range placed {
			ids[i] = o.ID
		}
		return ids, err
	})
}

// orderFromCSV turns a CSV record into the input a JSON row would give;
// empty cells are absent fields.
func orderFromCSV(rec map[string]string) orderInput {
	in := orderInput{Item: rec["item"], CustomerCode: cell(rec, "customer_code"), Currency: cell(rec, "currency"),
		Time: cell(rec, "time"), Channel: cell(rec, "channel")}
	if v := cell(rec, "customer_id"); v != nil {
		id, err := strconv.ParseInt(*v, 10, 64)
		if err != nil {
			id = -1 // reported by check as not a positive integer
		}
		in.CustomerID = &id
	}
	if v, ok := rec["amount"]; ok {
		in.Amount = moneyInput{text: v, set: true}
	}
	return in
}
