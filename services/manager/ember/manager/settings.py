"""Manager settings: the shared `EMBER_*` variables plus `EMBER_MANAGER_*`."""

from __future__ import annotations

from pydantic import Field

from ember.settings import Settings


class ManagerSettings(Settings):
    """What `python -m ember.manager` reads from the environment (and its flags)."""

    manager_client_id: str = "ember-manager"
    """MQTT client id; stable so the broker keeps the persistent session across restarts."""
    manager_resync: float = Field(default=2.0, gt=0)
    """Seconds between safety-net reads of the event log (a publish lost in a crash)."""
    manager_grace: float = Field(default=5.0, ge=0)
    """Seconds in-flight requests get to finish on SIGTERM."""
    manager_log_tail_lines: int = Field(default=20, ge=1)
    """Lines of a failing actor's log quoted in a JobFailed reason."""
    manager_deploy_timeout: float = Field(default=300.0, gt=0)
    """Seconds a job may stay `deploying` (its actors placed, not all running) before it fails
    with a reason naming the actors that never reported running."""
