"""Every reach into aiomqtt's and paho-mqtt's private attributes, in one place.

Ember relies on three things neither library promises:

- `aiomqtt.Client._client` is the `paho.mqtt.client.Client` it drives;
- that paho client's `_in_callback_mutex` is a lock paho holds while it runs a callback;
- aiomqtt installs its socket writer as the paho client's `on_socket_register_write`.

`check` verifies them (tests/test_mqtt_compat.py runs it, so an upgrade that changes them fails
there, loudly); `write_eagerly` uses them and falls back to aiomqtt's own writer when they are gone.
"""

from __future__ import annotations

import threading
from typing import Any

import aiomqtt
import paho.mqtt.client as paho_mqtt

from ember.log import get_logger

log = get_logger("ember.mqtt_compat")


class CompatError(RuntimeError):
    """aiomqtt or paho-mqtt no longer has an attribute Ember relies on."""


def paho_client(client: aiomqtt.Client) -> paho_mqtt.Client:
    """The paho client inside an aiomqtt client."""
    paho = getattr(client, "_client", None)
    if not isinstance(paho, paho_mqtt.Client):
        raise CompatError(f"aiomqtt.Client._client is {type(paho).__name__}, not a paho.mqtt.client.Client")
    return paho


def check(client: aiomqtt.Client) -> None:
    """Raise CompatError naming the first private attribute that is missing or changed."""
    paho = paho_client(client)
    mutex = getattr(paho, "_in_callback_mutex", None)
    if not (callable(getattr(mutex, "acquire", None)) and callable(getattr(mutex, "release", None))):
        raise CompatError("paho.mqtt.client.Client._in_callback_mutex is not a lock")
    writer = paho.on_socket_register_write
    if getattr(writer, "__self__", None) is not client:
        raise CompatError("aiomqtt no longer installs its writer as paho's on_socket_register_write")
    for name in ("loop_write", "want_write", "socket"):
        if not callable(getattr(paho, name, None)):
            raise CompatError(f"paho.mqtt.client.Client.{name} is gone")


def write_eagerly(client: aiomqtt.Client) -> None:
    """Make `client` send each packet as soon as paho queues it on the event loop's thread.

    aiomqtt has paho wait for the socket's next writable event: each packet (a publish, the ack of
    a received message) then costs a wake-up of the loop, two epoll changes and one or two more
    loop iterations. Writing at once saves that CPU on every message (figures: docs/benchmarks.md,
    "MQTT packets are written at once").

    This does what paho itself does without an external loop (`_packet_queue` calls `loop_write`
    unless inside one of its callbacks): on the loop's thread and outside a paho callback, write
    now; whatever the socket does not take at once (a full send buffer), and every packet queued
    from another thread (the CONNECT, from aiomqtt's connect executor), goes through aiomqtt's own
    writer. A write that fails is left to that writer, which reports the broken connection the
    aiomqtt way. Call right after the connection is made, on the loop's thread.
    """
    try:
        check(client)
    except CompatError as exc:
        log.warning("mqtt_compat.unsupported", reason=str(exc))
        return
    paho = paho_client(client)
    fallback = paho.on_socket_register_write
    if fallback is None:  # `check` saw aiomqtt's writer there
        return
    loop_thread = threading.get_ident()

    def register_write(mqttc: Any, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == loop_thread and mqttc._in_callback_mutex.acquire(blocking=False):
            mqttc._in_callback_mutex.release()
            try:
                mqttc.loop_write()  # all written: paho unregisters the write itself
            except Exception:  # noqa: BLE001 - aiomqtt's writer below reports it
                pass
            else:
                if not mqttc.want_write():
                    return
            if mqttc.socket() is None:
                return  # the write found the connection broken: paho closed it and reported it
        fallback(mqttc, userdata, sock)

    paho.on_socket_register_write = register_write
