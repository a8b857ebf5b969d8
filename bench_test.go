package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Benchmarks of the hot pure functions; `go test -run XXX -bench . -benchmem`.

func BenchmarkDecodeOrder(b *testing.B) {
	body := `{"customer_id":7,"item":"whole-exome-sequencing","amount":"1250.00","currency":"KES","time":"2026-11-21T09:30:00Z"}`
	now := time.Now()
	known := func(string) bool { return true }
	b.ReportAllocs()
	for b.Loop() {
		var in orderInput
		if err := decodeJSONBody(strings.NewReader(body), &in); err != nil {
			b.Fatal(err)
		}
		c := newChecker()
		in.draft(now, known, c)
		if c.err() != nil {
			b.Fatal(c.err())
		}
	}
}

func BenchmarkCursor(b *testing.B) {
	c := cursor{Kind: 'o', Time: time.Date(2026, 11, 21, 9, 30, 0, 0, time.UTC), ID: 123456}
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := decodeCursor(c.encode(), 'o', true); !ok {
			b.Fatal("cursor did not decode")
		}
	}
}

// BenchmarkVerifyToken verifies RS256 and ES256 tokens against a key set
// already fetched: the signature check a new token costs, and the cache hit
// every later request with it costs.
func BenchmarkVerifyToken(b *testing.B) {
	iss := newTestIssuer(b)
	auth, err := newAuthenticator(context.Background(), iss.srv.URL, iss.audience, &http.Client{Timeout: 5 * time.Second}, time.Second, discardLogger())
	if err != nil {
		b.Fatal(err)
	}
	for _, alg := range []jose.SignatureAlgorithm{jose.RS256, jose.ES256} {
		tok := iss.sign(b, iss.claims("bench", allScopes...), alg)
		if _, err := auth.verify(context.Background(), tok); err != nil {
			b.Fatal(err)
		}
		b.Run(string(alg)+"/signature", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				auth.cache = tokenCache{}
				if _, err := auth.verify(context.Background(), tok); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(string(alg)+"/cached", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := auth.verify(context.Background(), tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkOrderMessage(b *testing.B) {
	c := customer{Name: "Amina Njoroge"}
	o := order{ID: 12, Item: "whole-exome-sequencing", Amount: 125000, Currency: "KES"}
	b.ReportAllocs()
	for b.Loop() {
		if m := orderMessage(c, o); len(m) > gsmSegment {
			b.Fatal(m)
		}
	}
}
