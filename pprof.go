//go:build pprof

package main

// Built only with -tags pprof (make bench PROFILE=1): the runtime profiles on
// 127.0.0.1:6060, for finding what a load test spends its time on. The
// production binary never includes it.

import (
	"net/http"
	_ "net/http/pprof"
)

func init() {
	go http.ListenAndServe("127.0.0.1:6060", nil)
}
