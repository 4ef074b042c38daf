# gradcam-serve: `make serve` runs the service, `make test` runs every test.
# Both install what they need, once: libtorch (PyPI torch 2.13.0, under
# ~/.cache/gradcam-serve), the system's LAPACK (apt, for EigenCAM), the release build, the
# reference venvs and data for the tests.

SHELL := /bin/bash
.DEFAULT_GOAL := serve
.PHONY: serve build test test-repeat lint bench fuzz load-test contract-test protocol-test telemetry-test gateway-test image-test openapi clean-cache

# Where libtorch lives (installed on first use; prints its path).
LIBTORCH := $(shell scripts/setup-libtorch.sh)
ifeq ($(LIBTORCH),)
$(error scripts/setup-libtorch.sh failed: see the lines above)
endif
export LIBTORCH
BIN := target/release/gradcam-serve
WEIGHTS ?= weights/resnet50.safetensors
PARITY := target/parity
EXPORTER_SOURCES := python/pyproject.toml $(wildcard python/src/gradcam_export/*.py)

build:
	cargo build --release --locked

# Real weights when present or downloadable; otherwise demo weights, said loudly.
serve: build
	@scripts/setup-lapack.sh || echo "*** no system LAPACK: eigencam, eigengradcam and eigen_smooth will be refused"
	@if [ ! -f "$(WEIGHTS)" ] && ! $(BIN) fetch-weights --weights "$(WEIGHTS)"; then \
	  echo "*** could not fetch the official weights (offline?): serving DEMO RANDOM weights;"; \
	  echo "*** labels are meaningless. Put a ResNet-50 safetensors file at $(WEIGHTS) for real ones."; \
	  exec $(BIN) serve --weights "$(WEIGHTS)" --demo-weights $(ARGS); \
	fi; \
	exec $(BIN) serve --weights "$(WEIGHTS)" $(ARGS)

# Reference answers from pytorch-grad-cam (its own venv, installed once).
$(PARITY)/reference.json: tests/reference/make_reference.py tests/reference/methods_reference.py tests/reference/dff_reference.py tests/reference/metrics_reference.py scripts/setup-pyref.sh
	PY=$$(scripts/setup-pyref.sh) && $$PY tests/reference/make_reference.py $(PARITY)

# The exporter package (python/), installed as users install it into the reference venv
# (torch 2.13.0) and into one with an older torch (2.4.1), again whenever it changes.
$(PARITY)/.exporter: $(EXPORTER_SOURCES) scripts/setup-pyref.sh scripts/setup-export-torch.sh
	mkdir -p $(PARITY)
	for PY in $$(scripts/setup-pyref.sh) $$(scripts/setup-export-torch.sh); do \
	  $$PY -m pip install -q --disable-pip-version-check --no-deps --force-reinstall ./python || exit 1; \
	done
	rm -rf python/build python/src/*.egg-info
	touch $@

# Exported models (torchvision's and a custom module) and pytorch-grad-cam's answers for
# them: tests/api/any_model.rs.
$(PARITY)/exported/reference.json: $(PARITY)/reference.json $(PARITY)/.exporter tests/reference/make_exported.py tests/reference/two_branch.py tests/reference/export_with.py
	PY=$$(scripts/setup-pyref.sh) && OLD=$$(scripts/setup-export-torch.sh) && \
	  cd tests/reference && TQDM_DISABLE=1 $$PY make_exported.py $(abspath $(PARITY)) --old-python $$OLD

# The exporter's tests under both torch versions, the Rust unit, parity and HTTP tests, then
# the OpenAPI contract test against a real server, the KServe v1 / Open Inference Protocol v2
# test with tritonclient and the kserve SDK (scripts/protocol-test.sh), the traces against an
# OTLP receiver and /metrics through Prometheus's parser (scripts/telemetry-test.sh), then the page at GET / in headless
# Chromium (scripts/browser-test.sh; Chromium installed once), with an exported model too.
test: $(PARITY)/reference.json $(PARITY)/exported/reference.json
	scripts/setup-lapack.sh
	for PY in $$(scripts/setup-pyref.sh) $$(scripts/setup-export-torch.sh); do \
	  (cd python && $$PY -m pytest -q -p no:cacheprovider tests) || exit 1; \
	done
	GRADCAM_PARITY_DIR=$(abspath $(PARITY)) cargo test --release --locked -- --include-ignored
	scripts/contract_test.sh
	scripts/protocol-test.sh
	scripts/telemetry-test.sh
	scripts/browser-test.sh --exported $(abspath $(PARITY))/exported/mobilenet_v3_large.pt

# `make test` RUNS times (default 5) in a row; BUSY=1 keeps every core busy meanwhile (one
# `yes` per core), to show that no test depends on the machine's speed. Logs and a summary
# line per run: target/repeat-test/. See scripts/repeat-test.sh.
test-repeat:
	RUNS=$(RUNS) BUSY=$(BUSY) scripts/repeat-test.sh

# Performance figures against pytorch-grad-cam and PyTorch; rewrites BENCHMARKS.md.
bench:
	scripts/bench.sh

# Formatting, clippy, ruff on the exporter package, then the deployment files: hadolint on
# docker/Dockerfile, deploy/k8s/ against the Kubernetes schemas (kubernetes-validate),
# deploy/kserve/ against the InferenceService schema (the KServe SDK's classes) and its pod
# against the Kubernetes schemas, the limits compose, nginx.conf and config.toml must agree
# on (scripts/deploy_lint.py; its tools in a venv, installed once).
lint:
	cargo fmt --all -- --check
	cargo clippy --release --locked --workspace --all-targets -- -D warnings
	TOOLS=$$(scripts/setup-deploy-tools.sh) && $$TOOLS/ruff check python && $$TOOLS/ruff format --check python
	# The scripts only we run: pyflakes' checks (undefined names, unused imports), no style.
	TOOLS=$$(scripts/setup-deploy-tools.sh) && $$TOOLS/ruff check --select F bench tests/reference scripts
	TOOLS=$$(scripts/setup-deploy-tools.sh) && $$TOOLS/python scripts/deploy_lint.py

clean-cache:
	rm -rf $(HOME)/.cache/gradcam-serve

# The gateway (docker/nginx.conf) with real nginx in front of two replicas on loopback
# (installs Debian's nginx once, as root).
gateway-test: build
	scripts/gateway-test.sh

# The container image and the compose stack, for real, with podman (installed once from
# Debian, as root): builds docker/Dockerfile, runs it (demo weights) against the release
# binary's answers, SIGTERM mid-request, as deploy/k8s runs it, then docker/compose.yaml with
# podman-compose (nginx + two replicas, one stopped under traffic). Base-image stand-ins and
# the build cache stay under ~/.cache/gradcam-serve/podman. See scripts/image-test.sh.
image-test: build
	scripts/image-test.sh

# Fuzzing (fuzz/, cargo-fuzz; RUSTC_BOOTSTRAP=1 on stable): the decode+preprocess target and
# the request-parsing target, FUZZ_SECONDS each (default 60); prints the executions run.
# A crash's input lands in fuzz/artifacts/<target>/: commit it under tests/fuzz-regressions/.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# Overload and soak: 12 clients against a queue of 4 for LOAD_SECONDS (default 120) after a
# warm-up of 50 explanations; checks 200 or 503 + Retry-After only, /health within 100 ms, VmRSS
# after the run within 10% of after warm-up. LOAD_ARGS passes more flags (see --help).
LOAD_SECONDS ?= 120
load-test: build
	python3 scripts/load_test.py --bin $(BIN) --duration $(LOAD_SECONDS) $(LOAD_ARGS)

# Contract test (also the last step of `make test`): schemathesis (its own venv, installed once) against the served OpenAPI spec,
# all its checks: no 5xx, statuses, content types, headers and bodies as documented, valid requests accepted,
# invalid ones refused. MAX_EXAMPLES=100 per operation (about 30 s); see scripts/contract_test.sh.
contract-test: build
	scripts/contract_test.sh

# KServe v1 and Open Inference Protocol v2 (also a step of `make test`): tritonclient[http]
# and the kserve SDK (their own venv, installed once) against two real servers, every answer
# compared with POST /explain's, bad input in each protocol's error shape, the limits.
protocol-test: build
	scripts/protocol-test.sh

# Telemetry (also a step of `make test`): the OpenTelemetry spans a real server exports, at an
# OTLP receiver built on opentelemetry-proto, and /metrics through prometheus_client's parser.
telemetry-test: build
	scripts/telemetry-test.sh
