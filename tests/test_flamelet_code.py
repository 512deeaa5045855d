"""A process-runtime flamelet runs a `bundle` artifact from its own copy: it fetches the code by
digest over a real Mosquitto, prepares the requirements in a local venv (a real pip, offline),
and caches both by hash; nothing is read from the builder's or the submitter's disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ember.bundle import pack
from ember.bundle_bus import publish_bundle
from ember.bus import Bus
from ember.events import ActorSpec, Artifact, Role
from ember.flamelet.code import CodeCache
from ember.flamelet.process import ProcessRuntime
from ember.flamelet.runtime import StartFailed
from tests.test_builder import make_wheel

pytestmark = pytest.mark.timeout(120)

SCRIPT = "import sys, embertinypkg, greet\nprint('value', embertinypkg.VALUE, greet.__file__, sys.prefix)\n"


def actor(name: str, digest: str, url: str, requirements: list[str]) -> ActorSpec:
    return ActorSpec(actor=name, job="job1", role=Role.LEARNER, module="main",
                     env={"EMBER_MQTT_URL": url, "EMBER_TOPIC_ROOT": "ember/v1"},
                     artifact=Artifact(kind="bundle", key="k", bundle=digest, requirements=requirements))


async def test_fetches_the_bundle_prepares_a_local_venv_and_caches_both(mqtt_broker, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_text(SCRIPT)
    (code / "greet.py").write_text("HELLO = 1\n")
    bundle = pack(code)
    node = tmp_path / "node"
    cache = CodeCache(node / "code", pip_args=["--no-index", "--find-links", str(make_wheel(tmp_path / "wheels"))])
    runtime = ProcessRuntime(node / "actors", code=cache)
    async with Bus(mqtt_broker.url) as bus:
        await publish_bundle(bus, bundle)
    shutil.rmtree(code)  # only the broker has the code now

    first = await runtime.start(actor("a1", bundle.digest, mqtt_broker.url, ["embertinypkg"]))
    assert (await first.wait()).ok, first.log_path.read_text()
    words = first.log_path.read_text().split("value", 1)[1].split()
    assert words[0] == "42"
    assert Path(words[1]).parent == node / "code" / "bundles" / bundle.hex
    venvs = list((node / "code" / "venvs").iterdir())
    assert len(venvs) == 1 and Path(words[2]) == venvs[0]

    async with Bus(mqtt_broker.url) as bus:  # cleared from the broker: the node's cache serves it
        await bus.publish(f"ember/v1/bundles/{bundle.digest}", b"", retain=True)
    second = await runtime.start(actor("a2", bundle.digest, mqtt_broker.url, ["embertinypkg"]))
    assert (await second.wait()).ok, second.log_path.read_text()
    assert list((node / "code" / "venvs").iterdir()) == venvs


async def test_a_bundle_nobody_published_fails_the_start_with_the_reason(mqtt_broker, tmp_path: Path) -> None:
    runtime = ProcessRuntime(tmp_path / "actors", code=CodeCache(tmp_path / "code", fetch_timeout=0.5))
    with pytest.raises(StartFailed, match="no code bundle sha256:0+ on the broker"):
        await runtime.start(actor("a1", "sha256:" + "0" * 64, mqtt_broker.url, []))
