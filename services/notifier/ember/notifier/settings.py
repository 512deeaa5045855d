"""Notifier settings: the shared `EMBER_*` ones plus `EMBER_NOTIFIER_*`."""

from __future__ import annotations

from pydantic import Field

from ember.settings import Settings


class NotifierSettings(Settings):
    notifier_client_id: str = "ember-notifier"
    """MQTT client id; stable so the broker keeps the persistent session across restarts."""
    notifier_placement_timeout: float = Field(default=60.0, gt=0)
    """A job that cannot be placed for this long fails with `no capacity: ...`."""
    notifier_settle: float = Field(default=0.5, ge=0)
    """After (re)starting, seconds to let the retained node topics arrive before placing anything."""
    notifier_overcommit: float = Field(default=1.0, gt=0)
    """Factor applied to each node's announced cpus and memory when fitting actors on it."""
    actor_mqtt_url: str = ""
    """Broker URL handed to actors (`EMBER_MQTT_URL` in their env); default: the notifier's own."""
