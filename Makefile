# Set-up and the two everyday commands. `make run` and `make test` each create the
# virtual environment on first use, so on a fresh machine nothing else is needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= toy
# The tests run in one process per core, at most 4 (pytest-xdist); PYTEST_WORKERS= runs
# them in this one process.
PYTEST_WORKERS ?= -n auto --maxprocesses 4
# PyTorch first, so pip takes the wheel this machine already has instead of resolving
# a fresh one; override (e.g. TORCH_SPEC="torch torchvision") on other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install run test test-fast lint

$(VENV)/.installed: pyproject.toml
	@# Debian packages some tests use: Chromium (the report test opens the HTML report in it),
	@# PostgreSQL (the storage tests start their own server from its binaries) and iproute2
	@# (the cluster test joins network namespaces to this host).
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "note: install$$missing (apt-get install$$missing) for the tests that use them"; fi; fi
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/sigmatune run --preset $(PRESET)

test: install
	$(PY) -m pytest -q $(PYTEST_WORKERS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_WORKERS)

lint: install
	$(VENV)/bin/ruff check .
