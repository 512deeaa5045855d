"""The aggregator actor: `python -m ember.actors.aggregator` (started by a flamelet).

Configured by the environment (`ember.fl.settings.ActorSettings`): EMBER_JOB_ID,
EMBER_ACTOR_ID, EMBER_NODE_ID, EMBER_MQTT_URL, EMBER_TOPIC_ROOT, EMBER_JOB_SPEC (JSON),
EMBER_LEARNERS (comma list of learner actor ids), EMBER_MLFLOW_TRACKING_URI, EMBER_HOME;
PYTHONPATH holds the user's code folder.

It runs the job's Flower strategy (or the user's ServerApp) over MQTT (`ember.fl.orchestrator`),
publishes `RoundCompleted` after every round and `JobResult` at the end on `jobs/{job}/progress`.

It follows its job's placement (`ember.fl.fence`): learners re-placed after a node loss join the
run, fenced ones are dropped, and once it is itself no longer placed it stops.

Exit codes: 0 success, after printing one stdout line `EMBER_RESULT {"metrics": ...,
"mlflow_run_id": ..., "model_version": ...}`; 1 the job failed (the last log line,
`aggregator.failed`, holds the reason, e.g. `only 1 learners left, minimum 2`); 2 bad
configuration; 3 fenced (its generation is over); 143 stopped by SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Sequence

from ember.log import configure, get_logger

EXIT_FAILED, EXIT_CONFIG, EXIT_FENCED, EXIT_SIGTERM = 1, 2, 3, 128 + signal.SIGTERM


async def run(settings: object) -> int:
    """Run one aggregator with `ActorSettings`; returns the process exit code."""
    from ember.bus import Bus
    from ember.fl.fence import PlacementWatch
    from ember.fl.orchestrator import Orchestrator
    from ember.fl.endpoint import SESSION_EXPIRY
    from ember.fl.settings import ActorSettings

    assert isinstance(settings, ActorSettings)
    log = get_logger("ember.actors.aggregator", job=settings.job_id, actor=settings.actor_id, node=settings.node_id)
    try:
        settings.require("job_id", "actor_id", "learners")
        spec = settings.spec()
        code_dir = settings.resolve_code_dir(spec)
    except Exception as exc:
        log.error("aggregator.failed", reason=f"bad configuration: {exc}"[:1000])
        return EXIT_CONFIG
    actor = settings.actor_id
    bus = Bus(
        settings.resolved_mqtt_url(),
        client_id=actor,
        root=settings.topic_root,
        source=actor,
        keepalive=settings.keepalive,
        persistent=True,  # replies sent during a short disconnect are queued, not lost
        session_expiry=SESSION_EXPIRY,
    )
    aggregator = Orchestrator(
        bus,
        spec,
        job=settings.job_id,
        actor=actor,
        learners=settings.learner_ids(),
        code_dir=code_dir or None,
        tracking_uri=settings.tracking_uri(),
        checkpoint_dir=settings.checkpoint_folder(),
    )
    PlacementWatch(bus, job=settings.job_id, actor=actor, generation=settings.generation, on_fenced=aggregator.fence, on_roster=aggregator.follow)
    stopped = False

    def on_sigterm() -> None:
        nonlocal stopped
        stopped = True
        aggregator.stop("stopped by SIGTERM")

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    async with bus:
        result = await aggregator.run()
    if result.ok:
        print("EMBER_RESULT " + json.dumps(result.data(), sort_keys=True), flush=True)
        log.info("aggregator.succeeded", rounds=len(result.rounds), **result.data())
        return 0
    if aggregator.fenced:
        log.warning("aggregator.fenced", reason=aggregator.fenced, rounds=len(result.rounds))
        return EXIT_FENCED
    log.error("aggregator.failed", reason=result.reason)
    return EXIT_SIGTERM if stopped else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m ember.actors.aggregator` (no flags: the environment configures it)."""
    from ember.fl.settings import ActorSettings

    settings = ActorSettings.from_env()
    configure(settings.log_format, settings.log_level, service="aggregator")
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
