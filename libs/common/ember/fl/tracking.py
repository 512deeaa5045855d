"""MLflow tracking of a job (aggregator only: learners log nothing, their data stays private).

One experiment per job name (`tracking.experiment`, default the job name), one run per job
(run name = job id; an aggregator that resumes the job reopens the run tagged with its job id,
and logs no round at a step the run already has) holding the spec's parameters flattened, per-round metrics with
`step=round` (aggregated `train_*` / `eval_*`, `learners`, `learners_failed`,
`round_duration_s`), and the final global model logged with its flavour
(`ModelManager.model_flavor()`: `sklearn`, `pytorch`, else `pyfunc` wrapping the
ModelManager with the user's code folder as `code_paths`) and registered under
`tracking.model_name` (default the job name).

The URI is `EMBER_MLFLOW_TRACKING_URI` (`ember up` sets it to its tracking server, a deployment
to its own; `Settings.resolved_mlflow_uri`); with a SQLite store used directly, artifacts go to
`mlartifacts/` next to the database file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ember.fl.rounds import RoundStats
from ember.jobspec import JobSpec
from ember.sdk.model import ModelManager

DISABLED = ("none", "off", "disabled")
MAX_BATCH_METRICS = 1000
"""MLflow's limit of metrics in one `log_batch`."""


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists as `a.b.0` -> string leaves (None dropped)."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}{index}."))
    elif value is not None:
        out[prefix.rstrip(".")] = str(value)[:500]
    return out


def artifact_root(uri: str) -> str | None:
    """Where a SQLite store keeps artifacts (beside the database); None: the server decides."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


class PyfuncModelManager:
    """Factory for the pyfunc wrapper (`mlflow.pyfunc.PythonModel` is imported lazily)."""

    @staticmethod
    def wrap(manager: ModelManager) -> Any:
        from mlflow.pyfunc import PythonModel

        class ModelManagerModel(PythonModel):
            """Serves a trained Ember ModelManager through its `predict`."""

            def __init__(self, manager: ModelManager) -> None:
                self.manager = manager

            def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
                return self.manager.predict(model_input)

        return ModelManagerModel(manager)


class Tracker:
    """One MLflow run for one job. All calls are blocking (run them off the event loop)."""

    def __init__(self, uri: str, spec: JobSpec, job: str) -> None:
        from mlflow import MlflowClient

        self.uri, self.spec, self.job = uri, spec, job
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.run_id = ""
        self.logged_through = 0
        """The highest round (step) already in the run; rounds up to it are not logged again."""

    def start(self) -> str:
        from mlflow.entities import Param

        experiment = self.client.get_experiment_by_name(self.spec.experiment)
        if experiment is None:
            experiment_id = self.client.create_experiment(self.spec.experiment, artifact_location=artifact_root(self.uri))
        else:
            experiment_id = experiment.experiment_id
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`ember.job` = '{self.job}'", max_results=1)
        if runs:
            self.run_id = runs[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            keys = runs[0].data.metrics
            self.logged_through = max((m.step for k in keys for m in self.client.get_metric_history(self.run_id, k)), default=0)
            return self.run_id
        run = self.client.create_run(experiment_id, run_name=self.job, tags={"ember.job": self.job, "ember.name": self.spec.name})
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in sorted(flatten(self.spec.model_dump(mode="json", exclude={"probe"})).items())]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        return self.run_id

    def log_rounds(self, rounds: list[RoundStats]) -> None:
        """Every round's metrics at `step=round`, in as few `log_batch` calls as MLflow allows."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for stats in rounds:
            if stats.round <= self.logged_through:
                continue
            self.logged_through = stats.round
            values = {**stats.metrics, "learners": len(stats.learners), "learners_failed": len(stats.failed), "round_duration_s": stats.duration_s}
            metrics += [Metric(key, float(value), now, stats.round) for key, value in values.items()]
        for start in range(0, len(metrics), MAX_BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + MAX_BATCH_METRICS])

    def log_history(self, history: list[dict[str, Any]]) -> None:
        """A resumed job's rounds (`RoundCompleted` data from its checkpoint) that had not reached
        the run before the previous aggregator stopped."""
        self.log_rounds([RoundStats.from_event_data(entry) for entry in history])

    def log_model(self, manager: ModelManager, code_dir: str | Path | None = None) -> str:
        """Log the final model with its flavour and register it; returns the model version."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        name, flavor = self.spec.model_name, manager.model_flavor()
        requirements = self._requirements()
        with mlflow.start_run(run_id=self.run_id):
            if flavor == "sklearn":
                import mlflow.sklearn

                info = mlflow.sklearn.log_model(manager.export_model(), name="model", registered_model_name=name, pip_requirements=requirements)
            elif flavor == "pytorch":
                import mlflow.pytorch

                info = mlflow.pytorch.log_model(manager.export_model(), name="model", registered_model_name=name, pip_requirements=requirements)
            else:
                import mlflow.pyfunc

                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=PyfuncModelManager.wrap(manager),
                    code_paths=[str(code_dir)] if code_dir else None,
                    registered_model_name=name,
                    pip_requirements=requirements,
                )
        version = info.registered_model_version
        return "" if version is None else str(version)

    def finish(self, ok: bool) -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")

    def _requirements(self) -> list[str]:
        reqs = self.spec.code.requirements
        base = ["numpy", "pyarrow"]
        return base + [r for r in reqs if r not in base] if isinstance(reqs, list) else base
