# Ember: `make demo` runs the main job on the embedded stack, `make test` runs the test suite.
# Both create .venv when missing and install what they need (Mosquitto included, through apt-get when root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test check demo demo-docker bench clean mosquitto docker chromium

install: $(STAMP) mosquitto docker chromium

MEMBERS := libs/common services/manager services/builder services/notifier services/flamelet services/mldata
PYPROJECTS := pyproject.toml $(addsuffix /pyproject.toml,$(MEMBERS))

# Every member in editable "compat" mode: each folder is a plain sys.path entry, so `ember` is an
# ordinary PEP 420 namespace package that editors and type checkers follow with no import hook.
$(STAMP): $(PYPROJECTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --config-settings editable_mode=compat \
	  -e 'libs/common[actor,devices,cli,mongo,ui]' $(addprefix -e ,$(wordlist 2,99,$(MEMBERS))) --group dev
	@touch $(STAMP)

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing mosquitto with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	  else \
	    echo "Ember needs the Mosquitto broker: run 'sudo apt-get install mosquitto' (Debian/Ubuntu) and retry." >&2; exit 1; \
	  fi; }

# The Docker runtime's tools: the engine, the CNCF registry and debootstrap (for the base image), through
# apt-get when root, and a running dockerd (started in the background when nothing answers; no systemd
# here). Never fatal: without them the Docker tests skip with the reason (and fail under CI=true).
DOCKER_PKGS := docker.io docker-registry debootstrap
docker:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	  command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	  command -v debootstrap >/dev/null || test -x /usr/sbin/debootstrap || missing="$$missing debootstrap"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing$$missing with apt-get"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	      || echo "warning: apt-get install$$missing failed: the Docker tests will skip" >&2; \
	  fi; \
	  deploy/docker/start-dockerd.sh || echo "warning: no Docker engine: the Docker tests will skip" >&2; \
	elif ! docker info >/dev/null 2>&1; then \
	  echo "no Docker engine answers and this is not root: the Docker tests will skip ($(DOCKER_PKGS) needed)" >&2; \
	fi

# Headless Chromium for the dashboard's browser tests (driven by Playwright with executable_path;
# Playwright's own browser download is never used). Installed when root; otherwise those tests skip.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "note: no chromium: the dashboard's browser tests will be skipped ('sudo apt-get install chromium')." >&2; \
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

# The same job with every actor in a container (the builder's image, pulled by digest from a private registry).
demo-docker: install
	$(PY) -m ember.demo --runtime docker --home .ember-demo-docker --timeout 900

bench: install
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache
