"""`python -m ember.manager`: run the manager until SIGTERM/SIGINT.

Configured by `EMBER_*` variables (see `ManagerSettings`); flags override them. `main(argv)` is
also what `ember manager run` calls. Exit codes are those of `ember.service.run_main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ember.manager.app import ManagerService
from ember.manager.settings import ManagerSettings
from ember.service import run_main


def parse_args(argv: Sequence[str] | None) -> ManagerSettings:
    parser = argparse.ArgumentParser(prog="python -m ember.manager", description="Ember manager: job requests and the job state machine.")
    parser.add_argument("--mqtt-url", help="broker URL mqtt://host:port (EMBER_MQTT_URL)")
    parser.add_argument("--eventlog-url", help="sqlite:///path or mongodb://... (EMBER_EVENTLOG_URL)")
    parser.add_argument("--home", help="Ember home folder (EMBER_HOME)")
    parser.add_argument("--client-id", dest="manager_client_id", help="MQTT client id (EMBER_MANAGER_CLIENT_ID)")
    parser.add_argument("--log-level", help="debug, info, warning, error (EMBER_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], help="(EMBER_LOG_FORMAT)")
    args = parser.parse_args(argv)
    return ManagerSettings.from_env(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("manager", lambda: parse_args(argv), ManagerService)


if __name__ == "__main__":
    sys.exit(main())
