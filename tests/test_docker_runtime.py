"""The flamelet's Docker runtime against a real Docker engine (and a real Mosquitto and registry).

Actors are probe containers (`ember.actors.probe`) of a small image built here from a Python
image and the probe's source. Without an engine the tests skip, saying why; with `CI=true`
they fail instead (see `docker_fixtures`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest
from docker_fixtures import unavailable

from ember.events import ActorSpec, ActorState, Artifact, Role
from ember.flamelet.app import Flamelet
from ember.flamelet.containers import DockerRuntime
from ember.flamelet.runtime import StartFailed
from ember.testing import assert_eventually
from test_flamelet import Observer, flamelet_settings

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]
PROBE_SOURCES = [REPO / "libs/common/ember/actors/__init__.py", REPO / "libs/common/ember/actors/probe.py"]
PYTHON_IMAGE = os.environ.get("EMBER_TEST_PYTHON_IMAGE", "")
"""Any image with `python3` on its PATH; default: the base recipe's root file system (Debian minbase
with python3, `ember.builder.base_image.rootfs_image`, built once per engine)."""


@pytest.fixture
def engine(docker_client):
    return docker_client


@pytest.fixture(scope="session")
def probe_image(docker_client) -> str:
    """`ember-test-probe:<hash>`: the Python image plus the probe actor's source on PYTHONPATH."""
    import docker

    from ember.builder.artifacts import BuildError, BuildRun
    from ember.builder.base_image import default_recipe, rootfs_image

    engine = docker_client
    try:
        base = engine.images.get(PYTHON_IMAGE) if PYTHON_IMAGE else rootfs_image(engine, default_recipe(), BuildRun(), [])
    except docker.errors.ImageNotFound:
        unavailable(f"the Python image {PYTHON_IMAGE} is not on this engine (EMBER_TEST_PYTHON_IMAGE)")
    except BuildError as exc:
        unavailable(f"no Python image to build the probe image from: {exc.reason}")
    digest = hashlib.sha256((base.id or "").encode())
    for path in PROBE_SOURCES:
        digest.update(path.read_bytes())
    tag = f"ember-test-probe:{digest.hexdigest()[:12]}"
    try:
        engine.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = f"FROM {base.id}\nCOPY ember /opt/ember-probe/ember\nENV PYTHONPATH=/opt/ember-probe\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        for path in PROBE_SOURCES:
            tar.add(path, arcname=f"ember/actors/{path.name}")
    context.seek(0)
    engine.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, network_mode="none")
    return tag


def probe(image: str, actor: str, seconds: float, code: int = 0, *, job: str = "job1", cpus: float = 0.5,
          memory_mb: int = 128, allocate_mb: int = 0) -> ActorSpec:
    job_spec = {"name": job, "resources": {"cpus": cpus, "memory_mb": memory_mb}}
    return ActorSpec(
        actor=actor, job=job, role=Role.LEARNER, runtime="docker", module="ember.actors.probe",
        args=["--seconds", str(seconds), "--exit-code", str(code), "--allocate-mb", str(allocate_mb)],
        env={"EMBER_JOB_ID": job, "EMBER_ACTOR_ID": actor, "EMBER_GENERATION": "1", "EMBER_JOB_SPEC": json.dumps(job_spec)},
        artifact=Artifact(kind="image", key="k", image=image),
    )


def containers(engine, home: Path, actor: str | None = None) -> list:
    """The containers of the flamelet whose actors folder is under `home` (node n1)."""
    scope = str((home / "nodes" / "n1" / "actors").resolve())
    labels = [f"ember.scope={scope}"] + ([f"ember.actor={actor}"] if actor else [])
    for _ in range(20):
        try:
            return engine.containers.list(all=True, filters={"label": labels})
        except docker.errors.NotFound:  # one was removed between the listing and its inspection: list again
            continue
    return engine.containers.list(all=True, filters={"label": labels})


@pytest.fixture
def home(tmp_path: Path, engine) -> Iterator[Path]:
    """The node's home; any container left by a failed test is removed."""
    yield tmp_path
    for container in containers(engine, tmp_path):
        container.remove(force=True)


@pytest.fixture
async def observer(mqtt_broker):
    from ember.bus import Bus

    async with Bus(mqtt_broker.url) as bus:
        yield Observer(bus, "n1")


async def test_a_container_actor_runs_with_labels_env_limits_and_logs(engine, probe_image, home):
    runtime = DockerRuntime.connect(home / "nodes" / "n1" / "actors", node="n1")
    assert runtime is not None
    spec = probe(probe_image, "one", 0.2, 3, cpus=0.5, memory_mb=96)
    run = await runtime.start(spec)
    ended = await run.wait()
    assert ended.code == 3 and "exited with code 3" in ended.reason
    assert "probe: done" in run.log_path.read_text() and "actor=one" in run.log_path.read_text()
    [container] = containers(engine, home, "one")
    labels = container.labels
    assert (labels["ember.job"], labels["ember.actor"], labels["ember.node"], labels["ember.generation"]) == ("job1", "one", "n1", "1")
    assert labels["ember.role"] == "learner" and json.loads(labels["ember.spec"])["actor"] == "one"
    host = container.attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 96 * 1024 * 1024 and host["MemorySwap"] == host["Memory"]
    assert host["NetworkMode"] == "host"
    assert "EMBER_ACTOR_ID=one" in container.attrs["Config"]["Env"]
    await runtime.forget("one")
    assert containers(engine, home, "one") == []


async def test_a_container_actor_reads_the_identity_bundle_of_its_flamelet_read_only(engine, probe_image, home):
    bundle = home / "pki" / "identities" / "n1.json"
    bundle.parent.mkdir(parents=True)
    bundle.write_text(json.dumps({"name": "n1", "password": "secret-of-n1"}))
    bundle.chmod(0o600)
    runtime = DockerRuntime.connect(home / "nodes" / "n1" / "actors", node="n1", base_env={"EMBER_IDENTITY": str(bundle)})
    assert runtime is not None
    spec = probe(probe_image, "reader", 0, 0).model_copy(update={"module": "json.tool", "args": [str(bundle)]})
    run = await runtime.start(spec)
    ended = await run.wait()
    assert ended.code == 0, run.log_path.read_text()
    assert "secret-of-n1" in run.log_path.read_text()  # the actor read its credentials at the path its env names
    [container] = containers(engine, home, "reader")
    assert f"EMBER_IDENTITY={bundle.resolve()}" in container.attrs["Config"]["Env"]
    assert not any("secret-of-n1" in var for var in container.attrs["Config"]["Env"])
    [mount] = [m for m in container.attrs["Mounts"] if m["Destination"] == str(bundle.resolve())]
    assert mount["RW"] is False
    await runtime.forget("reader")


async def test_memory_limit_exceeded_fails_the_actor_with_an_out_of_memory_reason(engine, probe_image, home, observer, mqtt_broker):
    async with Flamelet(flamelet_settings(mqtt_broker, home)):
        await assert_eventually(lambda: observer.info and "docker" in observer.info[-1].runtimes)
        await observer.desire(1, probe(probe_image, "hog", 30, memory_mb=64, allocate_mb=256))
        ended = await assert_eventually(lambda: observer.ended("hog"), timeout=60)
        assert ended.state == ActorState.FAILED
        assert ended.reason.startswith("out of memory (limit 64 MiB)") and ended.exit_code == 137


async def test_no_longer_desired_containers_stop_within_5s_and_are_removed(engine, probe_image, home, observer, mqtt_broker):
    async with Flamelet(flamelet_settings(mqtt_broker, home)):
        await observer.desire(1, probe(probe_image, "long", 600), probe(probe_image, "stubborn", 600))
        for actor in ("long", "stubborn"):
            await assert_eventually(lambda a=actor: any("probe: started" in line for line in observer.logs.get(a, [])), timeout=60)
        # the probe under the init process: stopped, it ignores SIGTERM until SIGKILL
        os.kill(child_of(observer.last("stubborn").pid), signal.SIGSTOP)
        await observer.desire(2)
        long = await assert_eventually(lambda: observer.ended("long"), timeout=5)
        stubborn = await assert_eventually(lambda: observer.ended("stubborn"), timeout=5)
        assert long.exit_code == 143 and "no longer desired" in long.reason
        assert "SIGKILL" in stubborn.reason
        await assert_eventually(lambda: containers(engine, home) == [], timeout=10, interval=0.2)


