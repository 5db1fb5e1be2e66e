# EagleEye. `make demo` and `make test` work from a fresh clone: both build .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Override for another build, e.g. `make setup TORCH_SPEC='torch==2.13.0+cu128'`.
TORCH_SPEC ?= torch==2.13.0
PROTO_FILES := $(shell find protos -name '*.proto' | sort)
# buf (lint and breaking-change check of protos/), from the npm package @bufbuild/buf.
BUF_VERSION ?= 1.75.0
BUF := $(VENV)/buf/node_modules/.bin/buf
# The API as last released (`make api-release`): what the breaking-change check compares with.
API_RELEASE := protos/api-release.binpb
PYTEST_ARGS ?=

.PHONY: setup tools protos check-protos docs lint lint-protos api-release test test-unit demo bench export-onnx k8s-monitoring train-default-model clean help

help:
	@echo "make demo     start a worker and stream synthetic video through it"
	@echo "make test     stubs check, lint, type check and the whole test suite"
	@echo "make bench    figures: fault matrix vs nginx and zero-hop, faults beyond it, proxy overhead, Check latency, clients behaving badly, scale-out, the client library, the worker's own cost, long fuzz (~20 min)"
	@echo "make setup    create $(VENV) and install the project (editable) with its test tools"
	@echo "make protos   regenerate the gRPC stubs from protos/ (into api/)"
	@echo "make docs     regenerate docs/client-api.md (the client library's reference) from its docstrings"
	@echo "make lint     ruff, mypy, and buf lint + breaking-change check of protos/ (against the last API release)"
	@echo "make train-default-model   retrain the embedded default model (about 25 minutes on 2 cores)"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[detector,onnx,video,dev]"
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

# Stubs (with .pyi type stubs) of protos/eagleeye/PATH are generated into api/PATH, the import package
# eagleeye.api.PATH: the wire contract that the client, the router and the worker share. protoc names
# Python modules after the proto files' paths, so the generated imports (and the module names the
# messages record) are moved under eagleeye.api; the proto files, packages and wire names are unchanged.
define gen_protos
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(1) --pyi_out=$(1) --grpc_python_out=$(1) \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=$(1) $(PROTO_FILES) && \
	find $(1) -type f -name '*_pb2*.py*' -exec sed -i -E \
		-e 's/^(from|import) eagleeye\./\1 eagleeye.api./' \
		-e 's/(BuildTopDescriptorsAndMessages\(DESCRIPTOR, .)eagleeye\./\1eagleeye.api./' {} +
endef

protos: setup
	@tmp=$$(mktemp -d) && $(call gen_protos,$$tmp) && \
	for f in $$(cd $$tmp/eagleeye && find . -type f); do install -D -m 644 "$$tmp/eagleeye/$$f" "api/$$f"; done; \
	rm -rf $$tmp; echo "stubs written into api/"

check-protos: setup
	@tmp=$$(mktemp -d) && $(call gen_protos,$$tmp) && \
	for f in $$(cd $$tmp/eagleeye && find . -type f); do \
		cmp -s "$$tmp/eagleeye/$$f" "api/$$f" || { echo "stale generated stub api/$${f#./}: run 'make protos'"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated stubs are up to date"

docs: setup
	$(PY) docs/apiref.py > docs/client-api.md.tmp && mv docs/client-api.md.tmp docs/client-api.md

# mypy cannot follow the editable install's import hook, so it reads the package through a tree of
# links laid out as installed: $(VENV)/typecheck/eagleeye/NAME -> NAME/ for each package-dir entry.
TYPECHECK := $(VENV)/typecheck
lint: setup lint-protos
	$(VENV)/bin/ruff check .
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/eagleeye && \
	for d in $$($(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"].values())'); do \
		ln -s "$(CURDIR)/$$d" "$(TYPECHECK)/eagleeye/$$d"; done
	MYPYPATH=$(TYPECHECK) $(VENV)/bin/mypy --explicit-package-bases $(TYPECHECK)/eagleeye bench tests

$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(VENV)/buf @bufbuild/buf@$(BUF_VERSION)

lint-protos: setup $(BUF)
	cd protos && $(CURDIR)/$(BUF) lint
	cd protos && $(CURDIR)/$(BUF) breaking --against $(CURDIR)/$(API_RELEASE)

# Release the API: record it as the breaking-change baseline and tag it, e.g. `make api-release VERSION=0.2.0`.
api-release: setup $(BUF)
	@test -n "$(VERSION)" || { echo "usage: make api-release VERSION=X.Y.Z"; exit 2; }
	cd protos && $(CURDIR)/$(BUF) build --exclude-source-info -o $(CURDIR)/$(API_RELEASE)
	git add $(API_RELEASE) && git commit -m "API $(VERSION): breaking-change baseline" && git tag api/v$(VERSION)

test-unit: setup
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

test: setup tools check-protos lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) -m eagleeye.harness.demo

# Figures, not assertions (docs/benchmarks.md): about 16 minutes on 2 cores. The fault matrix
# installs the Debian package nginx if it is missing.
FUZZ_BENCH_EXAMPLES ?= 1500
bench: setup tools
	$(PY) -m bench.matrix --out bench/out
	$(PY) -m bench.faults --out bench/out
	$(PY) -m bench.check_latency
	$(PY) -m bench.backends --compile --rounds 3
	$(PY) -m bench.router_bench --calls 200
	$(PY) -m bench.hostile --out bench/out
	$(PY) -m bench.scale --out bench/out
	$(PY) -m bench.scale --service-ms 10 --max-batch 8 --no-faults --out bench/out/scale-fast
	$(PY) -m bench.library --out bench/out
	$(PY) -m bench.worker --out bench/out
	@echo "fuzz/abuse pass, $(FUZZ_BENCH_EXAMPLES) examples per property"
	FUZZ_EXAMPLES=$(FUZZ_BENCH_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py

# The embedded model as ONNX (the ONNX Runtime backend's default), from default.pt2.
export-onnx: setup
	$(PY) -m eagleeye.detector.export --out detector/defaultmodel/default.onnx

# The Kubernetes monitoring component's PrometheusRule and dashboard ConfigMap, from observability/.
k8s-monitoring: setup
	$(PY) deploy/kubernetes/monitoring/generate.py

train-default-model: setup
	$(PY) -m eagleeye.detector.defaultmodel.train --minutes 22 --out detector/defaultmodel/default.pt2

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
