"""Security against a real Mosquitto run with the generated config: authentication, the ACL
generated from the topic map (each attack of issue 13 replayed as the principal that would try it),
per-job credentials and their revocation, TLS with the provisioned CA.

A forbidden publish is proven dropped without sleeping: the attacker's QoS 1 publish is acknowledged
only after the broker has routed it, then a principal allowed to write the same topic publishes a
control message; a subscriber that may read the topic must get the control message first and never
the forged one (one broker thread, one subscriber queue: order is kept).
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from ember import topics
from ember.actions import ACTIONS as REQUESTS
from ember.actions import JOBS_LIST, JOBS_SUBMIT, JobListItem, NoArguments, SubmitJob, Submitted
from ember.envelope import Envelope
from ember.events import JobState
from ember.asyncapi import build_document
from ember.bundle import pack
from ember.bundle_bus import clear_bundle, fetch_bundle, publish_bundle
from ember.bus import Bus, Message
from ember.errors import RequestTimeout
from ember.security.acl import MUTATING_ACTIONS, READ_ONLY_ACTIONS, Policy, Rule, examples, markdown
from ember.security.broker import secure_broker
from ember.security.identities import UserRole
from ember.security.mqtt import MqttSecurity
from ember.security.provision import Pki, issue_job_credential, provision, reload_broker, revoke, revoke_job_credential, rotate
from ember.settings import parse_mqtt_url
from ember.testing import assert_eventually, free_port, mosquitto_binary, mosquitto_config, wait_for_port

pytestmark = pytest.mark.timeout(60)

ROOT = "ember/v1"
NODES = ("node-1", "node-2")
USERS = {"alice": UserRole.operator, "bob": UserRole.viewer}
JOBS = {"a": ("a-aggregator", "a-learner-0"), "b": ("b-aggregator", "b-learner-0")}
NODE_DATA = (
    topics.DATA if "node" in topics.DATA.params else topics.TopicTemplate("data/{node}/{tag}", "readings addressed to a node")
)


@dataclass
class SecuredBroker:
    home: Path
    url: str
    tls_url: str
    process: subprocess.Popen[bytes]

    def security(self, principal: str) -> MqttSecurity:
        return MqttSecurity.from_identity(Pki(self.home).bundle(principal))

    def bus(self, principal: str, *, tls: bool = False) -> Bus:
        return Bus(self.tls_url if tls else self.url, root=ROOT, security=self.security(principal), source=principal)

    def reload(self) -> None:
        reload_broker(self.process.pid)


@contextlib.contextmanager
def running_broker(home: Path, policy: Policy | None = None) -> Iterator[SecuredBroker]:
    """Provision `home`, start Mosquitto with the secured config (plain and TLS listeners on
    loopback), stop it at the end. `policy` replaces the generated ACL (another topic map)."""
    port, tls_port = free_port(), free_port()
    workdir = home / "broker"
    workdir.mkdir(parents=True, exist_ok=True)
    secured = secure_broker(home, mosquitto_config(port, workdir), tls_port=tls_port, nodes=NODES, users=USERS, topic_root=ROOT)
    for job, (aggregator, learner) in JOBS.items():
        issue_job_credential(home, job, aggregator, "aggregator")
        issue_job_credential(home, job, learner, "learner")
    if policy is not None:
        Pki(home).acl_file.write_text(policy.render(Pki(home).store.all()))
    (workdir / "mosquitto.conf").write_text(secured.config)
    with open(workdir / "mosquitto.log", "ab") as log:
        process = subprocess.Popen([mosquitto_binary(), "-c", str(workdir / "mosquitto.conf")], stdout=log, stderr=log)
    try:
        wait_for_port("127.0.0.1", port, process=process)
        wait_for_port("127.0.0.1", tls_port, process=process)
        yield SecuredBroker(home, f"mqtt://127.0.0.1:{port}", f"mqtts://127.0.0.1:{tls_port}", process)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def broker() -> Iterator[SecuredBroker]:
    with tempfile.TemporaryDirectory(prefix="ember-security-") as tmp, running_broker(Path(tmp)) as b:
        yield b


async def connect_error(url: str, security: MqttSecurity) -> aiomqtt.MqttError | None:
    """The error a client gets connecting to `url` with `security` (None: it connected)."""
    host, port = parse_mqtt_url(url)
    try:
        async with aiomqtt.Client(host, port, protocol=aiomqtt.ProtocolVersion.V5, timeout=10, **security.client_options(url)):
            return None
    except aiomqtt.MqttError as exc:
        return exc


async def assert_dropped(
    broker: SecuredBroker,
    attacker: str,
    legit: str,
    observer: str,
    template: topics.TopicTemplate,
    **params: str,
) -> None:
    """`attacker`'s publish on `template(params)` never reaches `observer`; `legit`'s does."""
    topic = template.format(ROOT, **params)
    got: list[bytes] = []

    async def on_message(message: Message) -> None:
        got.append(message.payload)

    watcher = broker.bus(observer)
    watcher.subscribe(template, on_message, raw=True, **params)  # subscribed before start returns
    async with watcher, broker.bus(attacker) as bad, broker.bus(legit) as good:
        await bad.publish(topic, b"forged")  # QoS 1: acknowledged after the broker routed (or dropped) it
        await good.publish(topic, b"control")
        await assert_eventually(lambda: got, message=f"{observer} never got {legit}'s control message on {topic}")
    assert got[0] == b"control", f"{attacker} could publish on {topic}: {observer} got {got}"
    assert b"forged" not in got


# --- authentication ------------------------------------------------------------------------------


async def test_anonymous_and_wrong_password_are_refused(broker: SecuredBroker) -> None:
    anonymous = await connect_error(broker.url, MqttSecurity())
    assert anonymous is not None and "authori" in str(anonymous).lower()
    wrong = await connect_error(broker.url, MqttSecurity(username="node-1", password="not-the-password"))
    assert wrong is not None
    unknown = await connect_error(broker.url, MqttSecurity(username="mallory", password="x"))
    assert unknown is not None
    assert await connect_error(broker.url, broker.security("node-1")) is None


# --- the ACL, attack by attack -------------------------------------------------------------------


async def test_a_node_cannot_publish_another_nodes_status(broker: SecuredBroker) -> None:
    await assert_dropped(broker, "node-1", "node-2", "manager", topics.NODE_STATUS, node="node-2")


async def test_a_node_cannot_forge_another_nodes_desired_state(broker: SecuredBroker) -> None:
    await assert_dropped(broker, "node-1", "notifier", "node-2", topics.NODE_DESIRED, node="node-2")


async def test_a_node_reads_only_its_own_desired_state(broker: SecuredBroker) -> None:
    got: list[str] = []

    async def on_desired(message: Message) -> None:
        got.append(message.params["node"])

    watcher = broker.bus("node-1")
    watcher.subscribe(topics.NODE_DESIRED, on_desired, raw=True)  # every node's desired state
    async with watcher, broker.bus("notifier") as notifier:
        await notifier.publish(topics.NODE_DESIRED.format(ROOT, node="node-2"), b"{}")
        await notifier.publish(topics.NODE_DESIRED.format(ROOT, node="node-1"), b"{}")
        await assert_eventually(lambda: got)
    assert got == ["node-1"]


async def test_only_the_manager_publishes_events(broker: SecuredBroker) -> None:
    await assert_dropped(broker, "node-1", "manager", "bob", topics.EVENT, aggregate="job", type="JobSucceeded")
    await assert_dropped(broker, "alice", "manager", "bob", topics.EVENT, aggregate="job", type="JobCancelled")
    # the builder writes only the events it appends
    await assert_dropped(broker, "builder", "manager", "bob", topics.EVENT, aggregate="job", type="JobSucceeded")


async def test_a_viewer_cannot_submit_or_cancel_but_may_read(broker: SecuredBroker) -> None:
    for action in sorted(MUTATING_ACTIONS):
        await assert_dropped(broker, "bob", "alice", "manager", topics.REQUEST, action=action)
    # the same viewer's read-only request does reach the manager (the bob -> manager path works)
    await assert_dropped(broker, "node-1", "bob", "manager", topics.REQUEST, action=READ_ONLY_ACTIONS[0])


async def test_only_operators_and_the_builder_publish_code_bundles_and_nodes_fetch_them(broker: SecuredBroker, tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    for attacker in ("bob", "node-1", "notifier"):
        await assert_dropped(broker, attacker, "alice", "builder", topics.BUNDLE, digest=digest)
    (tmp_path / "model.py").write_text("class M: ...\n")
    bundle = pack(tmp_path)
    async with broker.bus("alice") as alice:
        await publish_bundle(alice, bundle)
    data = await fetch_bundle(broker.url, ROOT, bundle.digest, security=broker.security("node-1"))
    assert data == bundle.data
    async with broker.bus("builder") as builder:
        await clear_bundle(builder, bundle.digest)


async def test_requests_and_replies_work_under_the_acl(broker: SecuredBroker) -> None:
    """A viewer's read-only request is answered by the manager on the viewer's own reply topic; a
    viewer's submit never reaches the manager, so it times out."""
    served: list[str] = []

    async def listed(request: NoArguments, envelope: Envelope) -> list[JobListItem]:
        served.append(envelope.type)
        return []

    async def submitted(request: SubmitJob, envelope: Envelope) -> Submitted:
        served.append(envelope.type)
        return Submitted(job="j-1", state=JobState.SUBMITTED)

    manager = broker.bus("manager")
    manager.serve(JOBS_LIST, listed)
    manager.serve(JOBS_SUBMIT, submitted)
    async with manager, broker.bus("bob") as viewer, broker.bus("alice") as operator:
        assert await viewer.request("jobs.list", timeout=10) == []
        with pytest.raises(RequestTimeout):
            await viewer.request("jobs.submit", {"spec": {}}, timeout=1)
        assert (await operator.request("jobs.submit", {"spec": {}}, timeout=10))["job"] == "j-1"
    assert served == ["request.jobs.list", "request.jobs.submit"]


