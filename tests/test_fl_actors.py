"""Actor configuration from the environment a flamelet sets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ember.fl.settings import ActorSettings
from ember.jobspec import validate_spec

pytestmark = pytest.mark.timeout(60)

APP_DIR = Path(__file__).parent / "fl_app"
SPEC = {"name": "tiny", "code": {"path": "fl_app", "entrypoint": "tiny_model:TinyModel"}, "learners": {"count": 3}}


def test_learner_position_from_the_learner_list_or_its_actor_id():
    spec = validate_spec(SPEC)
    listed = ActorSettings.from_env({"EMBER_ACTOR_ID": "j-learner-1", "EMBER_LEARNERS": "j-learner-0,j-learner-1"})
    assert listed.position(spec) == (1, 2)
    assert ActorSettings.from_env({"EMBER_ACTOR_ID": "j-learner-2-g3"}).position(spec) == (2, 3)
    with pytest.raises(ValueError, match="not in EMBER_LEARNERS"):
        ActorSettings.from_env({"EMBER_ACTOR_ID": "x", "EMBER_LEARNERS": "a,b"}).position(spec)


def test_code_folder_from_the_spec_dir_when_not_on_the_path(monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p).resolve() != APP_DIR.resolve()])
    monkeypatch.delitem(sys.modules, "tiny_model", raising=False)
    settings = ActorSettings.from_env({"EMBER_JOB_SPEC_DIR": str(APP_DIR.parent)})
    assert Path(settings.resolve_code_dir(validate_spec(SPEC))) == APP_DIR.resolve()


@pytest.mark.parametrize("module", ["ember.actors.aggregator", "ember.actors.learner"])
def test_bad_configuration_exits_2_with_the_reason(module, tmp_path):
    env = {"EMBER_HOME": str(tmp_path), "EMBER_JOB_ID": "j", "EMBER_ACTOR_ID": "a", "EMBER_LEARNERS": "a", "EMBER_JOB_SPEC": json.dumps({"name": "Bad Name"})}
    proc = subprocess.run([sys.executable, "-m", module], env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    last = json.loads(proc.stderr.strip().splitlines()[-1])
    assert "bad configuration" in last["reason"] and "name" in last["reason"]
