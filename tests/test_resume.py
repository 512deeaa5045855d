"""An aggregator killed mid-job and a new one that resumes from its checkpoints, with real
actor processes, a real broker, real mldata servers and a real MLflow (SQLite) store.

The new aggregator is started as a re-placement would start it (same job, a new actor id);
the learners are not restarted: they re-join it with their retained `ready`.
"""

import json
import signal
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from ember.fl.checkpoint import MlflowStore, latest, ordered
from test_fl_tolerance import Job, watch_progress
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(240)

ROUNDS = 6


class TrackedJob(Job):
    def __init__(self, tmp: Path, broker_url: str, *, strategy: str, **kwargs):
        tmp.mkdir()
        super().__init__(tmp, broker_url, count=2, minimum=2, rounds=ROUNDS, round_timeout=60, **kwargs)
        self.uri = f"sqlite:///{tmp.parent / 'mlflow.sqlite3'}"
        self.spec["training"]["strategy"] = strategy
        self.spec["training"]["checkpoint_interval"] = 0  # every round: the kill lands after a known one
        if strategy == "FedAdam":
            self.spec["training"]["strategy_params"] = {"eta": 0.05, "eta_l": 0.1}

    def env(self, actor, node, **extra):
        env = super().env(actor, node, **extra)
        env["EMBER_MLFLOW_TRACKING_URI"] = self.uri
        return env

    def start_aggregator(self, actor: str = "") -> None:
        actor = actor or f"{self.job}-agg"
        self.start(actor, "ember.actors.aggregator", self.env(actor, "node0"))

    def run_id(self) -> str:
        client = MlflowClient(tracking_uri=self.uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()], filter_string=f"tags.`ember.job` = '{self.job}'")
        assert len(runs) == 1, f"{len(runs)} MLflow runs for {self.job}"
        return runs[0].info.run_id

    def store(self) -> MlflowStore:
        return MlflowStore(self.uri, self.run_id())

    def final(self):
        found = latest(self.store())
        assert found is not None
        return found[0]


def artifacts_folder(job: TrackedJob) -> Path:
    run = MlflowClient(tracking_uri=job.uri).get_run(job.run_id())
    return Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoints"


@pytest.mark.parametrize("strategy", ["FedAvg", "FedAdam"])
async def test_a_killed_aggregator_is_resumed_by_a_new_one(tmp_path, mqtt_broker, strategy):
    plain = TrackedJob(tmp_path / "a", mqtt_broker.url, strategy=strategy, fit_seconds=0)
    try:
        for index in range(2):
            plain.start_learner(index)
        plain.start_aggregator()
        assert plain.wait(f"{plain.job}-agg", timeout=120) == 0
        expected = plain.final()
        # killed after its last round but before its result: the next one only gives the result
        again = f"{plain.job}-agg-g2"
        plain.start_aggregator(again)
        await assert_eventually(lambda: plain.procs[again].poll() is not None, timeout=120, message="the last aggregator did not finish")
        assert plain.procs[again].returncode == 0, "\n".join(plain.output(again)[-20:])
        assert any(f'"round": {ROUNDS}' in line for line in plain.output(again) if "aggregator.resume" in line)
        assert not any('"aggregator.round"' in line for line in plain.output(again))
    finally:
        plain.close()

    job = TrackedJob(tmp_path / "b", mqtt_broker.url, strategy=strategy, fit_seconds=0.4)
    seen: list = []
    bus = await watch_progress(mqtt_broker.url, job.job, seen)
    try:
        for index in range(2):
            job.start_learner(index)
        job.start_aggregator()
        first = f"{job.job}-agg"
        await assert_eventually(
            lambda: any(e.type == "CheckpointSaved" and e.data["round"] >= 2 for e in seen), timeout=120, message="no checkpoint of round 2"
        )
        job.procs[first].send_signal(signal.SIGKILL)
        job.procs[first].wait()
        folder = artifacts_folder(job)
        kept = ordered([p.name for p in folder.iterdir()])
        newest_round = kept[0][0]
        if strategy == "FedAvg":  # tear the newest checkpoint: the one before it is loaded
            newest = folder / kept[0][2]
            newest.write_bytes(newest.read_bytes()[:100])
            resume_round = kept[1][0]
        else:
            resume_round = newest_round
        assert resume_round < ROUNDS
        second = f"{job.job}-agg-g2"
        job.start_aggregator(second)
        await assert_eventually(lambda: job.procs[second].poll() is not None, timeout=120, message="the new aggregator did not finish")
        assert job.procs[second].returncode == 0, "\n".join(job.output(second)[-20:])
        for learner in job.learners:  # the learners were not restarted: they finished with the new aggregator
            await assert_eventually(lambda learner=learner: job.procs[learner].poll() is not None, timeout=60)
            assert job.procs[learner].returncode == 0
        await assert_eventually(lambda: any(e.type == "RoundCompleted" and e.data["round"] == ROUNDS for e in seen), timeout=30)
        resumed = [line for line in job.output(second) if "aggregator.resume" in line]
        assert resumed and f'"round": {resume_round}' in resumed[0]
        trained = [json.loads(line)["round"] for line in job.output(second) if '"aggregator.round"' in line]
        assert trained == list(range(resume_round + 1, ROUNDS + 1))
        published = {e.data["round"] for e in seen if e.type == "RoundCompleted"}
        assert published == set(range(1, ROUNDS + 1))

        client = MlflowClient(tracking_uri=job.uri)
        run_id = job.run_id()
        for key in client.get_run(run_id).data.metrics:
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {sorted(steps)}"
        assert sorted(m.step for m in client.get_metric_history(run_id, "learners")) == list(range(1, ROUNDS + 1))

        final = job.final()
        assert final.round == ROUNDS == expected.round
        for got, want in zip(final.parameters, expected.parameters, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        if strategy == "FedAdam":  # the optimizer's moments went on from the checkpoint's
            assert set(final.strategy) == {"m_t", "v_t"}
            for attr in ("m_t", "v_t"):
                for key, value in expected.strategy[attr].items():
                    np.testing.assert_allclose(final.strategy[attr][key], value, rtol=1e-9, atol=1e-12)
    finally:
        await bus.shutdown()
        job.close()
