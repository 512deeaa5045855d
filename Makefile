# Ember: `make demo` runs the main job on the embedded stack, `make test` runs the test suite.
# Both create .venv when missing and install what they need (Mosquitto included, through apt-get when root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test check demo bench clean mosquitto

install: $(STAMP) mosquitto

MEMBERS := libs/common services/manager services/builder services/notifier services/flamelet services/mldata
PYPROJECTS := pyproject.toml $(addsuffix /pyproject.toml,$(MEMBERS))

# Every member in editable "compat" mode: each folder is a plain sys.path entry, so `ember` is an
# ordinary PEP 420 namespace package that editors and type checkers follow with no import hook.
$(STAMP): $(PYPROJECTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --config-settings editable_mode=compat \
	  -e 'libs/common[actor,devices,cli,mongo]' $(addprefix -e ,$(wordlist 2,99,$(MEMBERS))) --group dev
	@touch $(STAMP)

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing mosquitto with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	  else \
	    echo "Ember needs the Mosquitto broker: run 'sudo apt-get install mosquitto' (Debian/Ubuntu) and retry." >&2; exit 1; \
	  fi; }

# deploy/'s compose files are checked with Debian's docker-compose (`config` only: no engine needed);
# installed through apt-get when root, else its tests skip.
install: docker-compose
docker-compose:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing docker-compose with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; \
	  else \
	    echo "docker-compose is not installed: the tests of deploy/compose skip (sudo apt-get install docker-compose)" >&2; \
	  fi; }
.PHONY: docker-compose

test: install check
	$(PY) -m pytest -q

# Static checks: ruff (pyflakes and import rules) over everything, mypy over the whole namespace.
check: install
	$(PY) -m ruff check libs services tests bench examples
	$(PY) -m mypy

demo: install
	$(PY) -m ember.demo

bench: install
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache
