"""The builder's docker runtime against the real engine and a real `docker-registry`.

Ember's base image is built once per machine and found by its content tag afterwards (the first run
on a fresh machine pays for debootstrap); wheelhouses are shared between runs for the same reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import yaml

from ember.builder.app import BuilderService
from ember.builder.artifacts import BuildError, BuildRun
from ember.builder.images import REPOSITORY, ImageSettings, build_image
from ember.builder.settings import BuilderSettings
from ember.bundle_bus import bundle_spec, publish_bundle
from ember.bus import Bus
from ember.eventlog import open_eventlog
from ember.events import JobSubmitted, fact_id
from ember.follower import append_and_publish
from ember.jobspec import JobSpec, validate_spec
from ember.testing import assert_eventually, free_port

pytestmark = pytest.mark.timeout(900)  # a fresh machine builds the base image first

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
MISSING = "ember-no-such-package-xyz==0.0.1"
WHEELHOUSE = Path(tempfile.gettempdir()) / "ember-tests-wheelhouse"


def digits_spec(**changes: object) -> dict:
    raw = yaml.safe_load((DIGITS / "job.yaml").read_text())
    return validate_spec({**raw, "runtime": "docker", **changes}).model_dump(mode="json")


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    """A copy of examples/digits the test may edit."""
    code = tmp_path / "digits"
    shutil.copytree(DIGITS, code, ignore=shutil.ignore_patterns("__pycache__"))
    return code


@pytest.fixture(scope="module")
def shared_registry(docker_client):
    """One registry for this module: the base's layers are pushed once, not once per test."""
    from docker_fixtures import unavailable

    from ember.registry import private_registry, registry_binary

    try:
        registry_binary()
    except RuntimeError as exc:
        unavailable(str(exc))
    with private_registry() as registry:
        yield registry
    for image in docker_client.images.list():  # the tags naming this registry die with it
        for tag in image.tags:
            if tag.startswith(f"{registry.address}/"):
                docker_client.images.remove(tag)


def ember_images(client) -> set[str]:
    """Ids of the images Ember's builder makes (other tests on this engine make their own)."""
    return {image.id for image in client.images.list() if any("ember/deps:" in tag or "/ember/actor:" in tag for tag in image.tags)}


def image_settings(registry: str) -> ImageSettings:
    return ImageSettings(registry=registry, wheelhouse=WHEELHOUSE)


async def test_builds_digits_pushes_it_by_digest_and_a_resubmit_builds_nothing(mqtt_broker, ember_home, docker_client, shared_registry, digits):
    env = {"EMBER_HOME": str(ember_home), "EMBER_MQTT_URL": mqtt_broker.url, "EMBER_REGISTRY": shared_registry.address}
    settings = BuilderSettings.from_env(env, builder_wheelhouse_dir=str(WHEELHOUSE))
    async with open_eventlog(settings.resolved_eventlog_url()) as eventlog, Bus(mqtt_broker.url) as client:

        async def submit(job: str, spec: dict) -> None:
            spec, bundle = bundle_spec(spec, digits)  # the code travels as a bundle, as `ember job submit` sends it
            if bundle is not None:
                await publish_bundle(client, bundle)
            event = JobSubmitted(spec=spec, name=spec["name"])
            await append_and_publish(eventlog, client, event.envelope(job, source="test", event_id=fact_id(job, "submitted")))

        async def done(job: str):
            return await eventlog.get(fact_id(job, "build-done"))

        async with BuilderService(settings):
            await submit("digits-1", digits_spec())
            first = await assert_eventually(lambda: done("digits-1"), timeout=600)
            assert first.type == "BuildSucceeded", first.envelope.data
            images_before = ember_images(docker_client)
            await submit("digits-2", digits_spec())
            second = await assert_eventually(lambda: done("digits-2"), timeout=60)
            await submit("broken-1", digits_spec(code={"path": ".", "entrypoint": "model:DigitsModel", "requirements": [MISSING]}))
            failed = await assert_eventually(lambda: done("broken-1"), timeout=300)
        started = await eventlog.get(fact_id("digits-1", "build-started"))
        assert started.envelope.data["reason"] == "building an image"

    built, again = first.envelope.data["artifact"], second.envelope.data["artifact"]
    assert built["kind"] == "image" and not built["cached"]
    assert built["image"].startswith(f"{shared_registry.address}/{REPOSITORY}@sha256:")
    assert again["cached"] and again["image"] == built["image"]  # found in the registry: nothing built
    assert ember_images(docker_client) == images_before

    # the registry serves exactly that digest, and the image runs the actor entry points offline
    pulled = docker_client.images.pull(built["image"])
    assert built["image"].split("@")[1] in pulled.attrs["RepoDigests"][0]
    command = [built["python"], "-c", "import model, sklearn, ember.actors.learner, ember.actors.aggregator; print(model.DigitsModel.__name__)"]
    out = docker_client.containers.run(pulled.id, command, remove=True, network_mode="none")
    assert out.decode().strip() == "DigitsModel"
    out = docker_client.containers.run(pulled.id, [built["python"], "-m", "ember.actors.probe", "--help"], remove=True, network_mode="none")
    assert b"usage" in out.lower()

    assert failed.type == "BuildFailed"
    assert f"No matching distribution found for {MISSING}" in failed.envelope.data["reason"]
    assert failed.envelope.data["log_tail"]


def test_a_one_line_code_change_rebuilds_only_the_code_layer(docker_client, shared_registry, digits):
    spec = JobSpec.model_validate(digits_spec())
    settings = image_settings(shared_registry.address)
    first = build_image(spec, str(digits), settings, BuildRun())
    model = digits / "model.py"
    model.write_text(model.read_text().replace("class DigitsModel", "# one changed line\nclass DigitsModel", 1))
    second = build_image(spec, str(digits), settings, BuildRun())
    assert not second.cached and second.key != first.key and second.image != first.image

    def layers(key: str) -> list[str]:
        return docker_client.images.get(f"{shared_registry.address}/{REPOSITORY}:{key}").attrs["RootFS"]["Layers"]

    old, new = layers(first.key), layers(second.key)
    assert len(old) == len(new) >= 3  # base, requirements, code
    assert old[:-1] == new[:-1]  # every lower layer reused
    assert old[-1] != new[-1]
    out = docker_client.containers.run(second.image, ["python", "-c", "import inspect, model; print(inspect.getsource(model).count('one changed line'))"],
                                       remove=True, network_mode="none")
    assert out.decode().strip() == "1"


def test_an_unreachable_registry_fails_at_once_with_what_to_do(docker_client, digits):
    spec = JobSpec.model_validate(digits_spec())
    with pytest.raises(BuildError) as refused:
        build_image(spec, str(digits), image_settings(f"127.0.0.1:{free_port()}"), BuildRun())
    assert "cannot be reached" in refused.value.reason and "EMBER_REGISTRY" in refused.value.reason
    with socket.socket() as silent:  # accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with pytest.raises(BuildError) as hung:
            build_image(spec, str(digits), image_settings(f"127.0.0.1:{silent.getsockname()[1]}"), BuildRun())
    assert "cannot be reached" in hung.value.reason
    with pytest.raises(BuildError) as unset:
        build_image(spec, str(digits), image_settings(""), BuildRun())
    assert "EMBER_REGISTRY" in unset.value.reason


def test_a_broken_base_recipe_fails_with_its_step_and_output(docker_client, shared_registry, digits, tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "rootfs.sh").write_text("echo 'E: no mirror answers at http://mirror.invalid' >&2\nexit 3\n")
    spec = JobSpec.model_validate(digits_spec())
    settings = ImageSettings(registry=shared_registry.address, wheelhouse=WHEELHOUSE, base_recipe=recipe)
    with pytest.raises(BuildError) as err:
        build_image(spec, str(digits), settings, BuildRun())
    assert "base image step 'rootfs' failed" in err.value.reason and "exited with 3" in err.value.reason
    assert "no mirror answers" in err.value.log_tail


def test_the_stack_runs_a_registry_for_the_docker_runtime(tmp_path, shared_registry):
    from ember.registry import answers
    from ember.settings import Settings
    from ember.stack import Stack

    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if key != "EMBER_REGISTRY"}
    with Stack(home, flamelets=0, mldata=False, services=("manager",), registry=True, env=env) as stack:
        address = stack.registry_address
        assert address.startswith("127.0.0.1:") and answers(address)
        assert stack.procs["registry"].alive() and (home / "registry").is_dir()
        assert Settings.from_env({"EMBER_HOME": str(home)}).resolved_registry() == address
    assert not answers(address)
    with Stack(home, flamelets=0, mldata=False, services=("manager",), registry=True, env={**env, "EMBER_REGISTRY": shared_registry.address}) as stack:
        assert stack.registry_address == shared_registry.address and "registry" not in stack.procs


@pytest.mark.parametrize("ci", ["", "true"])
def test_without_an_engine_docker_tests_skip_but_fail_under_ci(ci, tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "CI": ci}
    test = f"{Path(__file__)}::test_a_one_line_code_change_rebuilds_only_the_code_layer"
    done = subprocess.run([sys.executable, "-m", "pytest", test, "-q", "-p", "no:cacheprovider", "-rs"], env=env, capture_output=True, text=True, timeout=120)
    if ci:
        assert done.returncode == 1 and "CI=true and the Docker path cannot run: no Docker engine answers" in done.stdout
    else:
        assert done.returncode == 0 and "1 skipped" in done.stdout and "no Docker engine answers" in done.stdout
