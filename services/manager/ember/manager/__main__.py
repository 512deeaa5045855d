"""`python -m ember.manager`: run the manager until SIGTERM/SIGINT.

Configured by `EMBER_*` variables (see `ManagerSettings`); flags override them. `main(argv)` is
also what `ember manager run` calls. Exit codes are those of `ember.service.run_main`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ember.manager.app import ManagerService
from ember.manager.settings import ManagerSettings
from ember.service import run_main, service_parser, settings_from


def parse_args(argv: Sequence[str] | None) -> ManagerSettings:
    parser = service_parser("manager", "Ember manager: job requests and the job state machine.", eventlog=True, client_id=True)
    return settings_from(ManagerSettings, parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("manager", lambda: parse_args(argv), ManagerService)


if __name__ == "__main__":
    sys.exit(main())
