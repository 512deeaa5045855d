"""MLflow tracking of a job (real SQLite store) and the job report."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ember.fl import run_local
from ember.fl.report import write_report

pytestmark = pytest.mark.timeout(120)

APP_DIR = Path(__file__).parent / "fl_app"
sys.path.insert(0, str(APP_DIR))
from tiny_model import TRUE_B, TRUE_W, make_table  # noqa: E402

ROUNDS = 3


async def test_run_metrics_per_round_and_registered_model_predicts(mqtt_broker, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.sqlite3'}"
    spec = {
        "name": "tiny-tracked",
        "code": {"entrypoint": "tiny_model:TinyModel"},
        "learners": {"count": 2, "min": 2},
        "training": {"rounds": ROUNDS, "learning_rate": 0.2, "local_epochs": 3, "round_timeout": 30},
        "tracking": {"experiment": "tiny-exp", "model_name": "tiny-model"},
    }
    result = await run_local(spec, [make_table(200, s) for s in range(2)], mqtt_url=mqtt_broker.url, job="tiny-tracked-1", code_dir=APP_DIR, tracking_uri=uri)
    assert result.ok, result.reason
    assert result.mlflow_run_id and result.model_version == "1"

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.run_name == "tiny-tracked-1" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tiny-exp"
    assert run.data.params["training.strategy"] == "FedAvg" and run.data.params["learners.count"] == "2"
    for key in ("eval_mse", "train_mse", "learners", "round_duration_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, ROUNDS + 1)), key
    assert [m.value for m in client.get_metric_history(run.info.run_id, "learners")] == [2.0] * ROUNDS
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts beside the SQLite store, not in the cwd

    mlflow.set_registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/tiny-model/{result.model_version}")
    rows = pd.DataFrame({"x0": [0.0, 1.0, -1.0], "x1": [0.0, 2.0, 0.5]})
    predicted = np.asarray(model.predict(rows), dtype=float)
    expected = rows.to_numpy() @ TRUE_W + TRUE_B
    assert np.allclose(predicted, expected, atol=0.5), (predicted, expected)

    summary = {"job": "tiny-tracked-1", "rounds": [r.event_data() for r in result.rounds], "result": {**result.data()}}
    report = write_report(summary, tmp_path / "report.png")
    assert report["mlflow_run_id"] == result.mlflow_run_id and report["model_version"] == "1" and report["rounds"] == ROUNDS
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without rounds in the summary, the metrics come from MLflow
    from_mlflow = write_report({"job": "tiny-tracked-1", "result": result.data()}, tmp_path / "r2.png", tracking_uri=uri)
    assert from_mlflow["rounds"] == ROUNDS and (tmp_path / "r2.png").stat().st_size > 1000
