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
from ember.bundle import pack
from ember.bundle_bus import fetch_bundle, publish_bundle
from ember.builder.settings import BuilderSettings
from ember.bus import Bus
from ember.eventlog import open_eventlog
from ember.events import JobCancelled, JobSubmitted, fact_id
from ember.follower import append_and_publish
from ember.jobspec import validate_spec
from ember.errors import NotFound
from ember.testing import assert_eventually
from ember.venvs import ensure_venv

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


def test_builds_from_a_bundle_validates_requirements_in_a_venv_and_caches(tmp_path, project, pip_args):
    root = tmp_path / "artifacts"
    bundle = pack(project)
    job = validate_spec(spec(["embertinypkg", "numpy"], bundle=bundle.digest))
    first, packed = build(job, root, BuildRun(), data=bundle.data, pip_args=pip_args)
    assert packed is None and not first.cached and first.kind == "bundle"
    assert first.bundle == bundle.digest and first.requirements == ["embertinypkg", "numpy"]
    assert not first.python and not first.code_dir  # nothing on the builder's disk travels
    assert sorted(p.name for p in (root / "bundles" / bundle.hex).iterdir()) == ["model.py"]
    venv = ensure_venv(root / "venvs", first.requirements, BuildRun())
    assert venv is not None and venv.parent == root / "venvs"  # built by the build, found again
    where = python_says(str(venv / "bin" / "python"), "import embertinypkg, numpy, ember, sys; print(embertinypkg.__file__, numpy.__file__, sys.prefix)")
    tiny, numpy_file, prefix = where.split()
    assert tiny.startswith(str(venv)) and prefix == str(venv)
    assert not numpy_file.startswith(str(root))  # satisfied by the parent environment: not reinstalled

    again, _ = build(job, root, BuildRun(), pip_args=pip_args)  # cached: no bytes needed
    assert again.cached and again.key == first.key
    (project / "model.py").write_text("class SensorModel:\n    changed = True\n")
    changed_bundle = pack(project)
    changed, _ = build(validate_spec(spec(["embertinypkg", "numpy"], bundle=changed_bundle.digest)), root, BuildRun(), data=changed_bundle.data)
    assert changed.key != first.key and not changed.cached
    assert not list(root.rglob(".tmp-*"))  # no staging left


def test_requirements_the_parent_satisfies_skip_pip():
    assert satisfied_by_parent(["numpy", "flwr>=1.41", "pyarrow; python_version >= '3'"])
    assert not satisfied_by_parent(["numpy<1"])
    assert not satisfied_by_parent([MISSING])
    assert not satisfied_by_parent(["numpy[dev]"])
    assert not satisfied_by_parent(["--index-url=http://x numpy"])


def test_uninstallable_requirement_fails_with_pip_output_and_leaves_nothing(tmp_path, project, pip_args):
    root = tmp_path / "artifacts"
    bundle = pack(project)
    job = validate_spec(spec([MISSING], bundle=bundle.digest))
    with pytest.raises(BuildError) as err:
        build(job, root, BuildRun(), data=bundle.data, pip_args=pip_args)
    assert "pip install failed" in err.value.reason and MISSING in err.value.reason
    assert "No matching distribution found" in err.value.log_tail
    assert list((root / "venvs").iterdir()) == []


