package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
)

// notice is what a channel needs to tell a customer of an order; each
// channel's sender renders its own message from it when it sends.
type notice struct {
	OrderID  int64
	To       string // the recipient: an E.164 number for SMS, an address for e-mail
	Name     string // the customer's name as stored
	Item     string
	Amount   Money
	Currency string
	Time     time.Time // the order's time, UTC
}

// Sender delivers notices on one channel.
type Sender interface {
	// Send delivers n and returns the provider's message id. A failure is a
	// *SendError saying whether and when a later attempt could succeed.
	Send(ctx context.Context, n notice) (providerID string, err error)
}

// SendError is a failed delivery. Reason is the provider's own words, safe to
// store and show to staff.
type SendError struct {
	Permanent bool      // retrying cannot help
	Uncertain bool      // the provider may have accepted the message: the request was written, no verdict came back
	RetryAt   time.Time // when set, the earliest time a retry can succeed (a gateway's quiet hours)
	Reason    string
	Err       error
}

func (e *SendError) Error() string { return e.Reason }
func (e *SendError) Unwrap() error { return e.Err }

// maxStoredReason caps a reason, which is stored and shown to staff.
const maxStoredReason = 200

// storable returns s fit to store, log and show to staff: secret, unless
// empty, replaced by "[redacted]" before the cut, so that no part of it
// stays; then valid UTF-8, control characters turned to spaces, trimmed, and
// at most maxStoredReason characters.
func storable(s, secret string) string {
	if secret != "" {
		s = strings.ReplaceAll(s, secret, "[redacted]")
	}
	s = strings.TrimSpace(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD")))
	if r := []rune(s); len(r) > maxStoredReason {
		s = string(r[:maxStoredReason-1]) + "…"
	}
	return s
}

// channel is a registered way to reach a customer: who delivers, and which of
// the customer's fields holds the address ("phone" or "email").
type channel struct {
	sender  Sender
	address string
}

// channels is the registry of notification channels and the rules that pick
// one for an order. Adding a channel is one Sender type and one register call.
type channels struct {
	byName map[string]channel
	rules  []notifyRule
}

// notifyRule sends orders whose item matches through channel.
type notifyRule struct {
	item    *regexp.Regexp
	channel string
}

// channelNone is the channel that sends nothing.
const channelNone = "none"

// newChannels returns a registry without channels whose rules send every
// order by SMS.
func newChannels() *channels {
	return &channels{byName: map[string]channel{}, rules: []notifyRule{{regexp.MustCompile(`.*`), "sms"}}}
}

// register makes sender the channel called name, reaching customers at the
// customer field address.
func (cs *channels) register(name string, sender Sender, address string) {
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
	for part := range strings.SplitSeq(spec, ",") {
		part = strings.TrimSpace(part)
		pattern, ch, ok := strings.Cut(part, "=")
		pattern, ch = strings.TrimSpace(pattern), strings.TrimSpace(ch)
		// In a pattern '*' matches any run of characters and everything else
		// matches itself; only a pattern that is not UTF-8 fails to compile.
		item, err := regexp.Compile(`(?s)^` + strings.ReplaceAll(regexp.QuoteMeta(pattern), `\*`, `.*`) + `$`)
		switch {
		case part == "":
			continue
		case !ok || pattern == "" || err != nil:
			return fmt.Errorf("NOTIFY_RULES: %q is not item=channel", part)
		case !cs.known(ch):
			return fmt.Errorf("NOTIFY_RULES: %q names channel %q; channels are %s", part, ch, strings.Join(cs.names(), ", "))
		}
		rules = append(rules, notifyRule{item, ch})
	}
	if len(rules) == 0 {
		return fmt.Errorf("NOTIFY_RULES: no rules in %q", spec)
	}
	cs.rules = rules
	return nil
}

// names lists the channels an order may name, in a stable order.
func (cs *channels) names() []string {
	return append(slices.Sorted(maps.Keys(cs.byName)), channelNone)
}

// route returns the channel an order goes out on and the customer field it is
// addressed to: the order's own channel when it named one, else the first
// rule's that matches item, else none.
func (cs *channels) route(item, name string) (channel, address string) {
	for _, r := range cs.rules {
		if name == "" && r.item.MatchString(item) {
			name = r.channel
		}
	}
	return cmp.Or(name, channelNone), cs.byName[name].address
}

// logSender is the channel used when its provider is not configured: the
// message it would send goes to the log, so a local run needs no accounts and
// nothing is dropped.
type logSender struct {
	channel string
	render  func(notice) string
	log     *slog.Logger
}

func (l logSender) Send(ctx context.Context, n notice) (string, error) {
	l.log.InfoContext(ctx, "notification written to the log (provider not configured)",
		"channel", l.channel, "order_id", n.OrderID, "to", n.To, "message", l.render(n))
	return fmt.Sprint("log-", n.OrderID), nil
}
