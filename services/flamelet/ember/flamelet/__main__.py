"""`python -m ember.flamelet --node N`: run one worker node's agent until SIGTERM/SIGINT.

Configured by `EMBER_*` variables (see `FlameletSettings`); flags override them. `main(argv)` is
also what `ember flamelet run` calls. Exit codes are those of `ember.service.run_main`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ember.flamelet.app import Flamelet
from ember.flamelet.settings import FlameletSettings
from ember.service import run_main, service_parser, settings_from


def parse_args(argv: Sequence[str] | None) -> FlameletSettings:
    parser = service_parser("flamelet", "Ember flamelet: one worker node's agent.")
    parser.add_argument("--node", dest="node_id", metavar="NODE", help="node id (default: EMBER_NODE_ID)")
    parser.add_argument("--data-dir", dest="mldata_data_dir", help="the node's mldata folder (default: EMBER_MLDATA_DATA_DIR)")
    parser.add_argument("--capabilities", dest="flamelet_capabilities", help="comma list of roles: aggregator,learner")
    parser.add_argument("--cpus", dest="flamelet_cpus", type=int, help="CPUs to announce (default: the machine's)")
    parser.add_argument("--memory-mb", dest="flamelet_memory_mb", type=int, help="memory to announce (default: the machine's)")
    parser.add_argument("--keepalive", type=int, help="MQTT keepalive in seconds (default 5)")
    parser.add_argument("--leave-actors", dest="flamelet_leave_actors", action="store_true", default=None,
                        help="on shutdown, leave actors running (a restarted flamelet re-adopts them)")
    return settings_from(FlameletSettings, parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("flamelet", lambda: parse_args(argv), Flamelet)


if __name__ == "__main__":
    sys.exit(main())
