# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

COVERAGE_MIN ?= 85
GO ?= go

.PHONY: run test cover vet fmt lint-deploy bench clean

## run: the service on the local PostgreSQL, with a development token issuer, ready for curl
run:
	@scripts/run-local.sh

## test: vet, then the whole suite with -race against a real PostgreSQL, failing under $(COVERAGE_MIN)% coverage
test:
	@test -z "$$(gofmt -l .)" || { echo "gofmt would change:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	scripts/with-postgres.sh $(GO) test -race -count=1 -coverpkg=./... -coverprofile=coverage.out ./...
	@total=$$($(GO) tool cover -func=coverage.out | awk '/^total:/ {sub("%","",$$3); print $$3}'); \
	echo "statement coverage: $$total% (minimum $(COVERAGE_MIN)%)"; \
	awk -v t="$$total" -v m="$(COVERAGE_MIN)" 'BEGIN { exit !(t >= m) }' || { echo "coverage below $(COVERAGE_MIN)%"; exit 1; }

## cover: open the coverage report of the last `make test`
cover:
	$(GO) tool cover -html=coverage.out

## lint-deploy: actionlint, helm lint/template, ansible syntax check, compose files
lint-deploy:
	scripts/lint-deploy.sh

clean:
	rm -rf coverage.out .dev

## bench: load the service with wrk and compare with pgbench running the same SQL (see README)
bench:
	scripts/bench.sh

## drills: fault drills under load (minutes; not part of make test), then the fuzz targets for a bounded time
# -race instruments only the test process (load clients, fake gateway, token
# issuer); the service under drill is a plain subprocess build. It costs the
# drills little, since they spend their time waiting on the service.
.PHONY: drills
# The fuzzing budget (FUZZTIME) is a count of inputs, not a duration: Go
# 1.26's fuzz coordinator can report a spurious "context deadline exceeded"
# when a duration ends mid-input (go.dev/issue/75804, fixed in Go 1.27).
drills:
	scripts/with-postgres.sh $(GO) test -tags drill -race -count=1 -timeout 20m -run Drill -v .
	@for f in $$($(GO) test -list 'Fuzz.*' . | grep ^Fuzz); do $(GO) test -run XXX -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-150000x} . || exit 1; done
