#!/usr/bin/env bash
# `make run`: the service on the local PostgreSQL, with the development token
# issuer (cmd/devissuer) as its OIDC provider, and a token printed for curl.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-8080}
ISSUER_ADDR=${ISSUER_ADDR:-127.0.0.1:9000}
DB=${DB:-order_management}
mkdir -p .dev

# The local server, or whatever TEST_DATABASE_URL names; a database of our own on it.
admin_url=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
if ! psql "$admin_url" -Atqc 'SELECT 1' >/dev/null 2>&1; then
	echo "run: PostgreSQL does not answer at $admin_url" >&2
	echo "  start it (e.g. pg_ctlcluster <version> main start) or set TEST_DATABASE_URL" >&2
	exit 1
fi
if [ "$(psql "$admin_url" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
	psql "$admin_url" -qc "CREATE DATABASE $DB" >/dev/null
fi
export DATABASE_URL=${DATABASE_URL:-${admin_url%/*}/$DB?sslmode=disable}

go build -o .dev/order-management . 
go build -o .dev/devissuer ./cmd/devissuer

.dev/devissuer -addr "$ISSUER_ADDR" -issuer "http://$ISSUER_ADDR" -key-file .dev/issuer.pem 2>.dev/devissuer.log &
issuer_pid=$!
trap 'kill $issuer_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
	curl -fsS "http://$ISSUER_ADDR/.well-known/openid-configuration" >/dev/null 2>&1 && break
	sleep 0.1
done

token=$(.dev/devissuer -issuer "http://$ISSUER_ADDR" -key-file .dev/issuer.pem -print-token -expires-in 86400)
echo "$token" > .dev/token
cat <<MSG

  The service is starting on http://localhost:$PORT with database $DB.
  A token with every scope (valid 24 h) is in .dev/token. Try, in another terminal:

    curl -s -H "Authorization: Bearer \$(cat .dev/token)" -H 'Content-Type: application/json' \\
      -d '{"code":"CUST-0007","name":"Amina Njoroge","phone":"+254712345678"}' http://localhost:$PORT/v1/customers

    curl -s -H "Authorization: Bearer \$(cat .dev/token)" http://localhost:$PORT/v1/customers

MSG

OIDC_ISSUER_URL="http://$ISSUER_ADDR" OIDC_AUDIENCE=order-management PORT=$PORT .dev/order-management