async def test_an_actor_writes_only_its_own_jobs_topics(broker: SecuredBroker) -> None:
    # a node, or another job's learner, cannot speak for job b's learner
    await assert_dropped(broker, "node-1", "job-b-b-learner-0", "job-b-b-aggregator", topics.FL_UP, job="b", actor="b-learner-0")
    await assert_dropped(
        broker, "job-a-a-learner-0", "job-b-b-learner-0", "job-b-b-aggregator", topics.FL_UP, job="b", actor="b-learner-0"
    )
    # only job a's aggregator writes job a's cast and down topics and its progress (a forged JobResult)
    await assert_dropped(broker, "job-a-a-learner-0", "job-a-a-aggregator", "job-a-a-learner-0", topics.FL_CAST, job="a")
    await assert_dropped(
        broker, "job-b-b-aggregator", "job-a-a-aggregator", "job-a-a-learner-0", topics.FL_DOWN, job="a", actor="a-learner-0"
    )
    await assert_dropped(broker, "job-a-a-learner-0", "job-a-a-aggregator", "manager", topics.JOB_PROGRESS, job="a")


async def test_a_device_fleet_writes_only_its_own_nodes_data(tmp_path: Path) -> None:
    """With data topics addressed to a node, node-1's devices cannot feed node-2, and node-2's mldata
    never receives a reading addressed to node-1."""
    with running_broker(tmp_path, Policy(root=ROOT, data=NODE_DATA)) as b:
        await assert_dropped(b, "devices-node-1", "devices-node-2", "node-2", NODE_DATA, node="node-2", tag="t")
        got: list[str] = []

        async def on_data(message: Message) -> None:
            got.append(message.params["node"])

        watcher = b.bus("node-2")
        watcher.subscribe(NODE_DATA, on_data, raw=True)  # every node's data
        async with watcher, b.bus("devices-node-1") as fleet_1, b.bus("devices-node-2") as fleet_2:
            await fleet_1.publish(NODE_DATA.format(ROOT, node="node-1", tag="t"), b"{}")
            await fleet_2.publish(NODE_DATA.format(ROOT, node="node-2", tag="t"), b"{}")
            await assert_eventually(lambda: got)
        assert got == ["node-2"]


