"""The `server` actors of every served model, per node (see `ember.serving`).

A serving actor belongs to no job: its `job` is `serve-{model}`, it runs with the node's own
python (an empty artifact), and its environment names the model, the version, the data tag it
scores and the tracking URI it loads the model from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ember.events import ActorSpec, Artifact, Role
from ember.nodes import NodeTable
from ember.projection import Projection
from ember.serving import SERVER_MODULE, server_actor_id, serving_nodes

if TYPE_CHECKING:
    from ember.notifier.desired import ActorEnv  # desired.py imports this module


def server_specs(projection: Projection, nodes: NodeTable, env: ActorEnv) -> dict[str, list[ActorSpec]]:
    """node -> its serving actors (only nodes that serve something)."""
    online = nodes.online()
    out: dict[str, list[ActorSpec]] = {}
    for model, view in sorted(projection.servings.items()):
        for node in serving_nodes(view, online):
            actor = server_actor_id(model, view.version, node)
            variables = {
                "EMBER_JOB_ID": f"serve-{model}",
                "EMBER_ACTOR_ID": actor,
                "EMBER_ROLE": Role.SERVER.value,
                "EMBER_NODE_ID": node,
                "EMBER_MQTT_URL": env.mqtt_url,
                "EMBER_TOPIC_ROOT": env.topic_root,
                "EMBER_MLFLOW_TRACKING_URI": env.mlflow_tracking_uri,
                "EMBER_HOME": env.home,
                "EMBER_SERVE_MODEL": model,
                "EMBER_SERVE_VERSION": view.version,
                "EMBER_SERVE_TAG": view.tag,
            }
            spec = ActorSpec(actor=actor, job=f"serve-{model}", role=Role.SERVER, module=SERVER_MODULE, env=variables,
                             artifact=Artifact(kind="none", key="none"))
            out.setdefault(node, []).append(spec)
    return out
