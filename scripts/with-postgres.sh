#!/usr/bin/env bash
# Runs a command with TEST_DATABASE_URL (and DATABASE_URL, when unset) naming a
# PostgreSQL server that answers: the one TEST_DATABASE_URL already names, else
# the local server on 127.0.0.1:5432, else a throwaway cluster made with
# initdb/pg_ctl in a temporary directory and removed afterwards.
set -euo pipefail

pg_bin() {
	local name=$1
	if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
	ls /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1
}

answers() { # url: the server accepts this URL's connection, authentication included
	local psql
	psql=$(pg_bin psql)
	[ -n "$psql" ] && PGCONNECT_TIMEOUT=3 "$psql" "$1" -Atqc 'SELECT 1' >/dev/null 2>&1
}

if [ -n "${TEST_DATABASE_URL:-}" ]; then
	answers "$TEST_DATABASE_URL" || { echo "with-postgres: TEST_DATABASE_URL does not answer" >&2; exit 1; }
elif answers "postgres://postgres@127.0.0.1:5432/postgres"; then
	export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
else
	initdb=$(pg_bin initdb)
	pg_ctl=$(pg_bin pg_ctl)
	if [ -z "$initdb" ] || [ -z "$pg_ctl" ]; then
		echo "with-postgres: no PostgreSQL answers and initdb/pg_ctl are not installed" >&2
		echo "  install PostgreSQL (e.g. apt-get install postgresql) or set TEST_DATABASE_URL" >&2
		exit 1
	fi
	dir=$(mktemp -d)
	port=$(( 20000 + RANDOM % 20000 ))
	# PostgreSQL refuses to run as root; run the cluster as an unprivileged user.
	as=()
	if [ "$(id -u)" = 0 ]; then
		id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
		chown postgres "$dir"
		as=(runuser -u postgres --)
	fi
	cleanup() { "${as[@]}" "$pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
	trap cleanup EXIT
	"${as[@]}" "$initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
	"${as[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/log" -w -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
	export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
	echo "with-postgres: started a throwaway cluster on port $port" >&2
fi
export DATABASE_URL="${DATABASE_URL:-$TEST_DATABASE_URL}"
"$@"
