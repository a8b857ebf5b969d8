package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Message is one notification ready for a channel's sender.
type Message struct {
	OrderID int64  // for logs and message ids
	To      string // E.164 phone number for SMS, address for e-mail
	Subject string // e-mail only
	Body    string
}

// Sender delivers messages on one channel.
type Sender interface {
	// Send delivers m and returns the provider's message id. A failure is a
	// *SendError saying whether a later attempt could succeed.
	Send(ctx context.Context, m Message) (providerID string, err error)
}

// SendError is a failed delivery: Reason is the provider's own words, safe to
// store and show to staff; Permanent means retrying cannot help.
type SendError struct {
	Permanent bool
	Reason    string
	Err       error
}

func (e *SendError) Error() string { return e.Reason }
func (e *SendError) Unwrap() error { return e.Err }

// channel is a registered way to reach a customer: who delivers, and which of
// the customer's addresses it uses ("" when the customer has none).
type channel struct {
	sender  Sender
	address func(c customer) string
}

// channels is the registry of notification channels and the rules that pick
// one for an order. Adding a channel is one Sender type and one register call.
type channels struct {
	byName map[string]channel
	rules  []notifyRule
}

// notifyRule sends orders whose item matches pattern ('*' matches any run of
// characters) through channel.
type notifyRule struct {
	pattern, channel string
}

// channelNone is the channel that sends nothing.
const channelNone = "none"

func newChannels() *channels {
	return &channels{byName: map[string]channel{}, rules: []notifyRule{{"*", "sms"}}}
}

// register makes sender the channel called name.
func (cs *channels) register(name string, sender Sender, address func(customer) string) {
	cs.byName[name] = channel{sender: sender, address: address}
}

// known reports whether name is a channel an order may ask for.
func (cs *channels) known(name string) bool {
	_, ok := cs.byName[name]
	return ok || name == channelNone
}

// setRules parses NOTIFY_RULES: comma-separated item=channel pairs, first
// match wins; an item no rule matches is not notified.
func (cs *channels) setRules(spec string) error {
	var rules []notifyRule
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		pattern, ch, ok := strings.Cut(part, "=")
		pattern, ch = strings.TrimSpace(pattern), strings.TrimSpace(ch)
		if !ok || pattern == "" {
			return fmt.Errorf("NOTIFY_RULES: %q is not item=channel", part)
		}
		if !cs.known(ch) {
			return fmt.Errorf("NOTIFY_RULES: %q names channel %q; channels are %s", part, ch, strings.Join(cs.names(), ", "))
		}
		rules = append(rules, notifyRule{pattern, ch})
	}
	if len(rules) == 0 {
		return fmt.Errorf("NOTIFY_RULES: no rules in %q", spec)
	}
	cs.rules = rules
	return nil
}

func (cs *channels) names() []string {
	names := make([]string, 0, len(cs.byName)+1)
	for n := range cs.byName {
		names = append(names, n)
	}
	slices.Sort(names)
	return append(names, channelNone)
}

// choose returns the channel the rules give item.
func (cs *channels) choose(item string) string {
	for _, r := range cs.rules {
		if glob(r.pattern, item) {
			return r.channel
		}
	}
	return channelNone
}

// glob reports whether s matches pattern, where '*' matches any run of
// characters and everything else matches itself.
func glob(pattern, s string) bool {
	star, rest, wild := strings.Cut(pattern, "*")
	if !wild {
		return pattern == s
	}
	if !strings.HasPrefix(s, star) {
		return false
	}
	s = s[len(star):]
	for i := 0; i <= len(s); i++ {
		if glob(rest, s[i:]) {
			return true
		}
	}
	return false
}

// outboxRow decides how the customer hears of order o: the order's own
// channel when it named one, else the rules. A rule whose channel the
// customer cannot be reached on (e-mail without an address) falls back to
// SMS, so no message is silently dropped; a channel the order named
// explicitly must work, or the order is refused with the returned problem.
func (cs *channels) outboxRow(d orderDraft, o order, c customer) (*outboxRow, string) {
	name := d.Channel
	if name == "" {
		name = cs.choose(o.Item)
	}
	if name == channelNone {
		return nil, ""
	}
	ch := cs.byName[name]
	to := ch.address(c)
	if to == "" && d.Channel != "" {
		return nil, fmt.Sprintf("customer %s has no address for %s", c.Code, name)
	}
	if to == "" {
		name, ch = "sms", cs.byName["sms"]
		to = ch.address(c)
	}
	return &outboxRow{
		channel:   name,
		recipient: to,
		subject:   fmt.Sprintf("Order #%d placed", o.ID),
		message:   orderMessage(c, o),
	}, ""
}

// smsSegment is what one SMS holds: 160 GSM-7 characters, or 70 when any
// character needs UCS-2.
const (
	gsmSegment  = 160
	ucs2Segment = 70
)

// orderMessage is the text a customer receives. It is shortened (the item
// first, then the name) to fit one SMS segment where that is possible.
func orderMessage(c customer, o order) string {
	name, _, _ := strings.Cut(strings.TrimSpace(c.Name), " ")
	item := o.Item
	render := func() string {
		return "Hi " + name + ", your order #" + strconv.FormatInt(o.ID, 10) + " for " + item + " (" +
			o.Currency + " " + o.Amount.String() + ") has been placed. Thank you!"
	}
	msg := render()
	for smsLength(msg) > segmentFor(msg) {
		switch {
		case utf8.RuneCountInString(item) > 12:
			item = shorten(item, utf8.RuneCountInString(item)-(smsLength(msg)-segmentFor(msg))-3)
		case utf8.RuneCountInString(name) > 12:
			name = shorten(name, 12)
		default:
			return msg
		}
		msg = render()
	}
	return msg
}

// shorten cuts s to at most n runes (never fewer than 9) ending in "...".
func shorten(s string, n int) string {
	n = max(n, 9)
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-3]) + "..."
}

// gsmBasic and gsmExtended are the GSM 03.38 alphabet: basic characters
// take one septet, extended ones two. Text with any other character is sent
// as UCS-2.
const (
	gsmBasic    = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
	gsmExtended = "^{}\\[~]|€\f"
)

var gsmBasicSet, gsmExtendedSet = runeSet(gsmBasic), runeSet(gsmExtended)

func runeSet(s string) map[rune]bool {
	set := make(map[rune]bool, len(s))
	for _, r := range s {
		set[r] = true
	}
	return set
}

// smsLength counts septets for GSM-7 text, UTF-16 code units otherwise.
func smsLength(s string) int {
	if segmentFor(s) == ucs2Segment {
		return len(utf16.Encode([]rune(s)))
	}
	n := 0
	for _, r := range s {
		n++
		if gsmExtendedSet[r] {
			n++
		}
	}
	return n
}

// segmentFor returns the single-segment limit for s's encoding.
func segmentFor(s string) int {
	for _, r := range s {
		if !gsmBasicSet[r] && !gsmExtendedSet[r] {
			return ucs2Segment
		}
	}
	return gsmSegment
}

// logSender is the channel used when its provider is not configured: the
// message goes to the log, so a local run needs no accounts and nothing is
// dropped.
type logSender struct {
	channel string
	log     *slog.Logger
}

func (l logSender) Send(ctx context.Context, m Message) (string, error) {
	l.log.InfoContext(ctx, "notification written to the log (provider not configured)",
		"channel", l.channel, "order_id", m.OrderID, "to", m.To, "subject", m.Subject, "body", m.Body)
	return "log-" + strconv.FormatInt(m.OrderID, 10), nil
}
