#!/usr/bin/env bash
# Lints the GitHub Actions workflows with a pinned actionlint, installing it first if needed.
# actionlint also runs shellcheck on `run:` scripts when shellcheck is on PATH.
set -euo pipefail

ACTIONLINT_VERSION=v1.7.12

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PATH="$(go env GOPATH)/bin:$PATH"

if ! actionlint -version 2>/dev/null | head -n1 | grep -qx "$ACTIONLINT_VERSION"; then
  echo "installing actionlint $ACTIONLINT_VERSION"
  go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
fi

actionlint
echo "actionlint $ACTIONLINT_VERSION: .github/workflows/*.yml ok"
