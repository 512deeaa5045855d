"""`python -m ember.mldata [--port P] [--data-dir DIR] [--token T] [--node N] ...`

Serves one node's data until SIGTERM/SIGINT. Configured by `EMBER_*` variables (see
`MldataSettings`); flags override them. `main(argv)` is also what `ember mldata run` calls. Exit
codes are those of `ember.service.run_main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ember.mldata.app import MldataService
from ember.mldata.settings import MldataSettings
from ember.service import run_main


def parse_args(argv: Sequence[str] | None = None) -> MldataSettings:
    parser = argparse.ArgumentParser(prog="python -m ember.mldata", description="Ember mldata: Arrow Flight + MQTT ingestion of one node")
    parser.add_argument("--port", type=int, help="Flight port (EMBER_MLDATA_PORT, default 8815; 0 = any free)")
    parser.add_argument("--host", help="interface to bind (EMBER_MLDATA_HOST, default 0.0.0.0)")
    parser.add_argument("--data-dir", help="partition directory (EMBER_MLDATA_DATA_DIR)")
    parser.add_argument("--token", help="node token (EMBER_MLDATA_TOKEN; default: generated into <data-dir>/_token)")
    parser.add_argument("--node", help="node id (EMBER_NODE_ID)")
    parser.add_argument("--mqtt-url", help="broker (EMBER_MQTT_URL)")
    parser.add_argument("--flush-rows", type=int, help="ingestion flush size (EMBER_MLDATA_FLUSH_ROWS)")
    parser.add_argument("--flush-seconds", type=float, help="ingestion flush age (EMBER_MLDATA_FLUSH_SECONDS)")
    parser.add_argument("--no-ingest", action="store_true", help="Flight only: do not subscribe to data/{tag}")
    args = parser.parse_args(argv)
    return MldataSettings.from_env(
        mldata_port=args.port,
        mldata_host=args.host,
        mldata_data_dir=args.data_dir,
        mldata_token=args.token,
        node_id=args.node,
        mqtt_url=args.mqtt_url,
        mldata_flush_rows=args.flush_rows,
        mldata_flush_seconds=args.flush_seconds,
        mldata_ingest=False if args.no_ingest else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("mldata", lambda: parse_args(argv), MldataService)


if __name__ == "__main__":
    sys.exit(main())
