"""A plain Flower app (examples/flower-app: ServerApp + FedAvg, ClientApp, only Flower's public
API) runs on Ember's MQTT grid unchanged."""

import re
import sys
from pathlib import Path

import pytest

from ember.fl import run_local
from ember.fl.clientapp import code_dir_of
from ember.jobspec import load_spec_file, validate_spec

pytestmark = pytest.mark.timeout(120)

APP = Path(__file__).parent.parent / "examples" / "flower-app"


def test_the_app_does_not_import_ember():
    sources = list((APP / "flowerdigits").glob("*.py"))
    assert sources
    for path in sources:
        assert not re.search(r"^\s*(from|import)\s+ember", path.read_text(), re.M), path


async def test_flower_app_runs_unchanged_over_mqtt(mqtt_broker, capfd):
    spec = validate_spec(load_spec_file(APP / "job.yaml"))
    sys.path.insert(0, str(APP))
    assert code_dir_of(spec.code.serverapp) == APP  # how the actor finds the app's pyproject.toml
    result = await run_local(spec, [None] * spec.learners.count, mqtt_url=mqtt_broker.url, code_dir=APP)
    assert result.ok, result.reason
    # the app's own run config (pyproject: num-server-rounds = 10) drove the rounds
    assert [r.round for r in result.rounds] == list(range(1, 11))
    assert all(len(r.learners) == 3 and not r.failed for r in result.rounds)
    assert result.metrics["eval_accuracy"] > 0.8  # 10 classes: chance is 0.1
    assert "FLOWERDIGITS_RESULT" in capfd.readouterr().out  # the ServerApp's own output
