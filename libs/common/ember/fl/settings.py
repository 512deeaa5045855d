"""Settings of the aggregator and learner actors, from the environment a flamelet sets.

`EMBER_JOB_ID`, `EMBER_ACTOR_ID`, `EMBER_NODE_ID`, `EMBER_MQTT_URL`, `EMBER_TOPIC_ROOT`,
`EMBER_JOB_SPEC` (the job spec as JSON), `EMBER_LEARNERS` (comma-separated learner actor ids),
`EMBER_GENERATION` (the placement generation it was started in),
`EMBER_MLFLOW_TRACKING_URI` (aggregator; `none` disables tracking), `EMBER_HOME`,
`EMBER_MLDATA_URL` / `EMBER_MLDATA_TOKEN` (learners; empty: the node's mldata defaults),
`EMBER_CODE_DIR` (optional: the user's code folder; default: found from the entry point, else
`code.path` under `EMBER_JOB_SPEC_DIR`), `EMBER_CHECKPOINT_DIR` (aggregator, when the job is
not tracked in MLflow: where its checkpoints go; default `$EMBER_HOME/checkpoints/<job>`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ember.fl.tracking import DISABLED
from ember.jobspec import JobSpec, validate_spec
from ember.data.settings import DataSettings


class ActorSettings(DataSettings):
    """An actor's settings; a learner reaches its node's mldata through the `DataSettings` half."""

    job_id: str = ""
    actor_id: str = ""
    job_spec: str = ""
    learners: str = ""
    generation: int = 0
    """The job's placement generation the actor was started in (`EMBER_GENERATION`)."""
    code_dir: str = ""
    job_spec_dir: str = ""
    checkpoint_dir: str = ""

    def spec(self) -> JobSpec:
        if not self.job_spec:
            raise ValueError("EMBER_JOB_SPEC is not set (the job spec as JSON)")
        return validate_spec(json.loads(self.job_spec))

    def learner_ids(self) -> list[str]:
        return [item.strip() for item in self.learners.split(",") if item.strip()]

    def position(self, spec: JobSpec) -> tuple[int, int]:
        """This learner's (index, learner count): from EMBER_LEARNERS, else from its actor id
        (`{job}-learner-{i}[-g{generation}]`, the notifier's naming) and `learners.count`."""
        learners = self.learner_ids()
        if learners:
            if self.actor_id not in learners:
                raise ValueError(f"{self.actor_id} is not in EMBER_LEARNERS")
            return learners.index(self.actor_id), len(learners)
        found = re.search(r"-learner-(\d+)(?:-g\d+)?$", self.actor_id)
        return (int(found.group(1)) if found else 0), spec.learners.count

    def resolve_code_dir(self, spec: JobSpec) -> str | None:
        """The user's code folder: EMBER_CODE_DIR, else the folder the entry point imports from
        (PYTHONPATH), else `code.path` under EMBER_JOB_SPEC_DIR. Whoever imports the code
        (`ember.fl.clientapp.load_ref`) puts this folder first on `sys.path`."""
        from ember.fl.clientapp import code_dir_of

        ref = spec.code.entrypoint or spec.code.serverapp or spec.code.clientapp
        if self.code_dir or not ref:
            return self.code_dir or None
        try:
            found = code_dir_of(ref)
        except ImportError:
            folder = Path(self.job_spec_dir) / (spec.code.path or ".")
            if not (self.job_spec_dir and folder.is_dir()):
                raise
            return str(folder.resolve())
        return str(found) if found else None

    def tracking_uri(self) -> str | None:
        uri = self.resolved_mlflow_uri()
        return None if uri.lower() in DISABLED else uri

    def checkpoint_folder(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else self.home / "checkpoints" / self.job_id

    def require(self, *names: str) -> None:
        missing = [f"EMBER_{name.upper()}" for name in names if not getattr(self, name)]
        if missing:
            raise ValueError(f"missing environment: {', '.join(missing)}")
