"""Frames and chunking of Flower messages, alone and through a real Mosquitto."""

import asyncio
import contextlib
import random

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from ember import topics
from ember.bus import Bus
from ember.fl import flwr_compat as compat
from ember.fl.clientapp import learner_context
from ember.fl.grid import MqttGrid, node_id_for
from ember.fl.endpoint import learner_bus
from ember.fl.serde import CHUNK_BYTES, Frame, Reassembler, chunk_message, decode_frame, pack_cast, signal, unpack_cast
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(60)


def big_message() -> Message:
    compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
    array = np.random.default_rng(0).normal(size=5 * 1024 * 1024 // 8)  # 5 MB of float64
    content = RecordDict({"arrays": ArrayRecord([array]), "config": ConfigRecord({"server-round": 1})})
    msg = Message(content, node_id_for("learner-a"), "train")
    compat.set_message_id(msg, "big-1")
    return msg


def test_chunked_5mb_message_round_trip_in_any_order():
    msg = big_message()
    data = compat.message_to_bytes(msg)
    frames = list(chunk_message(data, reply_to="x"))
    assert len(frames) == -(-len(data) // CHUNK_BYTES) > 9
    random.Random(1).shuffle(frames)
    joiner = Reassembler()
    results = [joiner.feed(decode_frame(f)) for f in frames]
    whole = [r for r in results if r is not None]
    assert len(whole) == 1 and whole[0][1] == "x"
    back = compat.message_from_bytes(whole[0][0])
    assert np.array_equal(back.content["arrays"].to_numpy_ndarrays()[0], msg.content["arrays"].to_numpy_ndarrays()[0])
    assert back.metadata == msg.metadata


def test_malformed_frames_are_refused_with_a_reason():
    for junk in (b"", b"EMB", b"XXXX\x00\x02{}", b"EMB1\x00\x09not json!", b'EMB1\x00\x0b{"k":"zzz"}', b"EMB1\xff\xff{}"):
        with pytest.raises(ValueError):
            decode_frame(junk)
    joiner = Reassembler()
    with pytest.raises(ValueError):
        joiner.feed(Frame("msg", {"t": "a", "i": 3, "n": 2, "size": 1}))
    with pytest.raises(ValueError):
        joiner.feed(Frame("msg", {"t": "a", "i": 0, "n": 1, "size": 5}, b"abc"))
    assert decode_frame(signal("done", ok=False)) == Frame("done", {"ok": False})


def test_reassembler_is_bounded():
    joiner = Reassembler(max_partial=2)
    for transfer in "abc":
        assert joiner.feed(Frame("msg", {"t": transfer, "i": 0, "n": 2, "size": 2}, b"x")) is None
    assert joiner.dropped == 1


def test_cast_gives_each_named_learner_its_own_message_and_nothing_to_others():
    cast = pack_cast({"learner-a": b"head-a", "learner-bb": b"h-b"}, b"shared content")
    assert unpack_cast(cast, "learner-a") == b"head-a" + b"shared content"
    assert unpack_cast(cast, "learner-bb") == b"h-b" + b"shared content"
    assert unpack_cast(cast, "learner-c") is None
    for junk in (b"", b"\x00\x00", cast[:10], b"\x00\x00\x00\x02\x00\x01a\x00\x00\xff\xffxx"):
        with pytest.raises(ValueError):
            unpack_cast(junk, "learner-a")


@contextlib.asynccontextmanager
async def one_learner(url: str, app: ClientApp, job: str, actor: str = "learner-a"):
    """An aggregator's grid and one learner serving `app` over a real broker, ready; yields
    (grid, the learner's bus, the learner's serving task)."""
    agg_bus = Bus(url, client_id=f"agg-{job}")
    grid = MqttGrid(agg_bus, job=job, learners=[actor], minimum=1, run_id=1)
    bus, endpoint = learner_bus(url, root="ember/v1", job=job, actor=actor)
    async with agg_bus, bus:
        serving = asyncio.create_task(endpoint.run(lambda: (app, learner_context(1, node_id_for(actor), 0, 1))))
        assert await grid.wait_ready(10) == [actor]
        yield grid, bus, serving


async def test_5mb_message_over_mqtt_grid_and_back(mqtt_broker):
    """A 5 MB ArrayRecord goes down in chunks, an echo ClientApp sends it back up in chunks;
    junk on the up topic is counted and dropped while the grid keeps serving."""
    app = ClientApp()

    @app.train()
    def echo(message: Message, context) -> Message:
        return Message(message.content, reply_to=message)

    async with one_learner(mqtt_broker.url, app, "serde-job") as (grid, bus, serving):
        up = topics.FL_UP.format("ember/v1", job="serde-job", actor="learner-a")
        for junk in (b"garbage", b'EMB1\x00\x0b{"k":"zzz"}'):
            await bus.publish(up, junk)
        await assert_eventually(lambda: grid.bus.stats["dropped_invalid"] == 2)
        msg = big_message()
        replies = list(await asyncio.to_thread(grid.send_and_receive, [msg], timeout=30))
        assert len(replies) == 1 and not replies[0].has_error()
        sent = msg.content["arrays"].to_numpy_ndarrays()[0]
        assert np.array_equal(replies[0].content["arrays"].to_numpy_ndarrays()[0], sent)
        assert grid.stats["frames_sent"] >= 10
        await grid.signal_all("done", ok=True)
        assert await asyncio.wait_for(serving, 10) is True


async def test_node_ids_do_not_shrink_between_pushes(mqtt_broker):
    """Flower counts the nodes, then waits until that many are connected: a learner that goes in
    between must stay listed until the next push (it gets the error reply), or the wait is endless."""
    app = ClientApp()

    @app.train()
    def echo(message: Message, context) -> Message:
        return Message(message.content, reply_to=message)

    job, actors = "membership-job", ["learner-a", "learner-b"]
    agg_bus = Bus(mqtt_broker.url, client_id="agg-membership")
    grid = MqttGrid(agg_bus, job=job, learners=actors, minimum=1, run_id=1)
    learners = [learner_bus(mqtt_broker.url, root="ember/v1", job=job, actor=a) for a in actors]
    async with agg_bus, learners[0][0], learners[1][0]:
        serving = [
            asyncio.create_task(endpoint.run(lambda i=i: (app, learner_context(1, node_id_for(actors[i]), i, 2))))
            for i, (_, endpoint) in enumerate(learners)
        ]
        assert sorted(await grid.wait_ready(10)) == actors
        both = sorted(node_id_for(a) for a in actors)
        assert list(await asyncio.to_thread(grid.get_node_ids)) == both
        assert list(grid.get_node_ids()) == both  # read where it is called: no hop to the loop (Flower asks before every push)
        learners[1][1].stop("leaving")  # learner-b says it is gone
        await assert_eventually(lambda: grid.live() == ["learner-a"], message="learner-b never seen gone")
        assert list(await asyncio.to_thread(grid.get_node_ids)) == both  # still listed until a push
        compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
        messages = [Message(RecordDict({"config": ConfigRecord({"x": 1})}), node_id_for(a), "train") for a in actors]
        replies = {r.metadata.src_node_id: r for r in await asyncio.to_thread(grid.send_and_receive, messages, timeout=10)}
        assert not replies[node_id_for("learner-a")].has_error()
        assert replies[node_id_for("learner-b")].error.code == compat.NODE_UNAVAILABLE
        assert list(await asyncio.to_thread(grid.get_node_ids)) == [node_id_for("learner-a")]
        await grid.signal_all("done", ok=True)
        await asyncio.wait_for(asyncio.gather(*serving), 10)


async def test_learner_answers_apps_on_the_loop_or_in_a_thread_as_they_need(mqtt_broker):
    """Fast message types are answered on the learner's loop (no thread hand-off); slow ones, and
    an app that needs a thread of its own (here: it calls `asyncio.run`), in a worker thread;
    every message gets a good reply either way."""
    import threading
    import time

    from ember.fl.endpoint import INLINE_MAX_S

    app, seen = ClientApp(), {"train": [], "evaluate": [], "query": []}

    @app.train()
    def fast(message: Message, context) -> Message:
        seen["train"].append(threading.current_thread() is threading.main_thread())
        return Message(message.content, reply_to=message)

    @app.evaluate()
    def slow(message: Message, context) -> Message:
        seen["evaluate"].append(threading.current_thread() is threading.main_thread())
        time.sleep(INLINE_MAX_S * 1.5)  # stands for the app's own work, longer than the loop may be blocked (not a wait)
        return Message(message.content, reply_to=message)

    async def seven() -> int:
        return 7

    @app.query()
    def own_loop(message: Message, context) -> Message:
        seen["query"].append(threading.current_thread() is threading.main_thread())
        coro = seven()
        try:
            x = asyncio.run(coro)  # RuntimeError on a thread that runs an event loop
        except RuntimeError:
            coro.close()
            raise
        return Message(RecordDict({"config": ConfigRecord({"x": x})}), reply_to=message)

    async with one_learner(mqtt_broker.url, app, "inline-job") as (grid, _, serving):
        compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
        for _ in range(3):
            for kind in ("train", "evaluate", "query"):
                message = Message(RecordDict({"config": ConfigRecord({"x": 1})}), node_id_for("learner-a"), kind)
                replies = list(await asyncio.to_thread(grid.send_and_receive, [message], timeout=10))
                assert len(replies) == 1 and not replies[0].has_error(), (kind, replies[0].error if replies else None)
        assert [r.content["config"]["x"] for r in replies] == [7]
        assert seen["train"] == [False, True, True]  # the first in the thread, then on the loop
        assert seen["evaluate"] == [False, False, False]  # too slow for the loop
        assert seen["query"] == [False, True, False, False]  # failed on the loop, answered from the thread, stays there
        await grid.signal_all("done", ok=True)
        assert await asyncio.wait_for(serving, 10) is True


async def test_a_model_sent_to_every_learner_leaves_the_aggregator_once(mqtt_broker):
    """A content shared by the messages to every live learner (the global model) is published once
    on the job's cast topic, chunked when large, and each learner answers its own message; a push
    to a sample of the learners goes to each of them alone; a learner a cast does not name drops it."""
    app = ClientApp()

    @app.train()
    def echo(message: Message, context) -> Message:
        return Message(message.content, reply_to=message)

    job, actors = "cast-job", ["learner-a", "learner-b", "learner-c"]
    agg_bus = Bus(mqtt_broker.url, client_id="agg-cast")
    grid = MqttGrid(agg_bus, job=job, learners=actors, minimum=1, run_id=1)
    learners = [learner_bus(mqtt_broker.url, root="ember/v1", job=job, actor=a) for a in actors]
    async with agg_bus, learners[0][0], learners[1][0], learners[2][0]:
        serving = [
            asyncio.create_task(endpoint.run(lambda i=i: (app, learner_context(1, node_id_for(actors[i]), i, 3))))
            for i, (_, endpoint) in enumerate(learners)
        ]
        assert sorted(await grid.wait_ready(10)) == actors
        compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
        model = big_message().content  # 5 MB: the cast is chunked
        messages = [Message(model, node_id_for(a), "train") for a in actors]
        replies = list(await asyncio.to_thread(grid.send_and_receive, messages, timeout=30))
        assert grid.stats["casts"] == 1
        chunks = -(-len(compat.message_to_bytes(messages[0])) // CHUNK_BYTES)
        assert chunks > 5 and grid.stats["frames_sent"] < 2 * chunks  # one copy of the model, not three
        by_request = {r.metadata.reply_to_message_id: r for r in replies}
        assert sorted(r.metadata.src_node_id for r in replies) == sorted(node_id_for(a) for a in actors)
        for message in messages:
            reply = by_request[message.metadata.message_id]
            assert not reply.has_error() and reply.metadata.src_node_id == message.metadata.dst_node_id
            assert np.array_equal(reply.content["arrays"].to_numpy_ndarrays()[0], model["arrays"].to_numpy_ndarrays()[0])

        sample = [Message(model, node_id_for(a), "train") for a in actors[:2]]
        replies = list(await asyncio.to_thread(grid.send_and_receive, sample, timeout=30))
        assert len(replies) == 2 and not any(r.has_error() for r in replies)
        assert grid.stats["casts"] == 1  # a sample: each learner got its own
        assert [endpoint.handled for _, endpoint in learners] == [2, 2, 1]

        stranger = pack_cast({"learner-x": b""}, b"")
        await agg_bus.publish(topics.FL_CAST.format("ember/v1", job=job), next(chunk_message(stranger)))
        await assert_eventually(lambda: all(bus.stats["casts_not_addressed"] == 1 for bus, _ in learners))
        assert [endpoint.handled for _, endpoint in learners] == [2, 2, 1]
        await grid.signal_all("done", ok=True)
        await asyncio.wait_for(asyncio.gather(*serving), 10)


def test_chunks_from_several_buffers_equal_chunks_of_their_join():
    buffers = [b"head", bytes(range(256)) * 9, b"", b"x" * 1000, np.arange(700, dtype=np.float32).tobytes()]
    joined = b"".join(buffers)
    frames = [decode_frame(f) for f in chunk_message(buffers, chunk_bytes=1000, transfer="t1")]
    assert [f.body for f in frames] == [joined[i : i + 1000] for i in range(0, len(joined), 1000)]
    joiner = Reassembler()
    whole = [w for f in reversed(frames) if (w := joiner.feed_whole(f)) is not None]
    assert len(whole) == 1 and bytes(whole[0].data) == joined and whole[0].header["t"] == "t1"
    with pytest.raises(ValueError):  # a chunk that cannot fit the announced size
        Reassembler().feed(Frame("msg", {"t": "b", "i": 1, "n": 3, "size": 10}, b"x" * 6))
