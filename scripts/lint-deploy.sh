#!/usr/bin/env bash
# Checks the delivery files: GitHub workflows, Helm chart, Ansible playbook, Keycloak realm
# and compose files. Installs the missing tools (actionlint and helm with `go install`,
# ansible from Debian packages).
set -euo pipefail

HELM_VERSION=v3.22.0
CHART=deploy/helm/order-management

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PATH="$(go env GOPATH)/bin:$PATH"

step() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

step "actionlint"
scripts/actionlint.sh

step "helm lint / helm template ($CHART)"
if ! command -v helm >/dev/null; then
  echo "installing helm $HELM_VERSION (takes a few minutes to compile)"
  go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
helm lint --strict "$CHART"
helm lint --strict "$CHART" -f "$CHART/ci/lint-values.yaml"
helm template order-management "$CHART" -f "$CHART/ci/lint-values.yaml" >/dev/null
echo "helm template: ok"
if helm template order-management "$CHART" >/dev/null 2>&1; then
  echo "helm template without config.OIDC_ISSUER_URL should fail" >&2
  exit 1
fi
echo "helm template without config.OIDC_ISSUER_URL: refused, as intended"

step "ansible-playbook --syntax-check"
if ! command -v ansible-playbook >/dev/null; then
  echo "installing ansible from Debian packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ansible >/dev/null
fi
ansible-playbook --syntax-check -i deploy/ansible/inventory.example.ini deploy/ansible/playbook.yml

step "Keycloak realm (deploy/keycloak/realm.json)"
python3 - deploy/keycloak/realm.json <<'PY'
import json, sys

realm = json.load(open(sys.argv[1]))
scopes = {s["name"]: s for s in realm["clientScopes"]}
api = ["customers:read", "customers:write", "orders:read", "orders:write", "numbers:read", "numbers:write"]
client = next(c for c in realm["clients"] if c["clientId"] == "order-management-cli")
problems = []
if realm["realm"] != "order-management":
    problems.append("realm name")
# A realm file that lists clientScopes gets none of Keycloak's built-in ones: without `basic`,
# access tokens carry no `sub`.
if "basic" not in scopes or "basic" not in client["defaultClientScopes"]:
    problems.append("basic scope (sub claim) missing")
for name in api:
    if scopes.get(name, {}).get("attributes", {}).get("include.in.token.scope") != "true":
        problems.append(f"scope {name} missing or not in the token's scope claim")
    if name not in client["defaultClientScopes"]:
        problems.append(f"scope {name} not a default scope of the client")
if not (client.get("serviceAccountsEnabled") and client.get("directAccessGrantsEnabled")):
    problems.append("client needs client credentials and direct access grants")
if not any(m["protocolMapper"] == "oidc-audience-mapper"
           and m["config"].get("included.custom.audience") == "order-management"
           for m in client.get("protocolMappers", [])):
    problems.append("audience mapper for order-management missing")
if problems:
    sys.exit("realm.json: " + "; ".join(problems))
print("realm.json: valid JSON; scopes, client and audience mapper present")
PY

step "compose files"
if docker compose version >/dev/null 2>&1; then
  docker compose -f compose.yaml config -q
  echo "compose.yaml: ok (docker compose config)"
  IMAGE=example/order-management:check DATABASE_URL=x OIDC_ISSUER_URL=x OIDC_AUDIENCE=x \
    AT_USERNAME=x AT_API_KEY=x docker compose -f compose.prod.yaml config -q
  echo "compose.prod.yaml: ok (docker compose config)"
else
  # Without the compose plugin, check at least that the files are well-formed YAML.
  py=""
  for candidate in python3 /usr/bin/python3; do
    if "$candidate" -c 'import yaml' 2>/dev/null; then py=$candidate; break; fi
  done
  if [ -n "$py" ]; then
    "$py" - compose.yaml compose.prod.yaml <<'PY'
import sys, yaml
for f in sys.argv[1:]:
    yaml.safe_load(open(f))
    print(f + ": well-formed YAML (docker compose plugin not installed)")
PY
  else
    echo "compose files: skipped (neither the docker compose plugin nor PyYAML is available)"
  fi
fi

printf '\nAll deployment checks passed.\n'
