"""Federated training on Flower, carried by Ember's MQTT bus.

- `ember.fl.grid.MqttGrid`: Flower's `Grid` over MQTT; `ember.fl.serde`: the frame format.
- `ember.fl.clientapp`: the ClientApp around a user's ModelManager.
- `ember.fl.serverapp`: Flower strategies (or a user's ServerApp) driven on the grid.
- `ember.fl.orchestrator.Orchestrator`, `ember.fl.endpoint.LearnerEndpoint`: the two actor roles.
- `ember.fl.tracking`: MLflow; `ember.fl.report.write_report`: the job report.
- `ember.fl.run_local(spec, tables, mqtt_url=...)`: a whole job in one process.
- `ember.fl.flwr_compat`: every Flower internal Ember relies on.
"""

from __future__ import annotations

from typing import Any


async def run_local(*args: Any, **kwargs: Any) -> Any:
    """See `ember.fl.local.run_local` (imported lazily: Flower is heavy)."""
    from ember.fl.local import run_local as _run_local

    return await _run_local(*args, **kwargs)
