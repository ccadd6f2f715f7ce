# Helix developer tasks. Every target installs what it needs (virtualenv, pip, npm) itself.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
LOWEST := .venv-lowest
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
# The Node.js client and oracle agent (their own package.json and lockfile).
NODE_EXAMPLES := examples/node
NODE_STAMP := $(NODE_EXAMPLES)/node_modules/.installed
BUF := node_modules/.bin/buf
PROTOS := $(sort $(wildcard protos/helix/v1/*.proto))
# Vendored protos (protos/third_party/README.md): in the descriptor set only, never compiled
# to Python (googleapis-common-protos and grpcio-health-checking ship those modules).
THIRD_PARTY := protos/third_party
THIRD_PARTY_PROTOS := $(sort $(shell find $(THIRD_PARTY) -path $(THIRD_PARTY)/etcd -prune -o -name '*.proto' -print))
# etcd's v3 API, stripped of its Go annotations (protos/third_party/etcd/vendor.py): compiled
# to Python (helix.etcdpb, the etcd client's stubs), never in the protoset (Helix does not serve it).
ETCD_PROTO_ROOT := $(THIRD_PARTY)/etcd
ETCD_PROTOS := $(sort $(wildcard $(ETCD_PROTO_ROOT)/helix/etcdpb/*.proto))
HOST ?= 127.0.0.1
PORT ?= 50051
ARGS ?=
# Oracle worker process counts of `make bench-scale`.
WORKERS ?= 1 2

.PHONY: help run serve test test-lowest check fix lint format-check typecheck buf-lint buf-breaking node-check baseline stubs generate check-generated bench bench-scale clean lock errors-doc

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(NODE_STAMP): $(NODE_EXAMPLES)/package.json $(NODE_EXAMPLES)/package-lock.json
	cd $(NODE_EXAMPLES) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: $(STAMP) ## the main job: a rastrigin-10D search on the embedded suite, to the end
	$(VENV)/bin/helix run examples/dna/rastrigin.yaml --oracle rastrigin --budget 20000 $(ARGS)

serve: $(STAMP) ## serve the embedded suite (all four services on one port) for other clients
	$(VENV)/bin/helix up --host $(HOST) --port $(PORT) --generator-dna-dir examples/dna $(ARGS)

test: $(STAMP) $(NPM_STAMP) $(NODE_STAMP) ## run the test suite (buf, protoc-gen-es, tsc and the Node examples from npm)
	$(PY) -m pytest $(ARGS)

test-lowest: $(NPM_STAMP) $(NODE_STAMP) ## the tests on the oldest releases pyproject's ranges allow (constraints-lowest.txt)
	@$(LOWEST)/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf $(LOWEST) && $(PYTHON) -m venv $(LOWEST); }
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST)/bin/python -m pip install --quiet -c constraints-lowest.txt -e '.[dev]'
	$(LOWEST)/bin/python -m pytest -p no:cacheprovider $(ARGS)

check: format-check lint typecheck buf-lint buf-breaking node-check check-generated ## every static check CI runs

format-check: $(STAMP)
	$(VENV)/bin/ruff format --check services tests benchmarks scripts

lint: $(STAMP)
	$(VENV)/bin/ruff check services tests benchmarks scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

node-check: ## the Node examples and the dashboard's script parse (node --check)
	npm --prefix $(NODE_EXAMPLES) run --silent check
	node --check services/helix/dashboard/static/app.js

buf-lint: $(NPM_STAMP)
	$(BUF) lint
	$(BUF) format --diff --exit-code

BASELINE := protos/baseline/helix-v1.binpb

buf-breaking: $(NPM_STAMP) ## fail if protos/ breaks the released helix.v1 contract ($(BASELINE); docs/contracts.md)
	$(BUF) breaking --against $(BASELINE)

baseline: $(NPM_STAMP) ## at a release only: record protos/ as the contract buf-breaking holds later changes to
	$(BUF) build --exclude-source-info -o $(BASELINE)

stubs: $(STAMP) $(NPM_STAMP) ## generate buf.gen.yaml's Go and TypeScript stubs into a temp dir, build and run them
	$(PY) scripts/stubs.py $(ARGS)

fix: $(STAMP) $(NPM_STAMP) ## format and auto-fix what can be fixed
	$(VENV)/bin/ruff format services tests benchmarks scripts
	$(VENV)/bin/ruff check --fix services tests benchmarks scripts
	$(BUF) format -w

# protoc output: Python modules, gRPC stubs and .pyi stubs for both from protos/helix and
# etcd's API (helix.etcdpb); and
# a descriptor set (with comments) of those plus the vendored health, reflection and
# google.rpc protos, for `grpcurl -protoset generated/helix.protoset`, `buf curl --schema`
# and the server's reflection service. One shell line (check-generated runs it in a `&&` chain).
define protoc
	$(PY) -m grpc_tools.protoc -I protos \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=$(1) --grpc_python_out=$(1) --mypy_out=quiet:$(1) --mypy_grpc_out=quiet:$(1) \
	  $(PROTOS) && \
	$(PY) -m grpc_tools.protoc -I $(ETCD_PROTO_ROOT) \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=$(1) --grpc_python_out=$(1) --mypy_out=quiet:$(1) --mypy_grpc_out=quiet:$(1) \
	  $(ETCD_PROTOS) && \
	$(PY) -m grpc_tools.protoc -I $(THIRD_PARTY) -I protos \
	  --include_imports --include_source_info --descriptor_set_out=$(1)/helix.protoset \
	  $(PROTOS) $(THIRD_PARTY_PROTOS) && \
	$(PY) $(THIRD_PARTY)/runtime_health.py $(1)/helix.protoset
endef

generate: $(STAMP) ## regenerate generated/ from protos/
	rm -rf generated && mkdir -p generated
	$(call protoc,generated)

check-generated: $(STAMP) ## fail if generated/ differs from what the protos produce
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(call protoc,$$tmp) && \
	if ! diff -r "$$tmp" generated >/dev/null; then \
	  diff -r "$$tmp" generated | head -n 20; \
	  echo "generated/ is stale: run 'make generate' and commit the result" >&2; exit 1; \
	fi && echo "generated/ matches protos/"

errors-doc: $(STAMP) ## rewrite the generated tables of docs/errors.md from the code
	$(PY) -c 'from pathlib import Path; from helix.common.reasons import render_errors_doc as r; p = Path("docs/errors.md"); p.write_text(r(p.read_text()))'

bench: $(STAMP) ## run the benchmarks (each prints its figures and ratios)
	@ls benchmarks/bench_*.py >/dev/null 2>&1 || { echo "no benchmarks yet"; exit 0; }
	for b in benchmarks/bench_*.py; do \
	  [[ $$b == benchmarks/bench_scale.py ]] || $(PY) $$b; \
	done

# Not in `bench`: it starts a cluster per worker count and takes minutes per point.
bench-scale: $(STAMP) ## search throughput vs oracle worker processes, WORKERS="1 2 4 8 12"
	$(PY) benchmarks/bench_scale.py --workers "$(WORKERS)" $(ARGS)

lock: ## re-resolve the dependency ranges and rewrite requirements.lock
	rm -rf /tmp/helix-lock && $(PYTHON) -m venv /tmp/helix-lock
	/tmp/helix-lock/bin/pip install --quiet --upgrade pip
	/tmp/helix-lock/bin/pip install --quiet -e '.[dev]'
	{ echo "# Exact versions CI and 'make' install (constraints for pyproject's ranges)."; \
	  echo "# Regenerate with 'make lock'. Keeps protoc output (generated/) reproducible."; \
	  /tmp/helix-lock/bin/pip freeze --exclude-editable | sort -f; } > requirements.lock

clean: ## remove the virtualenv, node_modules and caches
	rm -rf $(VENV) $(LOWEST) node_modules $(NODE_EXAMPLES)/node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
