#!/usr/bin/env bash
# make bench: the service on a fresh local database with a fake Africa's
# Talking (50 ms per send), loaded with wrk at 16 and 64 connections, then
# pgbench running the same SQL at the same concurrency, and, for placing an
# order, the textbook transaction (BEGIN; INSERT the order; INSERT its outbox
# row; COMMIT) as a reference. Prints one table.
#
#   DURATION=10s CONNECTIONS="16 64" CUSTOMERS=1000 PROFILE= scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16 64}
CUSTOMERS=${CUSTOMERS:-1000}
ORDERS=$((CUSTOMERS * 5))
PORT=${BENCH_PORT:-8090}
ISSUER=127.0.0.1:9001
GATEWAY=127.0.0.1:9101
work=.dev/bench
mkdir -p "$work"

command -v wrk >/dev/null || { echo "bench: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
command -v pgbench >/dev/null || { echo "bench: pgbench is not installed (apt-get install postgresql-contrib)" >&2; exit 1; }

admin_url=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
db_url="${admin_url%/*}/om_bench?sslmode=disable"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS om_bench" -qc "CREATE DATABASE om_bench" >/dev/null

# PROFILE=1: the binary serves pprof on 127.0.0.1:6060 and each run saves a
# CPU profile to .dev/bench/cpu-<request>-<conns>.prof.
go build ${PROFILE:+-tags pprof} -o "$work/order-management" .
go build -o "$work/devissuer" ./cmd/devissuer
go build -o "$work/fakegateway" ./cmd/fakegateway

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$work/devissuer" -addr "$ISSUER" -key-file "$work/issuer.pem" 2>"$work/devissuer.log" &
pids+=($!)
"$work/fakegateway" -addr "$GATEWAY" -delay 50ms 2>"$work/fakegateway.log" &
pids+=($!)
for _ in $(seq 50); do curl -fs "http://$ISSUER/.well-known/openid-configuration" >/dev/null 2>&1 && break; sleep 0.1; done
TOKEN=$("$work/devissuer" -issuer "http://$ISSUER" -key-file "$work/issuer.pem" -print-token -expires-in 7200)
export TOKEN CUSTOMERS ORDERS

DATABASE_URL=$db_url PORT=$PORT OIDC_ISSUER_URL="http://$ISSUER" OIDC_AUDIENCE=order-management \
	AT_USERNAME=bench AT_API_KEY=bench AT_BASE_URL="http://$GATEWAY" LOG_LEVEL=${LOG_LEVEL:-info} \
	"$work/order-management" >"$work/service.log" 2>&1 &
service=$!
pids+=("$service")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

# Customers with 5 orders each, their notifications already sent. New orders
# go to customers past the first page, so the list keeps 5 orders each.
psql "$db_url" -q <<SQL
INSERT INTO customers (code, name, phone, email, created_by)
SELECT 'B-' || g, 'Bench Customer ' || g, '+2547' || lpad(g::text, 8, '0'), 'c' || g || '@example.com', 'seed'
FROM generate_series(1, $CUSTOMERS) g;
INSERT INTO orders (customer_id, item, amount, currency, time, created_by)
SELECT c.id, 'seed-kit-' || k, 10 + k, 'KES', now() - k * interval '1 day', 'seed'
FROM customers c CROSS JOIN generate_series(1, 5) k ORDER BY c.id, k;
INSERT INTO notifications (order_id, channel, recipient, status, attempts, sent_at)
SELECT id, 'sms', '+254700000000', 'sent', 1, now() FROM orders;
ANALYZE;
SQL

declare -A rps p50 p99 errs
# wrk's --latency table: "50%  1.23ms"; normalise to milliseconds.
ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub("us","",v); printf "%.2f", v/1000 } else if (v ~ /ms$/) { sub("ms","",v); printf "%.2f", v } else { sub("s","",v); printf "%.2f", v*1000 } }'; }
# Each run starts once the worker has delivered everything the last one queued.
# Statistics are refreshed too, as autovacuum would be between real bursts,
# so that neither side runs on plans made for a tenth of the rows.
drain() {
	for _ in $(seq 600); do
		if [ "$(psql "$db_url" -Atc "SELECT count(*) FROM notifications WHERE status = 'pending'")" = 0 ]; then
			psql "$db_url" -qc ANALYZE
			return
		fi
		sleep 0.1
	done
	echo "bench: the outbox did not drain" >&2
}

