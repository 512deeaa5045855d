"""`python -m ember.notifier`: place actors and publish desired states until SIGTERM/SIGINT.

Configured by `EMBER_*` variables (see `NotifierSettings`); flags override them. `main(argv)` is
also what `ember notifier run` calls. Exit codes are those of `ember.service.run_main`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ember.notifier.app import Notifier
from ember.notifier.settings import NotifierSettings
from ember.service import run_main, service_parser, settings_from


def parse_args(argv: Sequence[str] | None) -> NotifierSettings:
    parser = service_parser("notifier", "Ember notifier: actor placement and desired states.", eventlog=True, client_id=True)
    parser.add_argument("--placement-timeout", dest="notifier_placement_timeout", type=float,
                        help="seconds a job may wait for capacity before it fails (default 60)")
    return settings_from(NotifierSettings, parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("notifier", lambda: parse_args(argv), Notifier)


if __name__ == "__main__":
    sys.exit(main())