def child_of(pid: int | None) -> int:
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def start_flamelet(mqtt_broker, home: Path) -> subprocess.Popen:
    env = {**os.environ, "EMBER_HOME": str(home), "EMBER_MQTT_URL": mqtt_broker.url, "EMBER_LOG_FORMAT": "json"}
    log = open(home / "flamelet.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "ember.flamelet", "--node", "n1", "--keepalive", "2"], env=env, stdout=log, stderr=log)


async def test_kill_9_then_restart_adopts_running_containers_without_duplicates(engine, probe_image, home, observer, mqtt_broker):
    proc = start_flamelet(mqtt_broker, home)
    try:
        await assert_eventually(lambda: observer.status[-1:] == ["online"], timeout=20)
        await observer.desire(1, probe(probe_image, "survivor", 600))
        await assert_eventually(lambda: any("probe: started" in line for line in observer.logs.get("survivor", [])), timeout=60)
        [before] = containers(engine, home, "survivor")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        await assert_eventually(lambda: observer.status[-1:] == ["offline"], timeout=10)
        before.reload()
        assert before.status == "running", "the container outlives its flamelet"

        proc = start_flamelet(mqtt_broker, home)
        await assert_eventually(lambda: observer.status[-1:] == ["online"], timeout=20)
        await assert_eventually(lambda: observer.last("survivor").state == ActorState.RUNNING)
        assert observer.states("survivor").count("starting") == 1, "adopted, not started again"
        assert [c.id for c in containers(engine, home, "survivor")] == [before.id]
        await observer.desire(2)
        ended = await assert_eventually(lambda: observer.ended("survivor"), timeout=5)
        assert ended.exit_code == 143
        await assert_eventually(lambda: containers(engine, home) == [], timeout=10, interval=0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, (home / "flamelet.log").read_text()[-3000:]


async def test_an_image_is_pulled_by_digest_with_progress_and_collected_when_its_actor_is_forgotten(engine, probe_image, home,
                                                                                                    docker_registry, tmp_path):
    # an image only the registry has: the probe image plus a layer of 4 MB nobody else shares
    (tmp_path / "blob").write_bytes(os.urandom(4 << 20))
    (tmp_path / "Dockerfile").write_text(f"FROM {probe_image}\nCOPY blob /blob\n")
    repository = f"{docker_registry.address}/ember-test/pulled"
    image, _ = engine.images.build(path=str(tmp_path), tag=f"{repository}:build", rm=True, network_mode="none")
    engine.images.push(repository, tag="build")
    digest = engine.images.get_registry_data(f"{repository}:build").id
    engine.images.remove(f"{repository}:build", force=True)
    pinned = f"{repository}@{digest}"

    runtime = DockerRuntime.connect(home / "nodes" / "n1" / "actors", node="n1", keep_images=0)
    assert runtime is not None
    spec = probe(pinned, "pulled", 0)
    reports: list[tuple[int, int]] = []

    async def progress(done: int, total: int) -> None:
        reports.append((done, total))

    await runtime.prepare(spec, progress)
    assert reports and reports[-1][0] == reports[-1][1] >= 4 << 20
    assert all(done <= total for done, total in reports)
    assert pinned in engine.images.get(pinned).attrs["RepoDigests"]
    reports.clear()
    await runtime.prepare(spec, progress)
    assert reports == [], "an image the engine has is not pulled again"

    run = await runtime.start(spec)
    assert (await run.wait()).ok
    await runtime.forget("pulled")  # keep_images=0: the image goes with its last container
    with pytest.raises(Exception, match="No such image|not found"):
        engine.images.get(pinned)


async def test_an_unreachable_registry_fails_the_pull_with_a_reason(engine, home):
    from ember.testing import free_port

    runtime = DockerRuntime.connect(home / "nodes" / "n1" / "actors", node="n1")
    assert runtime is not None
    spec = probe(f"127.0.0.1:{free_port()}/ember-test/absent@sha256:{'0' * 64}", "nowhere", 0)

    async def progress(done: int, total: int) -> None:
        pass

    with pytest.raises(StartFailed, match="cannot pull image 127.0.0.1:.*connection refused"):
        await runtime.prepare(spec, progress)


def test_watch_shows_an_actors_pull_by_quarters_until_it_moves_on():
    from ember.cli.pulls import Pulls

    pulls = Pulls("job1")
    report = {"job": "job1", "actor": "a", "state": "pulling", "reason": "pulling r@sha256:1", "bytes_total": 8_000_000}
    seen = []
    for done in (0, 1_000_000, 2_100_000, 2_200_000, 8_000_000):
        pulls.update(report | {"bytes_done": done})
        seen += pulls.lines()
    assert seen == ["a: pulling r@sha256:1  0.0 MB/8.0 MB", "a: pulling r@sha256:1  2.1 MB/8.0 MB", "a: pulling r@sha256:1  8.0 MB/8.0 MB"]
    pulls.update(report | {"job": "job2", "actor": "b", "bytes_done": 1})
    assert pulls.renderable() is not None and set(pulls.current) == {"a"}
    pulls.update({"job": "job1", "actor": "a", "state": "starting"})
    assert pulls.renderable() is None and pulls.lines() == []


def test_a_node_announces_docker_only_when_an_engine_answers(tmp_path, monkeypatch):
    from ember.flamelet.node import node_runtimes
    from ember.flamelet.settings import FlameletSettings

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    settings = FlameletSettings.from_env({}, home=str(tmp_path), node_id="n1")
    assert node_runtimes(settings).names == ["process"]
