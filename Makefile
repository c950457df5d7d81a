# make demo | make test | make bench | make loadtest        (everything installs itself into .venv)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench loadtest venv system-deps clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "iotgate needs Python >= 3.11 (set PYTHON=python3.11)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages the stack needs where they are missing: Mosquitto (the upstream broker; mosquitto_passwd),
# the openssl tool (the independent certificate checks of tests and demo) and mosquitto-clients (mosquitto_sub,
# the device under test of the `iotgate qualify` tests).
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v mosquitto_sub >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	if [ -n "$$missing" ]; then echo "installing$$missing"; apt-get update -q && apt-get install -y -q $$missing; fi

test: venv system-deps
	$(BIN)/python -m pytest

demo: venv system-deps
	$(BIN)/python deploy/demo.py

# a bounded headless Locust run (200 devices, 2 workers, 20 s, attacker mix) against a local stack it starts and stops
loadtest: venv system-deps
	$(BIN)/python deploy/loadtest.py

# one table, the gateway against Mosquitto in the same run (bench/results/<date>.json and .md); the other
# scripts in bench/ study one component each and can be run on their own
bench: venv system-deps
	$(BIN)/python bench/suite.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
