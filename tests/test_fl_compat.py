"""Contract test of every Flower internal Ember relies on (`ember.fl.flwr_compat`).

If this fails after a flwr upgrade, fix `ember/fl/flwr_compat.py` (and only it), then move
`TESTED_FLWR` and the pin in pyproject.toml.
"""

import inspect

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from ember.fl import flwr_compat as compat

pytestmark = pytest.mark.timeout(30)


def test_flwr_version_is_the_tested_range():
    major, minor, *_ = (int(p) for p in compat.flwr_version().split(".")[:2])
    assert (major, minor) == (1, 41), f"flwr {compat.flwr_version()} is outside {compat.TESTED_FLWR}: re-check flwr_compat"


def test_task_identity_is_what_message_stamps():
    compat.set_task_identity(run_id=4242, node_id=compat.AGGREGATOR_NODE_ID, task_id=7)
    msg = Message(RecordDict(), 99, "train", group_id="1")
    assert (msg.metadata.run_id, msg.metadata.src_node_id, msg.metadata.dst_node_id) == (4242, compat.AGGREGATOR_NODE_ID, 99)
    assert msg.metadata.src_task_id == 7
    assert compat.AGGREGATOR_NODE_ID == 1


def test_message_id_setter_and_replies_point_back():
    compat.set_task_identity(run_id=1, node_id=1)
    msg = Message(RecordDict(), 5, "evaluate")
    assert msg.metadata.message_id == ""
    compat.set_message_id(msg, "abc123")
    assert msg.metadata.message_id == "abc123"
    reply = Message(RecordDict(), reply_to=msg)
    assert reply.metadata.reply_to_message_id == "abc123" and reply.metadata.dst_node_id == 1
    error = compat.error_reply(msg, compat.NODE_UNAVAILABLE, "gone")
    assert error.has_error() and error.error.code == compat.NODE_UNAVAILABLE and error.error.reason == "gone"
    assert error.metadata.reply_to_message_id == "abc123"


def test_protobuf_serde_round_trip_keeps_metadata_content_and_errors():
    compat.set_task_identity(run_id=3, node_id=1)
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1.5])]
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({"server-round": 2, "lr": 0.1}), "m": MetricRecord({"a": 1.0})})
    msg = Message(content, 17, "train", group_id="2")
    compat.set_message_id(msg, "m-1")
    back = compat.message_from_bytes(compat.message_to_bytes(msg))
    assert back.metadata == msg.metadata
    got = back.content["arrays"].to_numpy_ndarrays()
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, arrays, strict=True))
    assert dict(back.content["config"]) == {"server-round": 2, "lr": 0.1}
    error = compat.error_reply(msg, compat.CLIENT_APP_RAISED_EXCEPTION, "boom")
    back = compat.message_from_bytes(compat.message_to_bytes(error))
    assert back.has_error() and back.error.reason == "boom"
    with pytest.raises(ValueError):
        compat.message_from_bytes(b"\xff\xfe not protobuf")


def test_shared_content_is_serialised_once_to_the_same_bytes():
    """`messages_to_bytes` (one shared content serialised once, as Flower's strategies send one
    RecordDict to every node) gives exactly `message_to_bytes` of each message."""
    compat.set_task_identity(run_id=3, node_id=1)
    content = RecordDict({"arrays": ArrayRecord([np.arange(650, dtype=np.float64)]), "config": ConfigRecord({"server-round": 4})})
    messages = [Message(content, node, "train", group_id="4") for node in (11, 12, 13)]
    messages.append(Message(RecordDict({"config": ConfigRecord({"x": 1})}), 14, "evaluate", group_id="4"))
    messages.append(compat.error_reply(messages[0], compat.NODE_UNAVAILABLE, "gone"))
    for i, message in enumerate(messages):
        compat.set_message_id(message, f"id-{i}")
    assert compat.messages_to_bytes(messages) == [compat.message_to_bytes(m) for m in messages]
    parts = compat.message_parts(messages)
    assert parts[0][1] is parts[1][1] is parts[2][1] and parts[3][1] is not parts[0][1]  # serialised once
    assert parts[4][1] == b""  # an error reply is all head
    back = compat.message_from_bytes(compat.messages_to_bytes(messages)[1])
    assert back.metadata == messages[1].metadata and np.array_equal(back.content["arrays"].to_numpy_ndarrays()[0], np.arange(650))


def test_run_and_app_config(tmp_path):
    assert compat.make_run(12).run_id == 12
    (tmp_path / "pyproject.toml").write_text('[tool.flwr.app]\npublisher = "x"\n[tool.flwr.app.config]\nnum-server-rounds = 3\nlr = 0.5\n')
    assert compat.run_config_from_dir(tmp_path) == {"num-server-rounds": 3, "lr": 0.5}
    assert compat.run_config_from_dir(tmp_path / "nowhere") == {}


def test_public_surfaces_ember_drives():
    """Not internals, but Ember's grid and drivers break if these change shape."""
    abstract = {name for name, value in vars(Grid).items() if getattr(value, "__isabstractmethod__", False)}
    assert abstract == {"set_run", "run", "create_message", "get_node_ids", "push_messages", "pull_messages", "send_and_receive"}
    start = inspect.signature(FedAvg.start).parameters
    assert {"grid", "initial_arrays", "num_rounds", "timeout", "train_config", "evaluate_config", "evaluate_fn"} <= set(start)
    assert {"server_round", "replies"} <= set(inspect.signature(FedAvg.aggregate_train).parameters)
    assert list(inspect.signature(ClientApp.__call__).parameters)[1:] == ["message", "context"]
    assert list(inspect.signature(ServerApp.__call__).parameters)[1:] == ["grid", "context"]
    assert list(inspect.signature(Context.__init__).parameters)[1:6] == ["run_id", "node_id", "node_config", "state", "run_config"]


def test_array_headers_decode_safely_from_many_threads() -> None:
    """Arrays are decoded on the loop and in worker threads at once. On CPython 3.11 numpy's header
    parsing then failed now and then with a SystemError (a learner's evaluate, in a full suite run);
    the race does not reproduce on demand, so this checks the serialisation is installed and that
    decoding from many threads stays correct with it."""
    import ast
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from flwr.app import ArrayRecord

    from ember.fl import flwr_compat

    if sys.version_info < (3, 12):
        assert getattr(ast.literal_eval, "_ember_serialised", False)
    flwr_compat.serialise_literal_eval()  # idempotent
    record = ArrayRecord([np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(5)])

    def decode(_: int) -> float:
        return float(sum(a.sum() for a in record.to_numpy_ndarrays()))

    with ThreadPoolExecutor(8) as pool:
        totals = list(pool.map(decode, range(2000)))
    assert totals == [66.0 + 5.0] * 2000
