"""Settings of the aggregator and learner actors, from the environment a flamelet sets.

`EMBER_JOB_ID`, `EMBER_ACTOR_ID`, `EMBER_NODE_ID`, `EMBER_MQTT_URL`, `EMBER_TOPIC_ROOT`,
`EMBER_JOB_SPEC` (the job spec as JSON), `EMBER_LEARNERS` (comma-separated learner actor ids),
`EMBER_MLFLOW_TRACKING_URI` (aggregator; `none` disables tracking), `EMBER_HOME`,
`EMBER_MLDATA_URL` / `EMBER_MLDATA_TOKEN` (learners; empty: the node's mldata defaults),
`EMBER_CODE_DIR` (optional: the user's code folder; default: found from the entry point).
"""

from __future__ import annotations

import json

from ember.fl.tracking import DISABLED
from ember.jobspec import JobSpec, validate_spec
from ember.settings import Settings


class ActorSettings(Settings):
    job_id: str = ""
    actor_id: str = ""
    job_spec: str = ""
    learners: str = ""
    mldata_url: str = ""
    mldata_token: str = ""
    code_dir: str = ""

    def spec(self) -> JobSpec:
        if not self.job_spec:
            raise ValueError("EMBER_JOB_SPEC is not set (the job spec as JSON)")
        return validate_spec(json.loads(self.job_spec))

    def learner_ids(self) -> list[str]:
        return [item.strip() for item in self.learners.split(",") if item.strip()]

    def tracking_uri(self) -> str | None:
        uri = self.resolved_mlflow_uri()
        return None if uri.lower() in DISABLED else uri

    def require(self, *names: str) -> None:
        missing = [f"EMBER_{name.upper()}" for name in names if not getattr(self, name)]
        if missing:
            raise ValueError(f"missing environment: {', '.join(missing)}")
