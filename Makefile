# elbolab: `make bench` measures and reports; `make test` runs the test suite.
# Both install what they need into .venv on first use (PyTorch from PyPI is a few GB, once).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.elbolab-installed
RUST_STAMP := $(VENV)/.elbolab-rust-installed
RUST_SRC := $(wildcard backends/rust/src/*.rs backends/rust/src/*/*.rs) backends/rust/Cargo.toml backends/rust/pyproject.toml
WHEELS := target/wheels
RUN    ?= results/scratch/bench-$(shell date -u +%Y%m%dT%H%M%SZ).json
ARGS   ?=
# The versions the suite passed with, used where the Python is the one they were tested on (3.11);
# `make CONSTRAINTS=` installs the newest versions the lower bounds allow instead.
LOCK   := harness/elbolab/constraints.txt
CONSTRAINTS ?= $(shell $(PYTHON) -c 'import sys; print("$(LOCK)" if sys.version_info[:2] == (3, 11) else "")')
# What `make` installs: every backend, the report and history extras, and the test tools
EXTRAS ?= torch,numba,test

.PHONY: bench bench-full quick trends test test-quiet setup rust browser system lint clean

TRAIN_STEPS ?= 300

STORE ?= sqlite:///results/history.sqlite

bench: setup
	$(BIN)/elbolab run --out $(RUN) --train $(TRAIN_STEPS) $(ARGS)
	$(BIN)/elbolab history ingest --store $(STORE) $(RUN)
	$(BIN)/elbolab report $(RUN) -o reports/$(notdir $(basename $(RUN))).html

# The whole matrix: every variant at every size (make bench draws eps inside the call only where
# the claims check reads it)
bench-full: ARGS += --full
bench-full: bench

# The history store as a page: every case's median per commit, with the change points found
trends: setup
	$(BIN)/elbolab history page --store $(STORE) -o reports/trends.html

# The CI-sized version: a small matrix, short samples, a shorter training run (150 steps: enough to
# learn, as the mean of the last 20 steps' losses says; 60 were not).
quick: ARGS += --quick
quick: TRAIN_STEPS := 150
quick: RUN := results/scratch/quick-$(shell date -u +%Y%m%dT%H%M%SZ).json
quick: bench

# The Rust unit tests first (no doc-tests: the crate has none), pytest last, so the log closes
# on pytest's summary of the whole suite. pytest runs in TEST_JOBS processes, a test file per
# process (--dist loadfile keeps a file's module fixtures, e.g. a built history, in one process).
TEST_JOBS ?= 2
test: setup system
	@if command -v cargo >/dev/null; then cargo test -q --release --lib --manifest-path backends/rust/Cargo.toml; \
	 else echo "cargo not found: skipping the Rust unit tests"; fi
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile

# The tests that need an otherwise idle machine (marked quiet: a 10% step found between separate
# runs of past commits), one process, nothing else running
test-quiet: setup
	ELBOLAB_QUIET_TESTS=1 $(BIN)/python -m pytest -q -p no:xdist -m quiet

setup: $(STAMP) $(RUST_STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[$(EXTRAS)]'
	mkdir -p results/scratch reports
	touch $@

# The Rust extension: an abi3 wheel built by maturin, installed into the venv. Without cargo the
# rust backends report themselves unavailable (and their cases are recorded as skipped).
rust: $(RUST_STAMP)
$(RUST_STAMP): $(STAMP) $(RUST_SRC)
	@if ! command -v cargo >/dev/null; then \
	  echo "elbolab: cargo not found; the rust backends will be skipped (install Rust with rustup to build them)"; \
	else \
	  rm -f $(WHEELS)/elbolab_rust-*.whl && \
	  (cd backends/rust && ../../$(BIN)/maturin build --release --quiet -o ../../$(WHEELS)) && \
	  $(BIN)/pip install -q --force-reinstall --no-deps $(WHEELS)/elbolab_rust-*.whl && \
	  touch $@; \
	fi

# System packages some tests need, from Debian's packages where this user can install them (root);
# each test that needs one skips with the reason where it is missing:
#   chromium    the report's headless-browser test
#   valgrind    instruction-count mode (callgrind), with its headers for the client requests
#   postgresql  the history store's tests against a real server
SYSTEM_PACKAGES := chromium valgrind postgresql
system:
	@missing=""; \
	 command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing="$$missing chromium"; \
	 command -v valgrind >/dev/null && [ -f /usr/include/valgrind/callgrind.h ] || missing="$$missing valgrind"; \
	 ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	 if [ -n "$$missing" ]; then \
	   if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	     echo "elbolab: installing$$missing (Debian packages)"; \
	     (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) || \
	       echo "elbolab: could not install$$missing; the tests that need them will be skipped"; \
	   else echo "elbolab: missing$$missing and cannot install it here; the tests that need them will be skipped"; fi; \
	 fi
browser: system

lint:
	$(BIN)/lint-imports
	$(BIN)/ruff check harness backends tests
	$(BIN)/ruff format --check harness backends tests

clean:
	rm -rf $(VENV) target backends/rust/target reports/*.html
