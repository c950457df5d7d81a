# make demo | make test | make bench        (everything installs itself into .venv)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench venv mosquitto clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "iotgate needs Python >= 3.11 (set PYTHON=python3.11)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# Mosquitto is the upstream broker of the local stack; Debian's package where the binary is missing.
mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto"; apt-get update -q && apt-get install -y -q mosquitto; fi

test: venv mosquitto
	$(BIN)/python -m pytest

demo: venv
	$(BIN)/python deploy/demo.py

bench: venv mosquitto
	$(BIN)/python bench/provision_bench.py
	$(BIN)/python bench/policy_bench.py
	$(BIN)/python bench/gateway_bench.py
	$(BIN)/python bench/devices_idle_bench.py --devices 2000

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
