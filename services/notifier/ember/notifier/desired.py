"""Each node's desired state: every actor of a live job placed on it (current generation).

A pure function of the projection (plus the node table for mldata URLs); the app publishes a
node's state retained on `nodes/{node}/desired`, only when it changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ember.events import ActorSpec, Artifact, Role
from ember.nodes import NodeTable
from ember.notifier.placement import JobNeeds
from ember.projection import ActorView, JobView, Projection

PROBE_MODULE = "ember.actors.probe"
ML_MODULES = {Role.AGGREGATOR: "ember.actors.aggregator", Role.LEARNER: "ember.actors.learner"}


@dataclass(frozen=True)
class ActorEnv:
    """What every actor's environment carries besides its own ids."""

    mqtt_url: str
    topic_root: str
    mlflow_tracking_uri: str
    home: str


def probe_args(needs: JobNeeds, actor: ActorView) -> list[str]:
    """`--seconds S --exit-code C` from the job's `probe` section (see `ember.jobspec.ProbeSpec`)."""
    probe = needs.probe
    assert probe is not None
    if actor.role == Role.AGGREGATOR:
        seconds = probe.aggregator_seconds if probe.aggregator_seconds is not None else probe.seconds
        code = probe.exit_code if probe.failing_learner is None else 0
    else:
        seconds = probe.seconds
        code = probe.exit_code if probe.failing_learner in (None, actor.index) else 0
    return ["--seconds", f"{seconds:g}", "--exit-code", str(code)]


def actor_spec(job: JobView, actor: ActorView, needs: JobNeeds, env: ActorEnv, nodes: NodeTable, *,
               learners: str | None = None, spec_json: str | None = None) -> ActorSpec:
    """`learners` (comma list) and `spec_json` may be passed in when computed once per job."""
    if learners is None:
        learners = ",".join(a.actor for a in sorted(job.learners(), key=lambda a: (a.index, a.actor)))
    variables = {
        "EMBER_JOB_ID": job.id,
        "EMBER_ACTOR_ID": actor.actor,
        "EMBER_ROLE": actor.role.value,
        "EMBER_NODE_ID": actor.node,
        "EMBER_GENERATION": str(job.generation),
        "EMBER_MQTT_URL": env.mqtt_url,
        "EMBER_TOPIC_ROOT": env.topic_root,
        "EMBER_JOB_SPEC": spec_json if spec_json is not None else json.dumps(job.spec, sort_keys=True),
        "EMBER_JOB_SPEC_DIR": job.spec_dir,
        "EMBER_MLFLOW_TRACKING_URI": env.mlflow_tracking_uri,
        "EMBER_HOME": env.home,
    }
    # every actor: the aggregator waits for these learners; a learner finds its index and count
    variables["EMBER_LEARNERS"] = learners
    info = nodes.row(actor.node).info
    if info is not None and info.mldata_url:
        variables["EMBER_MLDATA_URL"] = info.mldata_url
    if needs.probe is not None:
        module, args = PROBE_MODULE, probe_args(needs, actor)
    else:
        module, args = ML_MODULES[actor.role], []
    return ActorSpec(
        actor=actor.actor,
        job=job.id,
        role=actor.role,
        runtime=needs.runtime,
        module=module,
        args=args,
        env=variables,
        artifact=job.artifact or Artifact(key="none"),
    )


def desired_actors(projection: Projection, nodes: NodeTable, env: ActorEnv) -> dict[str, list[ActorSpec]]:
    """node -> its actors, for every node that is known or has actors (empty lists included)."""
    out: dict[str, list[ActorSpec]] = {node: [] for node in nodes.rows}
    for job in sorted(projection.jobs.values(), key=lambda j: j.id):
        if job.state.terminal or job.generation == 0:
            continue
        try:
            needs = JobNeeds.of(job)
        except ValueError:
            continue
        actors = sorted(job.current_actors(), key=lambda a: (a.role != Role.AGGREGATOR, a.index, a.actor))
        learners = ",".join(a.actor for a in actors if a.role == Role.LEARNER)
        spec_json = json.dumps(job.spec, sort_keys=True)
        for actor in actors:
            spec = actor_spec(job, actor, needs, env, nodes, learners=learners, spec_json=spec_json)
            out.setdefault(actor.node, []).append(spec)
    return out
