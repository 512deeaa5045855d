"""Content references: a learner is not sent again the model it already holds, and one that
lacks it (restarted) gets it in full; through a real Mosquitto."""

import asyncio

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from ember.bus import Bus
from ember.fl import flwr_compat as compat
from ember.fl.clientapp import learner_context
from ember.fl.content import ContentBook, ContentCache
from ember.fl.endpoint import learner_bus
from ember.fl.grid import MqttGrid, node_id_for
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(90)


def model(seed: int = 0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord([rng.normal(size=(512, 1024)).astype(np.float32), rng.normal(size=300).astype(np.float32)])


def test_pieces_parse_as_the_whole_message_and_references_resolve_from_the_cache():
    compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
    arrays = model()
    msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}), 5, "train")
    compat.set_message_id(msg, "m1")
    [(head, pieces)] = compat.message_pieces([msg])
    assert len(pieces) == 2
    whole = compat.message_from_bytes(head + b"".join(pieces))
    assert whole.metadata == msg.metadata
    assert whole.content["arrays"].to_numpy_ndarrays()[0].tobytes() == arrays.to_numpy_ndarrays()[0].tobytes()

    book, cache, fresh = ContentBook(), ContentCache(), ContentCache()
    table, inline = book.plan(["a"], pieces)
    assert len(inline) == 2 and all(entry[2] for entry in table)
    assert cache.resolve(head + b"".join(inline), table) == head + b"".join(pieces)
    table, inline = book.plan(["a"], pieces)  # the same model again: referenced
    assert [entry[2] for entry in table] == [False, True] and inline == [pieces[1]]
    assert cache.resolve(head + b"".join(inline), table) == head + b"".join(pieces)
    assert fresh.resolve(head + b"".join(inline), table) is None  # a restarted learner lacks it
    table, inline = book.plan(["a", "b"], pieces)  # b never got it: everything inline
    assert all(entry[2] for entry in table)


async def test_same_model_goes_once_and_a_restarted_learner_gets_it_in_full(mqtt_broker):
    """Train then evaluate pushes with one model and different configs: the second push carries a
    reference, not the model; replies (an echo) are bit-identical to the model. A learner that
    restarts between pushes lacks the model, asks for it, and still answers correctly."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        return Message(RecordDict({"arrays": message.content["arrays"]}), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context) -> Message:
        return Message(RecordDict({"arrays": message.content["arrays"]}), reply_to=message)

    job, actors = "content-job", ["learner-a", "learner-b"]
    agg_bus = Bus(mqtt_broker.url, client_id="agg-content")
    grid = MqttGrid(agg_bus, job=job, learners=actors, minimum=1, run_id=1)
    learners = [learner_bus(mqtt_broker.url, root="ember/v1", job=job, actor=a) for a in actors]

    def serve(i: int, endpoint) -> asyncio.Task:
        return asyncio.create_task(endpoint.run(lambda: (app, learner_context(1, node_id_for(actors[i]), i, 2))))

    async def push(kind: str, arrays: ArrayRecord, number: int) -> None:
        compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
        content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": number})})
        messages = [Message(content, node_id_for(a), kind) for a in actors]
        replies = list(await asyncio.to_thread(grid.send_and_receive, messages, timeout=30))
        assert len(replies) == 2 and not any(r.has_error() for r in replies)
        for reply in replies:
            for got, sent in zip(reply.content["arrays"].to_numpy_ndarrays(), arrays.to_numpy_ndarrays(), strict=True):
                assert got.dtype == sent.dtype and got.tobytes() == sent.tobytes()

    size = sum(a.nbytes for a in model().to_numpy_ndarrays())
    async with agg_bus, learners[0][0]:
        async with learners[1][0]:
            serving = [serve(i, endpoint) for i, (_, endpoint) in enumerate(learners)]
            assert sorted(await grid.wait_ready(10)) == actors
            await push("train", model(0), 1)
            assert grid.content.referenced_bytes == 0
            await push("evaluate", model(0), 1)  # same model, other config: a reference
            assert grid.content.referenced_bytes >= size and grid.stats["content_misses"] == 0
            learners[1][1].stop("restarting")
            await asyncio.wait_for(serving[1], 10)
        bus_b, endpoint_b = learner_bus(mqtt_broker.url, root="ember/v1", job=job, actor="learner-b")
        async with bus_b:
            serving[1] = serve(1, endpoint_b)
            await assert_eventually(lambda: grid.live() == actors, message="learner-b never ready again")
            await push("train", model(0), 2)  # a reference: learner-b no longer holds the model
            assert grid.stats["content_misses"] == 1 and bus_b.stats["content_misses"] == 1
            await push("evaluate", model(1), 2)  # a new model: sent in full, no miss
            assert grid.stats["content_misses"] == 1
            await grid.signal_all("done", ok=True)
            await asyncio.wait_for(asyncio.gather(*serving), 10)


def test_a_record_sent_again_unchanged_is_not_serialised_again_a_changed_one_is():
    from flwr.app import Array

    compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
    memo, arrays = compat.PieceMemo(), model()

    def pieces(number: int) -> list[bytes]:
        content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": number})})
        return compat.message_pieces([Message(content, 5, "train")], memo)[0][1]

    first, again = pieces(1), pieces(2)
    assert again[0] is first[0] and again[1] != first[1]  # the model reused, the config new
    arrays["1"] = Array(np.zeros(3, dtype=np.float32))  # the record changed in place
    changed = pieces(3)
    assert changed[0] is not first[0]
    whole = compat.message_from_bytes(b"".join([compat.message_parts([Message(RecordDict(), 5, "train")])[0][0], *changed]))
    assert np.array_equal(whole.content["arrays"]["1"].numpy(), np.zeros(3, dtype=np.float32))


async def test_fedavg_final_parameters_are_bit_identical_with_and_without_references(mqtt_broker):
    from flwr.app import MetricRecord
    from flwr.serverapp.strategy import FedAvg

    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        shift = np.float32(context.node_config["partition-id"] + 0.1 * message.content["config"]["server-round"])
        arrays = [a * np.float32(0.9) + shift for a in message.content["arrays"].to_numpy_ndarrays()]
        metrics = MetricRecord({"num-examples": 10 + int(context.node_config["partition-id"])})
        return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 10})}), reply_to=message)

    async def run(job: str, references: bool) -> tuple[list[bytes], int]:
        actors = ["learner-a", "learner-b"]
        agg_bus = Bus(mqtt_broker.url, client_id=f"agg-{job}")
        grid = MqttGrid(agg_bus, job=job, learners=actors, minimum=2, run_id=1)
        grid.content.enabled = references
        learners = [learner_bus(mqtt_broker.url, root="ember/v1", job=job, actor=a) for a in actors]
        async with agg_bus, learners[0][0], learners[1][0]:
            serving = [
                asyncio.create_task(endpoint.run(lambda i=i: (app, learner_context(1, node_id_for(actors[i]), i, 2))))
                for i, (_, endpoint) in enumerate(learners)
            ]
            await grid.wait_ready(10)

            def drive():
                compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
                return FedAvg().start(grid=grid, initial_arrays=model(), num_rounds=3)

            result = await asyncio.to_thread(drive)
            await grid.signal_all("done", ok=True)
            await asyncio.wait_for(asyncio.gather(*serving), 10)
        return [a.tobytes() for a in result.arrays.to_numpy_ndarrays()], grid.content.referenced_bytes

    with_refs, referenced = await run("bits-on", True)
    without, none = await run("bits-off", False)
    assert referenced > 0 and none == 0
    assert with_refs == without