# --- rotation, revocation, per-job credentials ---------------------------------------------------


async def test_job_credentials_are_issued_and_revoked(broker: SecuredBroker) -> None:
    identity = issue_job_credential(broker.home, "c", "c-learner-0", "learner")
    assert identity.name == "job-c-c-learner-0"
    security = MqttSecurity(username=identity.name, password=identity.password)
    broker.reload()
    await assert_eventually(lambda: _connects(broker.url, security), message="a new job credential does not connect")
    async with Bus(broker.url, root=ROOT, security=security) as actor:
        assert revoke_job_credential(broker.home, "c", "c-learner-0")
        assert not revoke_job_credential(broker.home, "c", "c-learner-0")
        broker.reload()
        await assert_eventually(lambda: _refused(broker.url, security), message="a revoked credential still connects")
        await assert_eventually(lambda: not actor.connected, message="a revoked actor stays connected")


async def _connects(url: str, security: MqttSecurity) -> bool:
    return await connect_error(url, security) is None


async def _refused(url: str, security: MqttSecurity) -> bool:
    return await connect_error(url, security) is not None


async def test_rotation_replaces_the_password(tmp_path: Path) -> None:
    with running_broker(tmp_path) as b:
        old = b.security("node-2")
        rotate(b.home, "node-2")
        new = b.security("node-2")
        assert new.password != old.password
        b.reload()
        await assert_eventually(lambda: _refused(b.url, old), message="the old password still works")
        assert await _connects(b.url, new)
        revoke(b.home, "node-2")
        assert Pki(b.home).store.get("devices-node-2") is None
        b.reload()
        await assert_eventually(lambda: _refused(b.url, new))


