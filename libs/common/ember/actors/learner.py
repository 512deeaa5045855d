"""The learner actor: `python -m ember.actors.learner` (started by a flamelet).

Configured like the aggregator (`ember.fl.settings.ActorSettings`) plus EMBER_MLDATA_URL and
EMBER_MLDATA_TOKEN of its node's mldata (without a token, the node's token file under
EMBER_HOME is used, as `ember.data.client.load_table` does). Its index among the learners
comes from EMBER_LEARNERS when set, else from its actor id (`{job}-learner-{i}`). It connects with a Last Will (`gone` on its up topic),
loads its node's data for the job's tags (`ember.data.client.load_table`), builds and
preprocesses the ModelManager once (or loads the user's Flower ClientApp, with
`context.node_config` = `partition-id` / `num-partitions`), announces `ready`, answers every
Flower message from the aggregator, and exits 0 when the aggregator says `done`.

It watches its job's placement (`ember.fl.fence`): once it is no longer placed (its node was
declared lost and the learner re-placed elsewhere, or the job ended) it stops itself,
whether or not its flamelet is still there to stop it.

Exit codes: 0 done; 1 could not prepare (data, code) — the reason is the last log line and is
sent to the aggregator; 2 bad configuration; 3 fenced (its generation is over); 143 stopped by
SIGTERM.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
from collections.abc import Sequence

from ember.log import configure, get_logger

EXIT_FAILED, EXIT_CONFIG, EXIT_FENCED, EXIT_SIGTERM = 1, 2, 3, 128 + signal.SIGTERM


def _loader(settings: object, tags: list[str]) -> object:
    from ember.fl.settings import ActorSettings
    from ember.data.client import load_table

    assert isinstance(settings, ActorSettings)
    return load_table(tags, settings=settings)


async def run(settings: object) -> int:
    """Run one learner with `ActorSettings`; returns the process exit code."""
    from ember.fl.orchestrator import run_id_for
    from ember.fl.clientapp import prepare_client
    from ember.fl.grid import node_id_for
    from ember.fl.endpoint import learner_bus
    from ember.fl.fence import PlacementWatch
    from ember.fl.settings import ActorSettings

    assert isinstance(settings, ActorSettings)
    log = get_logger("ember.actors.learner", job=settings.job_id, actor=settings.actor_id, node=settings.node_id)
    try:
        settings.require("job_id", "actor_id")
        spec = settings.spec()
        index, count = settings.position(spec)
        code_dir = settings.resolve_code_dir(spec)
    except Exception as exc:
        log.error("learner.failed", reason=f"bad configuration: {exc}"[:1000])
        return EXIT_CONFIG
    actor, job = settings.actor_id, settings.job_id
    prepare = functools.partial(
        prepare_client,
        spec,
        load_table=functools.partial(_loader, settings, spec.data.tags),
        run_id=run_id_for(job),
        node_id=node_id_for(actor),
        index=index,
        count=count,
        node=settings.node_id,
        code_dir=code_dir or None,
    )
    bus, endpoint = learner_bus(settings.resolved_mqtt_url(), root=settings.topic_root, job=job, actor=actor, keepalive=settings.keepalive)
    endpoint.codec = spec.training.update_codec
    watch = PlacementWatch(bus, job=settings.job_id, actor=actor, generation=settings.generation, on_fenced=endpoint.stop)
    stopped = False

    def on_sigterm() -> None:
        nonlocal stopped
        stopped = True
        endpoint.stop("stopped by SIGTERM")

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    async with bus:
        try:
            await endpoint.run(prepare)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:1000]
            log.error("learner.failed", reason=reason)
            return EXIT_FAILED
    if stopped:
        log.info("learner.stopped", reason="SIGTERM", handled=endpoint.handled)
        return EXIT_SIGTERM
    if watch.fenced:
        log.warning("learner.fenced", reason=watch.fenced, handled=endpoint.handled)
        return EXIT_FENCED
    log.info("learner.exited", handled=endpoint.handled, aggregator_ok=endpoint.done_ok)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m ember.actors.learner` (no flags: the environment configures it)."""
    from ember.fl.settings import ActorSettings

    settings = ActorSettings.from_env()
    configure(settings.log_format, settings.log_level, service="learner")
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
