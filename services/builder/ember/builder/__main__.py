"""`python -m ember.builder`: run the builder until SIGTERM/SIGINT.

Configured by `EMBER_*` variables (see `BuilderSettings`); flags override them. `main(argv)` is
also what `ember builder run` calls. Exit codes are those of `ember.service.run_main`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ember.builder.app import BuilderService
from ember.builder.settings import BuilderSettings
from ember.service import run_main, service_parser, settings_from


def parse_args(argv: Sequence[str] | None) -> BuilderSettings:
    parser = service_parser("builder", "Ember builder: venv artifacts for the process runtime.", eventlog=True, client_id=True)
    parser.add_argument("--artifacts-dir", dest="builder_artifacts_dir", help="where artifacts live (EMBER_BUILDER_ARTIFACTS_DIR)")
    parser.add_argument("--pip-args", dest="builder_pip_args", help="extra pip install arguments (EMBER_BUILDER_PIP_ARGS)")
    return settings_from(BuilderSettings, parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("builder", lambda: parse_args(argv), BuilderService)


if __name__ == "__main__":
    sys.exit(main())
