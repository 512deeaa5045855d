# Ember: `make demo` runs the main job on the embedded stack, `make test` runs the test suite.
# Both create .venv when missing and install what they need (Mosquitto included, through apt-get when root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean mosquitto

install: $(STAMP) mosquitto

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing mosquitto with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	  else \
	    echo "Ember needs the Mosquitto broker: run 'sudo apt-get install mosquitto' (Debian/Ubuntu) and retry." >&2; exit 1; \
	  fi; }

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m ember.demo

bench: install
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache
