"""The private aiomqtt/paho attributes `ember.mqtt_compat` relies on are still there.

When an upgrade of aiomqtt or paho-mqtt changes them, this fails and names the attribute;
`write_eagerly` meanwhile falls back to aiomqtt's own writer (slower, still correct).
"""

from __future__ import annotations

import aiomqtt
import pytest

from ember import mqtt_compat


async def test_the_private_attributes_write_eagerly_relies_on_are_still_there() -> None:
    client = aiomqtt.Client("127.0.0.1", 1883, identifier="compat-check")
    mqtt_compat.check(client)  # raises CompatError naming the attribute that changed


async def test_a_missing_attribute_is_reported_by_name() -> None:
    client = aiomqtt.Client("127.0.0.1", 1883, identifier="compat-check")
    del mqtt_compat.paho_client(client)._in_callback_mutex
    with pytest.raises(mqtt_compat.CompatError, match="_in_callback_mutex"):
        mqtt_compat.check(client)
    mqtt_compat.write_eagerly(client)  # falls back: aiomqtt's own writer stays in place
    assert getattr(mqtt_compat.paho_client(client).on_socket_register_write, "__self__", None) is client
