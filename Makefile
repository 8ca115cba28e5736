# The README's commands: `make serve` and `make test`. Everything installs into ./.venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS ?= models
EXTRAS ?= server,dev
STAMP := $(VENV)/.installed-$(subst ,,$(EXTRAS))
# perf_analyzer lives in a venv of its own (tritonclient 2.41.1 is the last wheel that ships it).
PA_VENV ?= .venv-pa
PA_STAMP := $(PA_VENV)/.installed

.PHONY: install serve export test test-fast bench soak protos clean perf-analyzer test-container native native-check

install: $(STAMP)

# pip builds the native transport (native/, Rust, via setuptools-rust) with the package: a change
# to its sources reinstalls (cargo rebuilds only what changed, in native/target).
NATIVE_SRC := native/Cargo.toml native/Cargo.lock native/build.rs $(wildcard native/src/*.rs)

$(STAMP): pyproject.toml setup.py $(NATIVE_SRC)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

perf-analyzer: $(PA_STAMP)

$(PA_STAMP):
	bash scripts/install_perf_analyzer.sh $(PA_VENV)
	touch $@

# mimo's native transport (Rust): built by `make install`; checked with cargo's tests and clippy.
native: install
	$(BIN)/python -c "from mimo.serving.transports import native as n; assert n.available(), n.IMPORT_ERROR; print('native transport:', n.native.STACK)"

native-check:
	cd native && cargo fmt --check && cargo test --locked -q && cargo clippy --locked --all-targets -- -D warnings

# Export the notebook's models into ./models (only when it is empty), then serve them. Without a
# Rust toolchain the native transport is not built and the server runs on grpc.aio (it says so).
serve: install
	@if [ -z "$$(ls -A $(MODELS) 2>/dev/null)" ]; then $(BIN)/mimo export --out $(MODELS); fi
	exec $(BIN)/mimo serve --model-repository $(MODELS)

export: install
	$(BIN)/mimo export --out $(MODELS)

test: install perf-analyzer
	$(BIN)/python -m pytest -q -ra

# Build the server image (podman, demo models baked in), run it, call it, SIGTERM it mid-request.
test-container: install
	bash scripts/container_test.sh

test-fast: install
	$(BIN)/python -m pytest -q -ra tests/unit

# `make bench` (not part of `make test`): mimo against its floors on loopback, pinned (server core 0,
# perf_analyzer core 1); `make bench PEERS=1` adds the peers of ../shared/peers in the same run.
# Writes bench/results/bench.md and bench/results/bench.png. BENCH_ARGS passes more options.
PEERS ?= 0
BENCH_ARGS ?=
bench: perf-analyzer
	$(MAKE) install EXTRAS=server,dev,bench
	$(BIN)/python bench/run.py $(if $(filter 1 yes true,$(PEERS)),--peers) $(BENCH_ARGS)

# `make soak` (not part of `make test`): c=64 over mlp, qa and posts for SOAK_MINUTES against
# `mimo serve`, reporting requests, errors by code and the server's RSS growth.
SOAK_MINUTES ?= 10
soak: install
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) $(if $(wildcard $(MODELS)/posts),--repository $(MODELS))

protos: install
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf build dist *.egg-info .pytest_cache native/target serving/_transport*.so
