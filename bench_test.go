package main

import (
	"context"
	"log/slog"
	"net/http"
	"testing"
	"time"
)

// Benchmarks; `go test -run XXX -bench . -benchmem` (see the README).

func BenchmarkDecodeOrder(b *testing.B) {
	body := []byte(`{"customer_id":7,"item":"whole-exome-sequencing","amount":"1250.00","currency":"KES","time":"2026-11-21T09:30:00Z"}`)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		var in orderInput
		fatalIf(b, decodeStrict(body, &in))
		c := newChecker()
		in.check(now, fuzzChannels, c)
		fatalIf(b, c.err())
	}
}

func BenchmarkCursor(b *testing.B) {
	c := cursor{Kind: 'o', Time: time.Date(2026, 11, 21, 9, 30, 0, 0, time.UTC), ID: 123456}
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := decodeCursor(c.encode(), 'o'); !ok {
			b.Fatal("cursor did not decode")
		}
	}
}

// BenchmarkVerifyToken verifies RS256 and ES256 tokens against a key set
// already fetched: the signature check a new token costs, and the cache hit
// every later request with it costs.
func BenchmarkVerifyToken(b *testing.B) {
	iss := newFakeOIDC(b)
	auth, err := newAuthenticator(context.Background(), iss.url, []string{iss.audience}, &http.Client{Timeout: 5 * time.Second}, time.Second, slog.New(slog.DiscardHandler))
	fatalIf(b, err)
	for _, kid := range []string{"rsa-1", "ec-1"} {
		key := testKey(kid)
		tok := iss.sign(b, iss.claims("bench", allScopes...), withKey(key))
		_, err := auth.verify(context.Background(), tok)
		fatalIf(b, err)
		for _, mode := range []string{"signature", "cached"} {
			b.Run(key.Algorithm+"/"+mode, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if mode == "signature" {
						clear(auth.verified)
					}
					_, err := auth.verify(context.Background(), tok)
					fatalIf(b, err)
				}
			})
		}
	}
}

// BenchmarkOutboxDelivery measures delivery throughput with the default
// worker settings against a gateway that takes 50 ms per message.
func BenchmarkOutboxDelivery(b *testing.B) {
	const perRound = 2000
	ta := newTestApp(b, nil)
	w := ta.otherWorker(&slowSender{d: 50 * time.Millisecond}) // the default settings, but for its poll
	ta.createCustomer("CUST-1", "+254712345678", nil)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ta.importOrders("CUST-1", perRound, true)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		b.StartTimer()
		go func() { defer close(done); w.run(ctx, 30*time.Second) }()
		for ta.count("notifications", "status = 'sent'") < (i+1)*perRound {
			time.Sleep(5 * time.Millisecond)
		}
		b.StopTimer()
		cancel()
		<-done
	}
	b.ReportMetric(float64(b.N*perRound)/b.Elapsed().Seconds(), "notifications/s")
}
