#!/usr/bin/env bash
# Smoke test for a running order-management instance: every route once, in an order that builds on
# what came before, stopping at the first unexpected status.
#
#   scripts/smoke.sh http://localhost:8080 "$TOKEN"
#   BASE_URL=https://... TOKEN=... scripts/smoke.sh
#
# The token needs all six scopes (customers:, orders:, numbers: read and write). Orders are placed with
# channel "none" and imported with notify=false, so nobody is messaged; set SMOKE_CHANNEL=sms (or
# email, or empty for the server's NOTIFY_RULES) to send real notifications. What it creates stays:
# customers with orders cannot be deleted.
set -euo pipefail

base=${1:-${BASE_URL:-}}
token=${2:-${TOKEN:-}}
if [[ -z $base || -z $token ]]; then
  echo "usage: $0 BASE_URL TOKEN (or set BASE_URL and TOKEN)" >&2
  exit 2
fi
base=${base%/}
channel=${SMOKE_CHANNEL-none}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The token goes to curl through a file so that it never shows in the process list.
(umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$tmp/auth")

# Set just before a call to expect, which resets them: extra request headers, and whether to send the token.
extra_headers=()
send_token=yes
# The Location header of the last response.
location=""

# expect STATUS METHOD PATH [BODY [CONTENT_TYPE]] sends the request and stops the script, printing the
# response body, unless the answer has STATUS. CONTENT_TYPE defaults to application/json.
expect() {
  local want=$1 method=$2 path=$3
  local args=(--silent --show-error --connect-timeout 5 --max-time 30
    --output "$tmp/body" --dump-header "$tmp/headers" --write-out '%{http_code}'
    --request "$method")
  if [[ $send_token == yes ]]; then
    args+=(--header "@$tmp/auth")
  fi
  args+=(${extra_headers[@]+"${extra_headers[@]}"})
  if [[ $# -ge 4 ]]; then
    args+=(--header "Content-Type: ${5:-application/json}" --data-binary "$4")
  fi
  extra_headers=()
  send_token=yes

  local got
  if ! got=$(curl "${args[@]}" "$base$path"); then
    echo "FAIL $method $path: no answer from $base" >&2
    exit 1
  fi
  location=$(sed -n 's/^[Ll]ocation:[[:space:]]*//p' "$tmp/headers" | tr -d '\r' | tail -n 1)
  if [[ $got != "$want" ]]; then
    echo "FAIL $method $path -> $got, want $want" >&2
    cat "$tmp/body" >&2
    echo >&2
    exit 1
  fi
  echo "ok  $method $path -> $got"
}

# created_id prints the id at the end of the last response's Location header.
created_id() {
  local id=${location##*/}
  if [[ ! $id =~ ^[0-9]+$ ]]; then
    echo "FAIL no id in Location header: '$location'" >&2
    exit 1
  fi
  printf '%s' "$id"
}

digits() { printf '%0*d' "$1" $(((RANDOM * 32768 + RANDOM) % (10 ** $1))); }

run="$(date +%s)-$RANDOM"
code="SMOKE-$run"
channel_field=""
if [[ -n $channel ]]; then
  channel_field=", \"channel\": \"$channel\""
fi

expect 200 GET /healthz
expect 200 GET /readyz
expect 200 GET /openapi.yaml

# Customers.
expect 201 POST /v1/customers \
  "{\"code\": \"$code\", \"name\": \"Amina Njoroge\", \"phone\": \"+2547$(digits 8)\", \"email\": \"amina@example.com\"}"
customer=$(created_id)
expect 200 GET "/v1/customers/$customer"
expect 200 PATCH "/v1/customers/$customer" \
  "{\"name\": \"Amina W. Njoroge\", \"phone\": \"+2547$(digits 8)\"}"
expect 200 GET "/v1/customers?limit=5"
expect 201 POST /v1/customers/import \
  "[{\"code\": \"$code-A\", \"name\": \"Otieno Kamau\", \"phone\": \"+2547$(digits 8)\"},
    {\"code\": \"$code-B\", \"name\": \"Wanjiru Mwangi\", \"phone\": \"+2547$(digits 8)\", \"email\": \"wanjiru@example.com\"}]"
expect 201 POST /v1/customers/import \
  "code,name,phone,email
$code-C,Baraka Odhiambo,+2547$(digits 8),baraka@example.com
" text/csv

# Phone-number inventory.
number_digits=$(digits 8)
expect 201 POST /v1/numbers \
  "{\"value\": \"+55 84 9${number_digits:0:4}-${number_digits:4}\", \"monthyPrice\": \"0.03\", \"setupPrice\": \"3.40\", \"currency\": \"U\$\"}"
number=$(created_id)
expect 200 GET "/v1/numbers/$number"
expect 200 PUT "/v1/numbers/$number" \
  "{\"value\": \"+55849$number_digits\", \"monthlyPrice\": 0.05, \"setupPrice\": 3.40, \"currency\": \"U\$\"}"
expect 200 PATCH "/v1/numbers/$number" '{"setupPrice": "2.90"}'
expect 200 GET "/v1/numbers?limit=5"
expect 204 DELETE "/v1/numbers/$number"
expect 404 GET "/v1/numbers/$number"

# Orders.
expect 201 POST /v1/orders \
  "{\"customer_id\": $customer, \"item\": \"whole-exome-sequencing\", \"amount\": \"1250.00\"$channel_field}"
order=$(created_id)
idempotent_order="{\"customer_code\": \"$code\", \"item\": \"carrier-screening\", \"amount\": 480.50, \"currency\": \"KES\", \"time\": \"2026-11-21T09:30:00Z\"$channel_field}"
extra_headers=(--header "Idempotency-Key: smoke-$run")
expect 201 POST /v1/orders "$idempotent_order"
first_location=$location
extra_headers=(--header "Idempotency-Key: smoke-$run")
expect 201 POST /v1/orders "$idempotent_order"
if [[ $location != "$first_location" ]]; then
  echo "FAIL replayed Idempotency-Key: Location $location, want $first_location" >&2
  exit 1
fi
expect 200 GET "/v1/orders/$order"
expect 200 GET "/v1/orders?customer_id=$customer"
expect 201 POST "/v1/orders/import?notify=false" \
  "customer_code,item,amount
$code,whole-exome-sequencing,1250.00
$code-A,carrier-screening,480.50
" text/csv

# Deletes, and the refusals.
expect 201 POST /v1/customers \
  "{\"code\": \"$code-D\", \"name\": \"Kioko Mutua\", \"phone\": \"+2547$(digits 8)\"}"
spare=$(created_id)
expect 204 DELETE "/v1/customers/$spare"
expect 404 GET "/v1/customers/$spare"
expect 409 DELETE "/v1/customers/$customer"
send_token=no
expect 401 GET /v1/customers