def test_provisioning_is_idempotent_and_private(tmp_path: Path) -> None:
    first = provision(tmp_path, nodes=["node-1"], users={"alice": UserRole.operator})
    assert {"ca", "broker", "manager", "node-1", "devices-node-1", "mldata-node-1", "alice"} <= set(first.created)
    p = Pki(tmp_path)
    password = p.store.get("node-1").password  # type: ignore[union-attr]
    again = provision(tmp_path, nodes=["node-1", "node-2"])
    assert set(again.created) == {"node-2", "devices-node-2", "mldata-node-2"}
    assert p.store.get("node-1").password == password  # type: ignore[union-attr]
    for path in p.folder.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    assert p.folder.stat().st_mode & 0o777 == 0o700
    users = {line.split(":")[0] for line in p.password_file.read_text().splitlines()}
    assert users == {i.name for i in p.store.all()}


# --- TLS -----------------------------------------------------------------------------------------


async def test_tls_with_the_provisioned_ca(broker: SecuredBroker) -> None:
    with_ca = broker.security("node-1")
    assert await connect_error(broker.tls_url, with_ca) is None
    without_ca = MqttSecurity(username=with_ca.username, password=with_ca.password)  # the system's trust store
    error = await connect_error(broker.tls_url, without_ca)
    assert error is not None and "certificate" in str(error).lower()
    # the bus over TLS: a node's report reaches the manager
    await assert_dropped(broker, "node-2", "node-1", "manager", topics.NODE_STATUS, node="node-1")
    got: list[bytes] = []

    async def on_status(message: Message) -> None:
        got.append(message.payload)

    watcher = broker.bus("manager", tls=True)
    watcher.subscribe(topics.NODE_STATUS, on_status, raw=True, node="node-1")
    async with watcher, broker.bus("node-1", tls=True) as node:
        await node.publish(topics.NODE_STATUS.format(ROOT, node="node-1"), b"over tls")
        await assert_eventually(lambda: got == [b"over tls"])


# --- the ACL against the topic map, without a broker ---------------------------------------------


def grants(policy: Policy) -> dict[str, list[Rule]]:
    return {i.name: [*policy.everyone, *policy.rules(i)] for i in examples()}


@pytest.mark.parametrize("policy", [Policy(), Policy(data=NODE_DATA)], ids=["topic-map", "data-with-node"])
def test_every_channel_has_a_writer_and_a_reader_and_nobody_gets_everything(policy: Policy) -> None:
    assert set(policy.templates) >= set(topics.ALL) - {topics.DATA}
    channels = {channel["address"] for channel in build_document(ROOT)["channels"].values()}
    assert channels == {f"{ROOT}/{t.pattern}" for t in topics.ALL}, "the AsyncAPI document and the topic map differ"
    rules = [rule for each in grants(policy).values() for rule in each]
    for template in policy.templates:
        assert any(r.template is template and "write" in r.access for r in rules), f"nobody may publish {template.pattern}"
        assert any(r.template is template and "read" in r.access for r in rules), f"nobody may read {template.pattern}"
    for rule in rules:
        assert "#" not in rule.topic, rule
        assert (
            rule.topic.startswith(f"{ROOT}/") and rule.topic.count("/") == rule.template.pattern.count("/") + ROOT.count("/") + 1
        )


