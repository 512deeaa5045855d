"""`python -m ember.mldata [--port P] [--data-dir DIR] [--token T] [--node N] ...`"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from ember.errors import EmberError
from ember.log import configure
from ember.mldata.app import serve
from ember.mldata.settings import MldataSettings


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
    settings = parse_args(argv)
    configure(settings.log_format, settings.log_level, service="mldata")
    try:
        asyncio.run(serve(settings))
    except EmberError as exc:
        print(f"mldata: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
