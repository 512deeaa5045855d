"""`ember job report JOB`: a PNG of the per-round metrics, plus the MLflow run and model version.

`write_report(job_summary, out_png)` takes the manager's job summary (`jobs.get`: `rounds` =
the RoundCompleted data, `result` = the JobSucceeded data) and returns what the CLI prints.
When the summary has no rounds but names an MLflow run, the metrics come from MLflow instead
(`tracking_uri` needed). Rendering uses matplotlib's Agg canvas directly (no pyplot state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SKIP = ("learners", "learners_failed", "round_duration_s")


def _series_from_rounds(rounds: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in sorted(rounds, key=lambda r: int(r.get("round", 0))):
        number = int(entry.get("round", 0))
        for key, value in (entry.get("metrics") or {}).items():
            series.setdefault(key, []).append((number, float(value)))
        if "duration_s" in entry:
            series.setdefault("round_duration_s", []).append((number, float(entry["duration_s"])))
    return series


def _series_from_mlflow(tracking_uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    series: dict[str, list[tuple[int, float]]] = {}
    for key in client.get_run(run_id).data.metrics:
        history = client.get_metric_history(run_id, key)
        series[key] = sorted((int(m.step), float(m.value)) for m in history)
    return series


def write_report(job_summary: dict[str, Any], out_png: str | Path, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Write the PNG; return `{png, job, rounds, metrics, mlflow_run_id, model_version}`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = job_summary.get("result") or {}
    run_id, version = str(result.get("mlflow_run_id") or ""), str(result.get("model_version") or "")
    series = _series_from_rounds(job_summary.get("rounds") or [])
    if not series and run_id and tracking_uri:
        series = _series_from_mlflow(tracking_uri, run_id)
    groups = {
        "training (aggregated)": {k: v for k, v in series.items() if k.startswith("train_")},
        "evaluation (aggregated)": {k: v for k, v in series.items() if k.startswith("eval_")},
        "other": {k: v for k, v in series.items() if not k.startswith(("train_", "eval_")) and k not in SKIP},
        "round duration (s)": {k: v for k, v in series.items() if k == "round_duration_s"},
    }
    groups = {title: values for title, values in groups.items() if values} or {"no rounds recorded": {}}
    figure = Figure(figsize=(6 * len(groups), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (title, values) in enumerate(groups.items(), start=1):
        axes = figure.add_subplot(1, len(groups), index)
        for key, points in sorted(values.items()):
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
        axes.set_title(title)
        axes.set_xlabel("round")
        if values:
            axes.legend(fontsize="small")
        axes.grid(True, alpha=0.3)
    job = str(job_summary.get("job") or job_summary.get("name") or "")
    subtitle = f"MLflow run {run_id}" + (f", model version {version}" if version else "") if run_id else "no MLflow run"
    figure.suptitle(f"{job}: {subtitle}")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    rounds = max((p[0] for values in series.values() for p in values), default=0)
    final = {k: v[-1][1] for k, v in series.items() if v and k not in SKIP}
    return {"png": str(out), "job": job, "rounds": rounds, "metrics": result.get("metrics") or final, "mlflow_run_id": run_id, "model_version": version}
