"""A private Mosquitto: where the binary is and the one config Ember starts it with.

`ember up` (`ember.stack`) and the test fixtures (`ember.testing.Broker`) both use
`mosquitto_config`, so the tests run against the broker settings users get.
"""

from __future__ import annotations

import getpass
import shutil
from pathlib import Path


def mosquitto_binary() -> str:
    """The `mosquitto` executable on PATH (or in /usr/sbin, which is not on every user's PATH)."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: run 'make install' or 'apt-get install mosquitto'")
    return found


def mosquitto_config(port: int, data_dir: Path) -> str:
    """Loopback listener, TCP_NODELAY, persistence in `data_dir`, deep QoS 1 queues, log to stdout.

    `set_tcp_nodelay`: without it, Nagle's algorithm and delayed ACKs hold back every small
    request and reply (DESIGN.md, "The bus"). The queue limits let a persistent session that
    is briefly away keep every QoS 1 message published to it meanwhile.
    """
    return "\n".join(
        [
            f"user {getpass.getuser()}",  # as root, Mosquitto would drop to `mosquitto` and lose the data dir
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {data_dir}/",
            "autosave_interval 10",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "",
        ]
    )
