"""`python -m ember.builder`: run the builder until SIGTERM/SIGINT.

Configured by `EMBER_*` variables (see `BuilderSettings`); flags override them. `main(argv)` is
also what `ember builder run` calls. Exit codes are those of `ember.service.run_main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ember.builder.app import BuilderService
from ember.builder.settings import BuilderSettings
from ember.service import run_main


def parse_args(argv: Sequence[str] | None) -> BuilderSettings:
    parser = argparse.ArgumentParser(prog="python -m ember.builder", description="Ember builder: venv artifacts for the process runtime.")
    parser.add_argument("--mqtt-url", help="broker URL mqtt://host:port (EMBER_MQTT_URL)")
    parser.add_argument("--eventlog-url", help="sqlite:///path or mongodb://... (EMBER_EVENTLOG_URL)")
    parser.add_argument("--home", help="Ember home folder (EMBER_HOME)")
    parser.add_argument("--client-id", dest="builder_client_id", help="MQTT client id (EMBER_BUILDER_CLIENT_ID)")
    parser.add_argument("--artifacts-dir", dest="builder_artifacts_dir", help="where artifacts live (EMBER_BUILDER_ARTIFACTS_DIR)")
    parser.add_argument("--pip-args", dest="builder_pip_args", help="extra pip install arguments (EMBER_BUILDER_PIP_ARGS)")
    parser.add_argument("--log-level", help="debug, info, warning, error (EMBER_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], help="(EMBER_LOG_FORMAT)")
    args = parser.parse_args(argv)
    return BuilderSettings.from_env(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("builder", lambda: parse_args(argv), BuilderService)


if __name__ == "__main__":
    sys.exit(main())
