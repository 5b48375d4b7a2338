# Every target creates .venv by itself when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build pinned for machines without a GPU. A GPU user installs their own torch into
# .venv first; the check below keeps it.
TORCH_VERSION ?= 2.13.0
XGRAMMAR_VERSION ?= 0.2.8
STAMP := $(VENV)/.expertkit-installed
DEMO_DIR ?= demo-out

.PHONY: venv test lint types unit integration quick demo fmt clean system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e ".[dev]"
	# xgrammar (grammar-constrained decoding) without its triton dependency, which is CUDA-only and
	# multi-GB: its CPU path needs only apache-tvm-ffi.
	$(BIN)/pip install -q --no-deps "xgrammar==$(XGRAMMAR_VERSION)" "apache-tvm-ffi>=0.1.11,<0.2"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples scripts benchmarks
	$(BIN)/ruff format --check src tests examples scripts benchmarks

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m "not integration" -q

integration: $(STAMP)
	$(BIN)/pytest -m integration -q

# A quick pass while working: no subprocess-heavy tests (DDP, SIGKILL + resume, pty) and no embedded model.
quick: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not integration"

# A C compiler for the native decoder (compiled once per machine on first use), servers the tests
# start themselves (a private PostgreSQL for SQL evaluation, a Redis server for the
# job queue across hosts) and the browser the dashboard's tests drive (Debian's chromium and its
# matching chromium-driver): installed here when missing, so a fresh machine fails loudly at set-up
# rather than skipping what it cannot run.
system-deps:
	@command -v $${CC:-cc} >/dev/null 2>&1 || \
		(echo "installing gcc for the native decoder (apt-get)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev)
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || \
		(echo "installing PostgreSQL (apt-get)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)
	@command -v redis-server >/dev/null 2>&1 || command -v valkey-server >/dev/null 2>&1 || \
		(echo "installing redis-server (apt-get)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server)
	@(command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1) || \
		(echo "installing chromium + chromium-driver (apt-get)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

# lint + type check + the whole pytest suite (unit and integration).
test: lint types system-deps
	$(BIN)/pytest -q

fmt: $(STAMP)
	$(BIN)/ruff format src tests examples scripts benchmarks
	$(BIN)/ruff check --fix src tests examples scripts benchmarks

demo: $(STAMP)
	bash scripts/demo.sh $(DEMO_DIR)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache $(DEMO_DIR)