def test_git_source_is_packed_into_a_bundle_probe_needs_no_code_and_a_path_is_refused(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "model.py").write_text("X = 1\n")
    (repo / ".gitignore").write_text("*.csv\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    root = tmp_path / "artifacts"
    cloned, packed = build(validate_spec(spec(git=str(repo))), root, BuildRun())
    assert packed is not None and cloned.bundle == packed.digest
    assert sorted(p.name for p in (root / "bundles" / packed.hex).iterdir()) == [".gitignore", "model.py"]
    probe, none = build(validate_spec({"name": "probe", "probe": {"seconds": 0}}), root, BuildRun())
    assert none is None and probe.bundle == "" and probe.requirements == []
    with pytest.raises(BuildError, match="does not read"):
        build(validate_spec(spec(path=str(tmp_path))), root, BuildRun())


async def test_service_builds_submitted_jobs_caches_and_fails_clearly(mqtt_broker, ember_home, tmp_path, project, pip_args):
    settings = BuilderSettings.from_env(  # bundles cleared as soon as their jobs are over
        {"EMBER_HOME": str(ember_home), "EMBER_MQTT_URL": mqtt_broker.url}, builder_pip_args=" ".join(pip_args), builder_bundle_keep=0
    )
    variants = []
    for name in ("other", "never"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.py").write_text(f"class SensorModel:\n    {name} = True\n")
        variants.append(pack(tmp_path / name))
    async with open_eventlog(settings.resolved_eventlog_url()) as eventlog, Bus(mqtt_broker.url) as client:
        shared, (alone, never) = pack(project), variants
        for bundle in (shared, alone, never):
            await publish_bundle(client, bundle)

        async def submit(job: str, raw: dict) -> None:
            event = JobSubmitted(spec=validate_spec(raw).model_dump(mode="json"), name=raw["name"])
            await append_and_publish(eventlog, client, event.envelope(job, source="test", event_id=fact_id(job, "submitted")))

        async def done(job: str):
            return await eventlog.get(fact_id(job, "build-done"))

        await submit("cancelled-1", spec(bundle=never.digest))
        await append_and_publish(eventlog, client, JobCancelled().envelope("cancelled-1", source="test", event_id="cancelled-1:terminal"))
        async with BuilderService(settings) as service:
            await submit("sensor-1", spec(["embertinypkg"], bundle=shared.digest))
            first = await assert_eventually(lambda: done("sensor-1"), timeout=60)
            await submit("sensor-2", spec(["embertinypkg"], bundle=shared.digest))
            second = await assert_eventually(lambda: done("sensor-2"), timeout=60)
            await submit("broken-1", spec([MISSING], bundle=alone.digest))
            failed = await assert_eventually(lambda: done("broken-1"), timeout=60)
            await assert_eventually(lambda: service.builder.projection.jobs["broken-1"].state == "failed")
            await submit("docker-1", {**spec(bundle=shared.digest), "runtime": "docker"})
            unsupported = await assert_eventually(lambda: done("docker-1"), timeout=60)
            jobs = service.builder.projection.jobs
            await assert_eventually(lambda: {alone.digest, never.digest} <= service.builder.released)  # their only job is over
            assert shared.digest not in service.builder.released  # sensor-1 and -2 still use it
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
        assert first.envelope.data["artifact"]["bundle"] == shared.digest
        assert await fetch_bundle(mqtt_broker.url, "ember/v1", shared.digest) == shared.data
        for cleared in (alone, never):
            with pytest.raises(NotFound):  # cleared from the broker
                await fetch_bundle(mqtt_broker.url, "ember/v1", cleared.digest, wait=0.5)


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
            bundle = pack(project)
            await publish_bundle(client, bundle)
            async with BuilderService(settings) as service:
                event = JobSubmitted(spec=validate_spec(spec(["embertinypkg"], bundle=bundle.digest)).model_dump(mode="json"), name="sensor")
                await append_and_publish(eventlog, client, event.envelope("slow-1", source="test", event_id="slow-1:submitted"))
                await assert_eventually(lambda: service.builder.current is not None and service.builder.current[1].process is not None, timeout=30)
                await append_and_publish(eventlog, client, JobCancelled().envelope("slow-1", source="test", event_id="slow-1:terminal"))
                await assert_eventually(lambda: service.builder.current is None and not service.builder.queued, timeout=30)
            types = [e.type for e in await eventlog.read(subject="slow-1")]
    assert types == ["JobSubmitted", "BuildStarted", "JobCancelled"]
    assert not list(settings.artifacts_dir().rglob(".tmp-*"))  # the half-built staging folder is gone
    assert list((settings.artifacts_dir() / "venvs").iterdir()) == []
