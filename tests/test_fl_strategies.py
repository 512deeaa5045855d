"""Each Flower strategy of the job spec runs 2 rounds of a tiny numpy ModelManager over MQTT.

Aggregator and 3 learners run in this process (`ember.fl.run_local`) against a real Mosquitto;
the strategies are Flower's own objects, driven through `MqttGrid`.
"""

import math
import sys
from pathlib import Path

import pytest

from ember import topics
from ember.bus import Bus, Message
from ember.events import RoundCompleted
from ember.fl import run_local
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(60)

APP_DIR = Path(__file__).parent / "fl_app"
sys.path.insert(0, str(APP_DIR))
from tiny_model import make_table  # noqa: E402

STRATEGIES = ["FedAvg", "FedProx", "FedAdam", "FedYogi", "FedAdagrad", "FedMedian", "FedTrimmedAvg", "Krum"]
IMPROVES = {"FedAvg", "FedProx", "FedMedian", "FedTrimmedAvg", "Krum"}


def tiny_spec(strategy: str, **training) -> dict:
    params = {"FedProx": {"proximal_mu": 0.1}, "Krum": {"num_malicious_nodes": 0}}.get(strategy, {})
    return {
        "name": "tiny",
        "code": {"entrypoint": "tiny_model:TinyModel"},
        "learners": {"count": 3, "min": 2},
        "training": {"rounds": 2, "strategy": strategy, "strategy_params": params, "learning_rate": 0.1, "round_timeout": 20, **training},
    }


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_strategy_runs_two_rounds_over_mqtt(mqtt_broker, strategy):
    progress: list = []

    async def on_progress(message: Message) -> None:
        progress.append(message.envelope)

    job = f"tiny-{strategy.lower()}"
    watcher = Bus(mqtt_broker.url)
    watcher.subscribe(topics.JOB_PROGRESS, on_progress, job=job)
    async with watcher:
        result = await run_local(tiny_spec(strategy), [make_table(80, seed) for seed in range(3)], mqtt_url=mqtt_broker.url, job=job, code_dir=APP_DIR)
        assert result.ok, result.reason
        assert [r.round for r in result.rounds] == [1, 2]
        for stats in result.rounds:
            assert len(stats.learners) == 3 and stats.failed == []
            assert {"train_mse", "eval_loss", "eval_mse"} <= set(stats.metrics)
            assert all(math.isfinite(v) for v in stats.metrics.values())
        if strategy in IMPROVES:
            assert result.rounds[1].metrics["eval_mse"] < result.rounds[0].metrics["eval_mse"]
        # what the manager sees: two RoundCompleted envelopes, then JobResult
        await assert_eventually(lambda: len(progress) == 3)
    rounds = [RoundCompleted.model_validate(e.data) for e in progress if e.type == "RoundCompleted"]
    assert [r.round for r in rounds] == [1, 2] and all(e.subject == job for e in progress)
    assert rounds[1].metrics == result.rounds[1].metrics
    final = [e for e in progress if e.type == "JobResult"]
    assert final and final[0].data["metrics"] == result.metrics


async def test_fraction_train_samples_fewer_learners(mqtt_broker):
    spec = tiny_spec("FedAvg", fraction_train=0.5, fraction_evaluate=0.0)
    spec["learners"] = {"count": 4, "min": 2}
    result = await run_local(spec, [make_table(60, seed) for seed in range(4)], mqtt_url=mqtt_broker.url, code_dir=APP_DIR)
    assert result.ok, result.reason
    assert [len(r.learners) for r in result.rounds] == [2, 2]
    assert "eval_loss" not in result.metrics
