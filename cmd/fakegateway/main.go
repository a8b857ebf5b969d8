// Command fakegateway is a stand-in for Africa's Talking's bulk messaging
// API, for load tests and fault drills: it answers POST /version1/messaging
// as the real gateway does, after a configurable delay, and counts what it
// accepted. It is never part of a deployment.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9100", "listen address")
	delay := flag.Duration("delay", 50*time.Millisecond, "how long each send takes")
	flag.Parse()

	var accepted atomic.Int64
	http.HandleFunc("POST /version1/messaging", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("apiKey") == "" || r.FormValue("username") == "" || r.FormValue("to") == "" {
			http.Error(w, "The supplied authentication is invalid", http.StatusUnauthorized)
			return
		}
		select {
		case <-time.After(*delay):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]any{"SMSMessageData": map[string]any{
			"Message": "Sent to 1/1 Total Cost: KES 0.8000",
			"Recipients": []map[string]any{{
				"statusCode": 101, "number": r.FormValue("to"), "status": "Success",
				"cost": "KES 0.8000", "messageId": fmt.Sprintf("ATXid_fake_%d", accepted.Add(1)),
			}},
		}})
	})
	http.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, accepted.Load())
	})
	srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, func() { srv.Shutdown(context.Background()) })
	log.Printf("fake Africa's Talking on %s, %v per send", *addr, *delay)
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
