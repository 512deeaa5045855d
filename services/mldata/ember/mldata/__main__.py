"""`python -m ember.mldata [--port P] [--data-dir DIR] [--token T] [--node N] ...`

Serves one node's data until SIGTERM/SIGINT. Configured by `EMBER_*` variables (see
`MldataSettings`); flags override them. `main(argv)` is also what `ember mldata run` calls. Exit
codes are those of `ember.service.run_main`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ember.mldata.app import MldataService
from ember.mldata.settings import MldataSettings
from ember.service import run_main, service_parser, settings_from


def parse_args(argv: Sequence[str] | None = None) -> MldataSettings:
    parser = service_parser("mldata", "Ember mldata: Arrow Flight + MQTT ingestion of one node")
    parser.add_argument("--port", dest="mldata_port", metavar="PORT", type=int, help="Flight port (EMBER_MLDATA_PORT, default 8815; 0 = any free)")
    parser.add_argument("--host", dest="mldata_host", metavar="HOST", help="interface to bind (EMBER_MLDATA_HOST, default 0.0.0.0)")
    parser.add_argument("--data-dir", dest="mldata_data_dir", metavar="DIR", help="partition directory (EMBER_MLDATA_DATA_DIR)")
    parser.add_argument("--token", dest="mldata_token", metavar="TOKEN", help="node token (EMBER_MLDATA_TOKEN; default: generated into <data-dir>/_token)")
    parser.add_argument("--node", dest="node_id", metavar="NODE", help="node id (EMBER_NODE_ID)")
    parser.add_argument("--flush-rows", dest="mldata_flush_rows", metavar="N", type=int, help="ingestion flush size (EMBER_MLDATA_FLUSH_ROWS)")
    parser.add_argument("--flush-seconds", dest="mldata_flush_seconds", metavar="SECONDS", type=float, help="ingestion flush age (EMBER_MLDATA_FLUSH_SECONDS)")
    parser.add_argument("--no-ingest", dest="mldata_ingest", action="store_false", default=None,
                        help="Flight only: do not subscribe to data/{tag}")
    return settings_from(MldataSettings, parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("mldata", lambda: parse_args(argv), MldataService)


if __name__ == "__main__":
    sys.exit(main())