for c in $CONNECTIONS; do
	for name in post_order get_order list_customers; do
		drain
		if [ -n "${PROFILE:-}" ]; then
			curl -s "http://127.0.0.1:6060/debug/pprof/profile?seconds=$(( ${DURATION%s} - 2 ))" >"$work/cpu-$name-$c.prof" &
		fi
		out=$(wrk -t2 -c"$c" -d"$DURATION" --latency -s "scripts/bench/$name.lua" "http://127.0.0.1:$PORT")
		echo "$out" >"$work/wrk-$name-$c.txt"
		rps[$name,$c]=$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}')
		p50[$name,$c]=$(ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
		p99[$name,$c]=$(ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
		errs[$name,$c]=$(echo "$out" | awk '/Non-2xx/ {print $5} /Socket errors/ {print "socket"}' | tr '\n' ' ')

		# pgbench runs the same statements on the same data, with the service
		# idle (its orders' notifications are inserted as sent, so that the
		# worker leaves them alone); placing an order is also measured
		# against the textbook transaction.
		scripts=$name; [ "$name" = post_order ] && scripts="create_order textbook_order"
		for sql in $scripts; do
			drain
			rm -f "$work"/pgbench_log.*
			pgbench -n -M prepared -c "$c" -j 2 -T "${DURATION%s}" -D customers="$CUSTOMERS" -D orders="$ORDERS" \
				-f "scripts/bench/$sql.sql" -l --log-prefix="$work/pgbench_log" "$db_url" >"$work/pgbench-$sql-$c.txt" 2>&1
			rps[pg_$sql,$c]=$(awk '/^tps/ {printf "%.0f", $3}' "$work/pgbench-$sql-$c.txt")
			sort -n -k3,3 "$work"/pgbench_log.* | awk '{print $3}' >"$work/lat.txt"
			n=$(wc -l <"$work/lat.txt")
			p50[pg_$sql,$c]=$(awk -v n="$n" 'NR == int(n*0.50)+1 {printf "%.2f", $1/1000}' "$work/lat.txt")
			p99[pg_$sql,$c]=$(awk -v n="$n" 'NR == int(n*0.99)+1 {printf "%.2f", $1/1000}' "$work/lat.txt")
		done
	done
done
rm -f "$work"/pgbench_log.* "$work/lat.txt"
rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$service/status")
delivered=$(curl -fs "http://$GATEWAY/count")
placed=$(psql "$db_url" -Atc "SELECT count(*) FROM orders WHERE created_by <> 'seed' AND created_by <> 'bench'")

echo
echo "| request | conns | req/s | p50 ms | p99 ms | pgbench, same SQL, tx/s | p50 ms | p99 ms | ratio | errors |"
echo "|---|---|---|---|---|---|---|---|---|---|"
row() { # label name sql conns
	ratio=$(awk -v a="${rps[$2,$4]}" -v b="${rps[pg_$3,$4]}" 'BEGIN { if (b > 0) printf "%.2f", a/b }')
	echo "| $1 | $4 | ${rps[$2,$4]} | ${p50[$2,$4]} | ${p99[$2,$4]} | ${rps[pg_$3,$4]} | ${p50[pg_$3,$4]} | ${p99[pg_$3,$4]} | $ratio | ${errs[$2,$4]:-none} |"
}
for c in $CONNECTIONS; do row 'POST /v1/orders' post_order create_order "$c"; done
for c in $CONNECTIONS; do row 'POST /v1/orders vs the textbook transaction' post_order textbook_order "$c"; done
for c in $CONNECTIONS; do row 'GET /v1/orders/{id}' get_order get_order "$c"; done
for c in $CONNECTIONS; do row 'GET /v1/customers?limit=20' list_customers list_customers "$c"; done
echo
echo "peak RSS of the service: $((rss_kb / 1024)) MiB; orders placed through the API: $placed; SMS the fake gateway accepted: $delivered"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(psql "$admin_url" -Atc 'SHOW server_version'), $(go version | awk '{print $3}')"
