"""`python -m ember.notifier`: place actors and publish desired states until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from ember import log as ember_log
from ember.errors import EmberError
from ember.notifier.app import Notifier
from ember.notifier.settings import NotifierSettings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ember.notifier", description="Ember notifier: actor placement and desired states.")
    parser.add_argument("--mqtt-url", help="broker URL mqtt://host:port (default: EMBER_MQTT_URL or the one `ember up` recorded)")
    parser.add_argument("--eventlog-url", help="sqlite:///path or mongodb://... (default: EMBER_EVENTLOG_URL or the home's SQLite)")
    parser.add_argument("--home", help="Ember home folder (default: EMBER_HOME or ~/.ember)")
    parser.add_argument("--placement-timeout", dest="notifier_placement_timeout", type=float,
                        help="seconds a job may wait for capacity before it fails (default 60)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace, env: dict[str, str] | None = None) -> NotifierSettings:
    return NotifierSettings.from_env(env, **{key: value for key, value in vars(args).items() if value is not None})


async def run(settings: NotifierSettings) -> int:
    """Run until SIGTERM/SIGINT; the exit code of the process."""
    notifier = Notifier(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, notifier.stop)
    async with notifier:
        await notifier.wait_stopped()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from(args)
        ember_log.configure(settings.log_format, settings.log_level, service="notifier")
        return asyncio.run(run(settings))
    except (ValueError, EmberError) as exc:
        print(f"ember notifier: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
