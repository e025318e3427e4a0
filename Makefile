# Every target makes .venv itself; `make run` and `make test` are all a fresh clone needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test lint bench browser-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/waybill init
	$(BIN)/waybill demo
	$(BIN)/waybill serve

# Debian's Chromium for the browser tests (never a downloaded browser); npm tools beside it.
browser-deps:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core) >/dev/null \
		|| echo "could not install chromium: browser tests will skip"; \
	fi
	@if [ -f tests/js/package.json ] && command -v npm >/dev/null && [ ! -d tests/js/node_modules ]; then \
		(cd tests/js && npm ci --silent --no-audit --no-fund) || echo "npm install failed: tests needing it will skip"; \
	fi

# One test process per core (pytest-xdist); a module's tests stay in one process, so its
# module-scoped servers start once. TEST_PROCESSES=0 runs them all in this one.
TEST_PROCESSES ?= auto
test: $(STAMP) browser-deps
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadscope --durations=30

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/_run_all.py

clean:
	rm -rf $(VENV) instance .pytest_cache
