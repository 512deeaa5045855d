"""The builder: real venvs, a real pip (offline, from a local wheel folder), real git, and the
service itself against a real Mosquitto and SQLite log."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ember.builder.app import BuilderService
from ember.builder.artifacts import BuildError, BuildRun, build, satisfied_by_parent
from ember.builder.settings import BuilderSettings
from ember.bus import Bus
from ember.eventlog import open_eventlog
from ember.events import JobCancelled, JobSubmitted, fact_id
from ember.follower import append_and_publish
from ember.jobspec import validate_spec
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(120)

MISSING = "ember-no-such-package-xyz==0.0.1"


def make_wheel(folder: Path, name: str = "embertinypkg", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, so pip installs something real without any index."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: ember-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return folder


@pytest.fixture
def project(tmp_path: Path) -> Path:
    code = tmp_path / "project"
    code.mkdir()
    (code / "model.py").write_text("class SensorModel:\n    pass\n")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"ignored")
    return code


@pytest.fixture
def pip_args(tmp_path: Path) -> list[str]:
    return ["--no-index", "--find-links", str(make_wheel(tmp_path / "wheels"))]


def spec(requirements: list[str] | str = (), **code) -> dict:
    return {"name": "sensor", "code": {"entrypoint": "model:SensorModel", "requirements": list(requirements), **code}}


def python_says(python: str, code: str) -> str:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def test_builds_a_venv_reuses_it_and_keys_it_by_content(tmp_path, project, pip_args):
    root = tmp_path / "artifacts"
    job = validate_spec(spec(["embertinypkg", "numpy"], path="project"))
    first = build(job, str(tmp_path), root, BuildRun(), pip_args=pip_args)
    assert not first.cached and first.kind == "venv"
    assert Path(first.code_dir) == root / first.key / "code"
    assert sorted(p.name for p in Path(first.code_dir).iterdir()) == ["model.py"]
    where = python_says(first.python, "import embertinypkg, numpy, ember, sys; print(embertinypkg.__file__, numpy.__file__, sys.prefix)")
    tiny, numpy_file, prefix = where.split()
    assert tiny.startswith(str(root / first.key)) and prefix == str(root / first.key)
    assert not numpy_file.startswith(str(root))  # satisfied by the parent environment: not reinstalled
    assert not list(root.glob(f"{first.key}/lib/python*/site-packages/numpy"))

    again = build(job, str(tmp_path), root, BuildRun(), pip_args=pip_args)
    assert again.cached and again.key == first.key and again.python == first.python
    (project / "model.py").write_text("class SensorModel:\n    changed = True\n")
    changed = build(job, str(tmp_path), root, BuildRun(), pip_args=pip_args)
    assert changed.key != first.key and not changed.cached
    assert sorted(p.name for p in root.iterdir()) == sorted([first.key, changed.key])  # no staging left


def test_requirements_the_parent_satisfies_skip_pip():
    assert satisfied_by_parent(["numpy", "flwr>=1.41", "pyarrow; python_version >= '3'"])
    assert not satisfied_by_parent(["numpy<1"])
    assert not satisfied_by_parent([MISSING])
    assert not satisfied_by_parent(["numpy[dev]"])
    assert not satisfied_by_parent(["--index-url=http://x numpy"])


def test_uninstallable_requirement_fails_with_pip_output_and_leaves_nothing(tmp_path, project, pip_args):
    root = tmp_path / "artifacts"
    job = validate_spec(spec([MISSING], path=str(project)))
    with pytest.raises(BuildError) as err:
        build(job, "", root, BuildRun(), pip_args=pip_args)
    assert "pip install failed" in err.value.reason and MISSING in err.value.reason
    assert "No matching distribution found" in err.value.log_tail
    assert list(root.iterdir()) == []


def test_git_source_and_probe_without_code(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "model.py").write_text("X = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    root = tmp_path / "artifacts"
    cloned = build(validate_spec(spec(git=str(repo))), "", root, BuildRun())
    assert sorted(p.name for p in Path(cloned.code_dir).iterdir()) == ["model.py"]
    probe = build(validate_spec({"name": "probe", "probe": {"seconds": 0}}), "", root, BuildRun())
    assert list(Path(probe.code_dir).iterdir()) == []
    assert python_says(probe.python, "import ember.jobspec; print('ok')") == "ok"
    with pytest.raises(BuildError, match="does not exist"):
        build(validate_spec(spec(path="nowhere")), str(tmp_path), root, BuildRun())


async def test_service_builds_submitted_jobs_caches_and_fails_clearly(mqtt_broker, ember_home, tmp_path, project, pip_args):
    settings = BuilderSettings.from_env(
        {"EMBER_HOME": str(ember_home), "EMBER_MQTT_URL": mqtt_broker.url}, builder_pip_args=" ".join(pip_args)
    )
    async with open_eventlog(settings.resolved_eventlog_url()) as eventlog, Bus(mqtt_broker.url) as client:

        async def submit(job: str, raw: dict) -> None:
            event = JobSubmitted(spec=validate_spec(raw).model_dump(mode="json"), name=raw["name"], spec_dir=str(tmp_path))
            await append_and_publish(eventlog, client, event.envelope(job, source="test", event_id=fact_id(job, "submitted")))

        async def done(job: str):
            return await eventlog.get(fact_id(job, "build-done"))

        await submit("cancelled-1", spec(path="project"))
        await append_and_publish(eventlog, client, JobCancelled().envelope("cancelled-1", source="test", event_id="cancelled-1:terminal"))
        async with BuilderService(settings) as service:
            await submit("sensor-1", spec(["embertinypkg"], path="project"))
            first = await assert_eventually(lambda: done("sensor-1"), timeout=60)
            await submit("sensor-2", spec(["embertinypkg"], path="project"))
            second = await assert_eventually(lambda: done("sensor-2"), timeout=60)
            await submit("broken-1", spec([MISSING], path="project"))
            failed = await assert_eventually(lambda: done("broken-1"), timeout=60)
            await assert_eventually(lambda: service.builder.projection.jobs["broken-1"].state == "failed")
            await submit("docker-1", {**spec(path="project"), "runtime": "docker"})
            unsupported = await assert_eventually(lambda: done("docker-1"), timeout=60)
            jobs = service.builder.projection.jobs
            assert [t.state.value for t in jobs["sensor-1"].transitions] == ["submitted", "building", "placing"]

        assert first.type == second.type == "BuildSucceeded"
        assert not first.envelope.data["artifact"]["cached"] and second.envelope.data["artifact"]["cached"]
        assert first.envelope.data["artifact"]["key"] == second.envelope.data["artifact"]["key"]
        assert failed.type == "BuildFailed" and "No matching distribution found" in failed.envelope.data["log_tail"]
        terminal = await eventlog.get(fact_id("broken-1", "terminal"))
        assert terminal.type == "JobFailed" and MISSING in terminal.envelope.data["reason"]
        assert jobs["broken-1"].reason.startswith("build failed: pip install failed")
        assert unsupported.type == "BuildFailed" and "set EMBER_REGISTRY" in unsupported.envelope.data["reason"]  # docker, no registry
        assert await eventlog.get(fact_id("cancelled-1", "build-started")) is None  # a cancelled job is left alone
        assert [e.type for e in await eventlog.read(subject="sensor-1")] == ["JobSubmitted", "BuildStarted", "BuildSucceeded"]


def test_python_m_ember_builder_starts_and_stops_on_sigterm(mqtt_broker, ember_home):
    import os
    import signal

    env = {**os.environ, "EMBER_HOME": str(ember_home), "EMBER_MQTT_URL": mqtt_broker.url, "EMBER_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "ember.builder"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "builder.started" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert "builder.stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_job_cancelled_while_building_is_not_moved_on(mqtt_broker, ember_home, tmp_path, project):
    import socket

    with socket.socket() as silent:  # an index that accepts connections and never answers: pip hangs
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        index = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        settings = BuilderSettings.from_env(
            {"EMBER_HOME": str(ember_home), "EMBER_MQTT_URL": mqtt_broker.url}, builder_pip_args=f"--no-index --find-links {index}"
        )
        async with open_eventlog(settings.resolved_eventlog_url()) as eventlog, Bus(mqtt_broker.url) as client:
            async with BuilderService(settings) as service:
                event = JobSubmitted(spec=validate_spec(spec(["embertinypkg"], path="project")).model_dump(mode="json"), name="sensor", spec_dir=str(tmp_path))
                await append_and_publish(eventlog, client, event.envelope("slow-1", source="test", event_id="slow-1:submitted"))
                await assert_eventually(lambda: service.builder.current is not None and service.builder.current[1].process is not None, timeout=30)
                await append_and_publish(eventlog, client, JobCancelled().envelope("slow-1", source="test", event_id="slow-1:terminal"))
                await assert_eventually(lambda: service.builder.current is None and not service.builder.queued, timeout=30)
            types = [e.type for e in await eventlog.read(subject="slow-1")]
    assert types == ["JobSubmitted", "BuildStarted", "JobCancelled"]
    assert list(settings.artifacts_dir().iterdir()) == []  # the half-built staging folder is gone
