# Two commands do everything: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-services diagram test lint typecheck bench clean redis-server

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "eventbus needs Python 3.11 or newer; run: make PYTHON=python3.11 ..." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.cart

# The same scenarios with the shop as six worker processes on a private Redis (it starts
# and stops the server and the workers itself).
demo-services: $(STAMP) redis-server
	$(BIN)/python -m examples.cart.services

# Redraw the cart example's Mermaid diagram in docs/cart.md from a real run of its scenarios.
diagram: $(STAMP)
	$(BIN)/python -m examples.cart.diagram --write docs/cart.md

# Benchmarks against blinker, pyee and bubus, and on Redis against FastStream and raw redis-py
# (the `bench` extra); writes docs/performance.md.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) redis-server
	$(BIN)/python benchmarks/bench.py --repetitions 7 --write docs/performance.md

# The Redis tests start a private redis-server; this installs the program when missing.
redis-server:
	@[ -n "$${EVENTBUS_REDIS_SERVER:-}" ] || scripts/ensure-redis-server

test: $(STAMP) redis-server
	$(BIN)/python -m pytest
	$(BIN)/python -m mypy
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