def test_least_privilege_in_the_generated_acl() -> None:
    g = grants(Policy())
    writes = {name: {r.topic for r in rules if "write" in r.access} for name, rules in g.items()}
    reads = {name: {r.topic for r in rules if "read" in r.access} for name, rules in g.items()}
    event_writers = {name for name, topics_ in writes.items() if any("/events/" in t for t in topics_)}
    assert event_writers == {"manager", "builder", "notifier"}
    assert f"{ROOT}/events/+/+" in writes["manager"] and not any(
        "+" in t for t in writes["builder"] | writes["notifier"] if "/events/" in t
    )
    assert {n for n, t in writes.items() if topics.NODE_DESIRED.wildcard(ROOT) in t} == {"notifier"}
    assert all(t.startswith(f"{ROOT}/nodes/node-1/") for t in writes["node-1"])
    assert reads["node-1"] >= {topics.NODE_DESIRED.format(ROOT, node="node-1")}
    assert not any("/desired" in t and "node-1" not in t for t in reads["node-1"])
    assert {f"{ROOT}/req/{a}" for a in MUTATING_ACTIONS}.isdisjoint(writes["bob"]) and f"{ROOT}/req/+" not in writes["bob"]
    assert MUTATING_ACTIONS <= set(REQUESTS)
    assert all(t.startswith(f"{ROOT}/jobs/J/") for name in ("job-J-J-aggregator", "job-J-J-learner-0") for t in writes[name])
    assert {n for n, t in writes.items() if topics.FL_CAST.format(ROOT, job="J") in t} == {"job-J-J-aggregator"}
    node_level = grants(Policy(data=NODE_DATA))
    assert {r.topic for r in node_level["devices-node-1"]} >= {NODE_DATA.wildcard(ROOT, node="node-1")}
    assert not any(NODE_DATA.wildcard(ROOT) == r.topic for r in node_level["devices-node-1"] + node_level["node-1"])


def test_the_acl_table_in_the_docs_is_the_generated_one() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "security.md").read_text()
    assert markdown(Policy(), examples()) in doc, "docs/security.md: paste the output of `python -m ember.security.acl`"


def test_actors_without_job_credentials_can_be_allowed_their_nodes_identity() -> None:
    """The transitional switch: a node's identity also covers the actors it hosts, any job."""
    node = next(i for i in examples() if i.kind == "node")
    strict = {r.topic for r in Policy().rules(node)}
    loose = {r.topic for r in Policy(actors_as_node=True).rules(node)}
    assert not any("/jobs/" in t for t in strict)
    assert {topics.JOB_PROGRESS.wildcard(ROOT), topics.FL_UP.wildcard(ROOT), topics.FL_CAST.wildcard(ROOT)} <= loose


def test_the_provision_command_and_a_node_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tarfile

    from typer.testing import CliRunner

    from ember.cli.main import app

    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    done = runner.invoke(app, ["provision", "--nodes", "2", "--operator", "alice", "--viewer", "bob"])
    assert done.exit_code == 0, done.output
    assert "devices-node-2" in done.output and "viewer" in done.output
    archive = tmp_path / "out" / "node-3.tar.gz"
    done = runner.invoke(app, ["provision", "node", "node-3", "--export", str(archive)])
    assert done.exit_code == 0, done.output
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {f"node-3/{f}" for f in ("identity.json", "devices.json", "ca.crt", "mldata.crt", "mldata.key", "node.env")} <= names
    assert runner.invoke(app, ["provision", "--revoke", "node-3"]).exit_code == 0
    refused = runner.invoke(app, ["provision", "--revoke", "node-3"])
    assert refused.exit_code == 2 and "no principal named 'node-3'" in refused.output
    assert runner.invoke(app, ["provision", "--operator", "job-x"]).exit_code == 2
