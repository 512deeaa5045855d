"""Ember's Flower `ClientApp` around a user's `ember.sdk.ModelManager`, and code loading.

`ModelManagerClient(manager, base)` is prepared once per learner (`build`, then `preprocess`
of the node's table) and then answers Flower's `train` and `evaluate` messages through a real
`flwr.clientapp.ClientApp`: `set_parameters(global)`, then `fit` / `evaluate`. Reply records
follow Flower's strategy conventions: `arrays` (ArrayRecord) and `metrics` (MetricRecord with
`num-examples`, the strategies' default weighting key).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import replace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ember.jobspec import JobSpec
from ember.sdk.model import ModelManager, TrainConfig

WEIGHT_KEY = "num-examples"


def load_ref(ref: str, code_dir: str | Path | None = None) -> Any:
    """Import `module:attr`, with the user's code folder first on `sys.path`."""
    if code_dir:
        folder = str(Path(code_dir).resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None


def base_config(spec: JobSpec, node: str = "") -> TrainConfig:
    t = spec.training
    return TrainConfig(
        round=0, local_epochs=t.local_epochs, batch_size=t.batch_size, learning_rate=t.learning_rate, seed=t.seed, node=node
    )


def new_manager(spec: JobSpec, code_dir: str | Path | None = None) -> ModelManager:
    """An instance of the spec's ModelManager class (`code.entrypoint`)."""
    if not spec.code.entrypoint:
        raise ValueError("the job has no code.entrypoint (module:ModelManager)")
    cls = load_ref(spec.code.entrypoint, code_dir)
    if not (isinstance(cls, type) and issubclass(cls, ModelManager)):
        raise TypeError(f"{spec.code.entrypoint} is not a subclass of ember.sdk.ModelManager")
    return cls()


def _numeric(metrics: dict[str, Any]) -> dict[str, float | int]:
    return {str(k): v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class ModelManagerClient:
    """Runs one learner's ModelManager behind a Flower ClientApp (`.app`)."""

    def __init__(self, manager: ModelManager, base: TrainConfig) -> None:
        self.manager = manager
        self.base = base
        self.prepared = False
        self.app = ClientApp()
        self.app.train()(self._train)
        self.app.evaluate()(self._evaluate)

    def prepare(self, table: pa.Table) -> None:
        """`build` once, then `preprocess` this node's data once."""
        self.manager.build(self.base)
        self.manager.preprocess(table, self.base)
        self.prepared = True

    def _config(self, message: Message) -> TrainConfig:
        extra: dict[str, Any] = {}
        for record in message.content.config_records.values():
            extra.update(record)
        return replace(
            self.base,
            round=int(extra.get("server-round", 0)),
            local_epochs=int(extra.get("local-epochs", self.base.local_epochs)),
            batch_size=int(extra.get("batch-size", self.base.batch_size)),
            learning_rate=float(extra.get("learning-rate", self.base.learning_rate)),
            extra=extra,
        )

    def _load_global(self, message: Message) -> None:
        records = list(message.content.array_records.values())
        if records:
            self.manager.set_parameters(records[0].to_numpy_ndarrays())

    def _train(self, message: Message, context: Context) -> Message:
        config = self._config(message)
        self._load_global(message)
        examples, metrics = self.manager.fit(config)
        content = RecordDict(
            {
                "arrays": ArrayRecord(self.manager.get_parameters()),
                "metrics": MetricRecord({**_numeric(metrics), WEIGHT_KEY: int(examples)}),
            }
        )
        return Message(content, reply_to=message)

    def _evaluate(self, message: Message, context: Context) -> Message:
        config = self._config(message)
        self._load_global(message)
        loss, examples, metrics = self.manager.evaluate(config)
        record = MetricRecord({"loss": float(loss), **_numeric(metrics), WEIGHT_KEY: int(examples)})
        return Message(RecordDict({"metrics": record}), reply_to=message)


def learner_context(run_id: int, node_id: int, index: int, count: int, run_config: dict[str, Any] | None = None) -> Context:
    """A ClientApp's Context; `node_config` holds Flower's `partition-id` / `num-partitions`."""
    return Context(
        run_id=run_id,
        node_id=node_id,
        node_config={"partition-id": index, "num-partitions": count},
        state=RecordDict(),
        run_config=dict(run_config or {}),
    )


def prepare_client(
    spec: JobSpec,
    *,
    load_table: Callable[[], pa.Table],
    run_id: int,
    node_id: int,
    index: int,
    count: int,
    node: str = "",
    code_dir: str | Path | None = None,
) -> tuple[Callable[[Message, Context], Message], Context]:
    """The learner's ClientApp and Context, ready to answer (blocking: loads data, preprocesses).

    A ModelManager job gets Ember's wrapper (`build`, `load_table()`, `preprocess` once);
    a Flower app gets the user's own `ClientApp` (it partitions its own data by
    `context.node_config["partition-id"]`), and `load_table` is not called.
    """
    from ember.fl import flwr_compat as compat

    run_config = compat.run_config_from_dir(code_dir) if code_dir else {}
    context = learner_context(run_id, node_id, index, count, run_config)
    if spec.code.clientapp:
        app = load_ref(spec.code.clientapp, code_dir)
        if not isinstance(app, ClientApp):
            raise TypeError(f"{spec.code.clientapp} is not a flwr.clientapp.ClientApp")
        return app, context
    client = ModelManagerClient(new_manager(spec, code_dir), base_config(spec, node))
    client.prepare(load_table())
    return client.app, context


def code_dir_of(ref: str) -> Path | None:
    """The folder on `sys.path` that holds `module:attr`'s top-level package (the code folder)."""
    module_name = ref.partition(":")[0]
    module = importlib.import_module(module_name)
    path = Path(getattr(module, "__file__", "") or "")
    if not path.name:
        return None
    depth = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    folder = path.parent
    for _ in range(depth):
        folder = folder.parent
    return folder
