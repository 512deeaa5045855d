"""`python -m ember.notifier`: place actors and publish desired states until SIGTERM/SIGINT.

Configured by `EMBER_*` variables (see `NotifierSettings`); flags override them. `main(argv)` is
also what `ember notifier run` calls. Exit codes are those of `ember.service.run_main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from ember.notifier.app import Notifier
from ember.notifier.settings import NotifierSettings
from ember.service import run_main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ember.notifier", description="Ember notifier: actor placement and desired states.")
    parser.add_argument("--mqtt-url", help="broker URL mqtt://host:port (default: EMBER_MQTT_URL or the one `ember up` recorded)")
    parser.add_argument("--eventlog-url", help="sqlite:///path or mongodb://... (default: EMBER_EVENTLOG_URL or the home's SQLite)")
    parser.add_argument("--home", help="Ember home folder (default: EMBER_HOME or ~/.ember)")
    parser.add_argument("--client-id", dest="notifier_client_id", help="MQTT client id (EMBER_NOTIFIER_CLIENT_ID)")
    parser.add_argument("--placement-timeout", dest="notifier_placement_timeout", type=float,
                        help="seconds a job may wait for capacity before it fails (default 60)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> NotifierSettings:
    return NotifierSettings.from_env(env, **{key: value for key, value in vars(args).items() if value is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("notifier", lambda: settings_from(args), Notifier)


if __name__ == "__main__":
    sys.exit(main())
