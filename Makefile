# The README's two commands, on a machine that has only python3:
#   make serve   install Agora into .venv and run `agora serve` (extra flags: ARGS="...")
#   make test    install it with the test extras and run the test suite (PYTEST_ARGS="...")

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := serve

PYTHON ?= python3
VENV := .venv
ARGS ?=
PYTEST_ARGS ?=
# Two workers on the two cores CI has; measured faster than one (see README, Tests).
PYTEST_WORKERS ?= 2

PIP := $(VENV)/bin/python -m pip --disable-pip-version-check --no-input -qq

.PHONY: serve test readme clean

# Agora's own modules compiled ahead (a no-op when up to date): where the environment
# says PYTHONDONTWRITEBYTECODE, as this CI's does, every start would otherwise compile
# them again, a sixth of the start-up time, and the test suite starts hundreds of servers.
COMPILE := $(VENV)/bin/python -m compileall -q -j 0 src/agora

serve: $(VENV)/.installed
	@$(COMPILE)
	exec $(VENV)/bin/agora serve $(ARGS)

test: $(VENV)/.installed-test
	@$(COMPILE)
	PYTHON=$(VENV)/bin/python bash scripts/test-env.sh \
	    $(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	    || { echo "Agora needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1)" >&2; exit 1; }
	@echo "creating $(VENV)"
	@# Debian's python3 has no venv module until python3-venv is installed.
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	    rm -rf $(VENV); \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing Debian's python3-venv"; \
	        DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null \
	        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; \
	    fi; \
	    $(PYTHON) -m venv $(VENV); }

# After adding or changing a setting: regenerate the README's configuration reference.
readme: $(VENV)/.installed
	$(VENV)/bin/python scripts/update-readme.py

# Re-install only when the dependencies may have changed.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	@echo "installing Agora into $(VENV)"
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	@echo "installing Agora and its test dependencies into $(VENV)"
	$(PIP) install -e '.[test]'
	@touch $@ $(VENV)/.installed

# Leaves agora-data/ alone: it holds the accounts and data of the server `make serve` ran.
clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -not -path './agora-data/*' -exec rm -rf {} +
