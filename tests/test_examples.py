"""The example projects' ModelManagers on local tables (no network, no Ember services)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pytest

from ember.devices.partition import partition_digits
from ember.devices.sensors import generate_table
from ember.jobspec import load_spec_file, validate_spec
from ember.sdk import ModelManager, TrainConfig

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NODES = ("edge-a", "edge-b", "edge-c")


def load_example(folder: str, module: str = "model") -> ModuleType:
    """Import `examples/<folder>/<module>.py` under a unique name (both examples have a `model`)."""
    name = f"example_{folder.replace('-', '_')}_{module}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / folder / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def fedavg(models: dict[str, ModelManager], rounds: int, config: TrainConfig) -> list[np.ndarray]:
    """Plain FedAvg weighted by examples, in process: what the aggregator does, minus transport."""
    first = next(iter(models.values()))
    global_params = first.get_parameters()
    for rnd in range(1, rounds + 1):
        replies = []
        for node, model in models.items():
            model.set_parameters(global_params)
            n, _ = model.fit(TrainConfig(round=rnd, local_epochs=config.local_epochs, batch_size=config.batch_size,
                                         learning_rate=config.learning_rate, seed=config.seed, node=node))
            replies.append((n, model.get_parameters()))
        total = sum(n for n, _ in replies)
        global_params = [sum(n * p[i] for n, p in replies) / total for i in range(len(global_params))]
    return global_params


def weighted_accuracy(models: dict[str, ModelManager], params: list[np.ndarray]) -> float:
    hits = total = 0.0
    for model in models.values():
        model.set_parameters(params)
        _, n, metrics = model.evaluate(TrainConfig())
        hits += metrics["accuracy"] * n
        total += n
    return hits / total


@pytest.mark.parametrize("folder", ["digits", "sensor-anomaly"])
def test_job_specs_are_valid(folder):
    spec = validate_spec(load_spec_file(EXAMPLES / folder / "job.yaml"))
    assert spec.learners.count == 3 and spec.learners.minimum < spec.learners.count
    requirements = (EXAMPLES / folder / spec.code.requirements).read_text().split()
    assert "torch" not in requirements and "numpy" in requirements
    module, cls = spec.code.entrypoint.split(":")
    assert issubclass(getattr(load_example(folder, module), cls), ModelManager)


def test_digits_centralized_and_federated_accuracy():
    digits = load_example("digits")
    spec = validate_spec(load_spec_file(EXAMPLES / "digits" / "job.yaml"))
    t = spec.training
    config = TrainConfig(local_epochs=t.local_epochs, batch_size=t.batch_size, learning_rate=t.learning_rate, seed=t.seed)
    split = partition_digits(list(NODES), scheme="dirichlet", alpha=0.5, seed=0)

    central = digits.centralized_baseline(split.nodes.values(), config, epochs=t.rounds * t.local_epochs)
    assert central["accuracy"] >= 0.9, central  # chance is 0.1

    models = {}
    for node, table in split.nodes.items():
        models[node] = digits.DigitsModel()
        models[node].build(config)
        models[node].preprocess(table, config)
    params = fedavg(models, t.rounds, config)
    assert weighted_accuracy(models, params) >= 0.85

    # the exported sklearn model is the same function as the ModelManager, on raw held-out rows
    model = digits.DigitsModel()
    model.set_parameters(params)
    frame = split.test.to_pandas()[digits.PIXELS]
    labels = split.test.column("label").to_numpy()
    exported = model.export_model().predict(frame.to_numpy())
    assert np.array_equal(exported, model.predict(frame))
    assert np.mean(exported == labels) >= 0.85


def test_digits_parameters_round_trip_and_shapes_are_checked():
    digits = load_example("digits")
    model = digits.DigitsModel()
    model.build(TrainConfig())
    params = [np.full((64, 10), 0.5), np.arange(10.0)]
    model.set_parameters(params)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_parameters(), params, strict=True))
    with pytest.raises(ValueError, match="shapes"):
        model.set_parameters([np.zeros((10, 64)), np.zeros(10)])


@pytest.fixture(scope="module")
def readings() -> dict[str, pa.Table]:
    return {node: generate_table(node, devices=4, seconds=1800, rate_hz=1.0, seed=i + 1) for i, node in enumerate(NODES)}


def test_sensor_features_and_labels_are_sane(readings):
    features = load_example("sensor-anomaly", "features")
    table = readings["edge-a"]
    x, y, ends, owners = features.windowed(table)
    per_device = (1800 - features.WINDOW) // features.STRIDE + 1
    assert x.shape == (4 * per_device, len(features.FEATURE_NAMES)) == (len(y), 15)
    assert np.isfinite(x).all() and set(np.unique(y)) <= {0, 1}
    # windows label faults at about the rate the raw readings carry them
    raw_share = float(np.mean(table.column("fault").to_numpy()))
    assert abs(float(y.mean()) - raw_share) < 0.05 and 0 < y.mean() < 0.5
    # per device, windows run forward in time; std features are non-negative
    for device in np.unique(owners):
        assert np.all(np.diff(ends[owners == device]) > 0)
    std_cols = [i for i, name in enumerate(features.FEATURE_NAMES) if name.endswith("_std")]
    assert (x[:, std_cols] >= 0).all()
    # faulty windows look different from healthy ones (vibration/pressure/current residuals)
    effect = np.abs(x[y == 1].mean(axis=0) - x[y == 0].mean(axis=0)) / (x.std(axis=0) + 1e-9)
    assert effect.max() > 0.8
    # readings without labels still give features (what a deployed model predicts on)
    x2, y2, _, _ = features.windowed(table.drop_columns(["fault", "fault_kind"]))
    assert y2 is None and np.array_equal(x, x2)


def test_sensor_model_learns_and_split_is_by_time(readings):
    sensor = load_example("sensor-anomaly")
    spec = validate_spec(load_spec_file(EXAMPLES / "sensor-anomaly" / "job.yaml"))
    t = spec.training
    config = TrainConfig(local_epochs=t.local_epochs, batch_size=t.batch_size, learning_rate=t.learning_rate, seed=t.seed)
    shares = {node: float(np.mean(tb.column("fault").to_numpy())) for node, tb in readings.items()}
    assert max(shares.values()) - min(shares.values()) > 0.05  # non-IID: nodes break at different rates

    models = {}
    for node, table in readings.items():
        models[node] = sensor.SensorModel()
        models[node].build(config)
        models[node].preprocess(table, config)
    params = fedavg(models, t.rounds, config)
    fl_accuracy = weighted_accuracy(models, params)
    central = sensor.centralized_baseline(readings.values(), config, epochs=t.rounds * t.local_epochs)
    healthy_share = 1.0 - float(np.mean(np.concatenate([m.y_test for m in models.values()])))
    assert central["accuracy"] > healthy_share + 0.02 and central["f1"] >= 0.5, central
    assert fl_accuracy > healthy_share + 0.02
    assert abs(fl_accuracy - central["accuracy"]) < 0.05

    model = sensor.SensorModel()
    model.set_parameters(params)
    x = models["edge-a"].x_test
    assert np.array_equal(model.export_model().predict(x), model.predict(x))


def test_flower_app_is_plain_flower():
    """examples/flower-app: only Flower's public API, a valid Flower app config, a sane split."""
    app_dir = EXAMPLES / "flower-app"
    sources = list((app_dir / "flowerdigits").glob("*.py"))
    assert sources and not any("ember" in line for src in sources for line in src.read_text().splitlines() if "import" in line)

    import tomllib

    from flwr.common.config import validate_fields_in_config

    config = tomllib.loads((app_dir / "pyproject.toml").read_text())
    ok, errors, _ = validate_fields_in_config(config)
    assert ok, errors
    spec = validate_spec(load_spec_file(app_dir / "job.yaml"))
    components = config["tool"]["flwr"]["app"]["components"]
    assert (spec.code.serverapp, spec.code.clientapp) == (components["serverapp"], components["clientapp"])

    sys.path.insert(0, str(app_dir))
    try:
        from flowerdigits import task
    finally:
        sys.path.remove(str(app_dir))
    parts = [task.load_partition(pid, 3, alpha=0.5, seed=0) for pid in range(3)]
    x_holdout, y_holdout = task.load_holdout(0)
    assert sum(len(p[1]) + len(p[3]) for p in parts) + len(y_holdout) == 1797  # every digit exactly once
    params = task.initial_parameters()
    for pid, (x, y, _, _) in enumerate(parts):
        params = task.train(params, x, y, epochs=2, lr=0.5, batch_size=32, seed=[0, 1, pid])
    assert task.evaluate(params, x_holdout, y_holdout)[1] > 0.5  # one sequential pass: far above chance
