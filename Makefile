# EagleEye. `make demo` and `make test` work from a fresh clone: both build .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Override for another build, e.g. `make setup TORCH_SPEC='torch==2.13.0+cu128'`.
TORCH_SPEC ?= torch==2.13.0
PROTO_FILES := $(shell find protos -name '*.proto' | sort)
PYTEST_ARGS ?=

.PHONY: setup tools protos check-protos lint test test-unit demo bench train-default-model clean help

help:
	@echo "make demo     start a worker and stream synthetic video through it"
	@echo "make test     stubs check, lint, type check and the whole test suite"
	@echo "make bench    figures: fault matrix vs nginx and zero-hop, faults beyond it, proxy overhead, Check latency, long fuzz (~14 min)"
	@echo "make setup    create $(VENV) and install the project (editable) with its test tools"
	@echo "make protos   regenerate the gRPC stubs from protos/"
	@echo "make train-default-model   retrain the embedded default model (about 25 minutes on 2 cores)"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

# Debian packages the tests use: prometheus (promtool and a server for the alert-rule and scrape
# tests), docker-compose (validates the compose files without a Docker engine), nginx (the peer
# the benchmark compares the router with; its harness is tested too) and iptables (tests/netns.py
# blackholes a worker's network namespace with DROP rules).
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v docker-compose >/dev/null \
		&& { command -v nginx >/dev/null || test -x /usr/sbin/nginx; } \
		&& { command -v iptables >/dev/null || test -x /usr/sbin/iptables; } || { \
		echo "installing the Debian packages prometheus, docker-compose, nginx and iptables"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends prometheus docker-compose nginx iptables >/dev/null; }

# Stubs are generated beside their .proto files (package `eagleeye`), with .pyi type stubs.
define gen_protos
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(1) --pyi_out=$(1) --grpc_python_out=$(1) \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=$(1) $(PROTO_FILES)
endef

protos: setup
	$(call gen_protos,protos)

check-protos: setup
	@tmp=$$(mktemp -d) && $(call gen_protos,$$tmp) && \
	for f in $$(cd $$tmp && find . -type f); do \
		cmp -s "$$tmp/$$f" "protos/$$f" || { echo "stale generated stub protos/$$f: run 'make protos'"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated stubs are up to date"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-unit: setup
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

test: setup tools check-protos lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) -m client.demo

# Figures, not assertions (docs/benchmarks.md): about 14 minutes on 2 cores. The fault matrix
# installs the Debian package nginx if it is missing.
FUZZ_BENCH_EXAMPLES ?= 1500
bench: setup tools
	$(PY) -m bench.matrix --out bench/out
	$(PY) -m bench.faults --out bench/out
	$(PY) -m bench.check_latency
	$(PY) -m bench.router_bench --calls 200
	@echo "fuzz/abuse pass, $(FUZZ_BENCH_EXAMPLES) examples per property"
	FUZZ_EXAMPLES=$(FUZZ_BENCH_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py

train-default-model: setup
	$(PY) -m detector.defaultmodel.train --minutes 22 --out detector/defaultmodel/default.pt2

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
