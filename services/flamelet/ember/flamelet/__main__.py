"""`python -m ember.flamelet --node N`: run one worker node's agent until SIGTERM/SIGINT.

Configured by `EMBER_*` variables (see `FlameletSettings`); flags override them. `main(argv)` is
also what `ember flamelet run` calls. Exit codes are those of `ember.service.run_main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from ember.flamelet.app import Flamelet
from ember.flamelet.settings import FlameletSettings
from ember.service import run_main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ember.flamelet", description="Ember flamelet: one worker node's agent.")
    parser.add_argument("--node", help="node id (default: EMBER_NODE_ID)")
    parser.add_argument("--mqtt-url", help="broker URL mqtt://host:port (default: EMBER_MQTT_URL or the one `ember up` recorded)")
    parser.add_argument("--home", help="Ember home folder (default: EMBER_HOME or ~/.ember)")
    parser.add_argument("--data-dir", dest="mldata_data_dir", help="the node's mldata folder (default: EMBER_MLDATA_DATA_DIR)")
    parser.add_argument("--capabilities", dest="flamelet_capabilities", help="comma list of roles: aggregator,learner")
    parser.add_argument("--cpus", dest="flamelet_cpus", type=int, help="CPUs to announce (default: the machine's)")
    parser.add_argument("--memory-mb", dest="flamelet_memory_mb", type=int, help="memory to announce (default: the machine's)")
    parser.add_argument("--keepalive", type=int, help="MQTT keepalive in seconds (default 5)")
    parser.add_argument("--leave-actors", dest="flamelet_leave_actors", action="store_true", default=None,
                        help="on shutdown, leave actors running (a restarted flamelet re-adopts them)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> FlameletSettings:
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    if "node" in overrides:
        overrides["node_id"] = overrides.pop("node")
    return FlameletSettings.from_env(env, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("flamelet", lambda: settings_from(args), Flamelet)


if __name__ == "__main__":
    sys.exit(main())
