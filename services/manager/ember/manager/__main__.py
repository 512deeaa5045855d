"""`python -m ember.manager`: run the manager until SIGTERM/SIGINT.

Configured by `EMBER_*` variables (see `ManagerSettings`); flags override them. `run(settings)`
is what `ember manager run` calls. Exit codes: 0 on a clean stop, an `EmberError`'s own code
(e.g. 6 when the broker cannot be reached), 1 when a loop died.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from ember import log as logging
from ember.errors import EmberError
from ember.manager.app import serve
from ember.manager.settings import ManagerSettings


def run(settings: ManagerSettings) -> int:
    """Serve until stopped; returns the process exit code."""
    logger = logging.get_logger("ember.manager")
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        return 0
    except EmberError as exc:
        logger.error("manager.failed", error=exc.message, code=exc.code)
        return exc.exit_code
    except Exception as exc:  # a loop died: loud, non-zero
        logger.error("manager.crashed", error=repr(exc))
        return 1
    return 0


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
    settings = parse_args(argv)
    logging.configure(settings.log_format, settings.log_level, service="manager")
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
