"""Services and actors ride out a broker outage: a publish waits `EMBER_BROKER_OUTAGE` seconds
(default 60) for the connection to come back instead of failing (real Mosquitto, killed with SIGKILL
and started again on the same port)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from ember import topics
from ember.bus import Bus, Message
from ember.errors import Unavailable
from ember.settings import Settings
from ember.testing import Broker, assert_eventually

pytestmark = pytest.mark.timeout(90)


def test_the_outage_window_is_a_setting_of_60_seconds_by_default() -> None:
    assert Settings.from_env({}).broker_outage == 60
    assert Settings.from_env({"EMBER_BROKER_OUTAGE": "5"}).broker_outage == 5
    assert Bus("mqtt://127.0.0.1:1", outage=2.5).outage == 2.5


async def test_a_publish_waits_out_the_broker_outage_that_a_short_window_gives_up_on(
    mqtt_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    got: list[Message] = []

    async def on_reading(message: Message) -> None:
        got.append(message)

    monkeypatch.setenv("EMBER_BROKER_OUTAGE", "1")
    short = Bus(mqtt_broker.url, source="short")  # the window from the environment
    monkeypatch.delenv("EMBER_BROKER_OUTAGE")
    default = Bus(mqtt_broker.url, source="default")
    listener = Bus(mqtt_broker.url, source="listener")
    listener.subscribe(topics.DATA, on_reading, tag="outage")
    assert (short.outage, default.outage) == (1, 60)
    topic = topics.DATA.format(default.root, tag="outage")
    async with short, default, listener:
        assert mqtt_broker.process is not None
        mqtt_broker.process.send_signal(signal.SIGKILL)
        mqtt_broker.process.wait(10)
        await assert_eventually(lambda: not default.connected and not short.connected, timeout=15, message="the buses never saw the broker go")

        waiting = asyncio.ensure_future(default.publish(topic, default.envelope("SensorReadings", {"n": 1}), retain=True))
        with pytest.raises(Unavailable):
            await short.publish(topic, short.envelope("SensorReadings", {"n": 0}))
        assert not waiting.done()  # the default window still waits where the short one gave up

        mqtt_broker.start()  # same port, same persistence folder
        await asyncio.wait_for(waiting, 30)
        await assert_eventually(lambda: got, timeout=20, message="the reading published across the outage never arrived")
    assert [m.envelope.data for m in got if m.envelope] == [{"n": 1}]
