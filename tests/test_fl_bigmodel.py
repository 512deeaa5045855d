"""A model many times larger than the broker's per-message limit makes rounds: chunked casts
down, chunked updates up, exact arrays, through a real Mosquitto capped at `MAX_PACKET` bytes."""

import asyncio
import contextlib
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from ember.broker import mosquitto_binary, mosquitto_config
from ember.bus import Bus
from ember.fl import flwr_compat as compat
from ember.fl.clientapp import learner_context
from ember.fl.endpoint import learner_bus
from ember.fl.grid import MqttGrid, node_id_for
from ember.fl.serde import CHUNK_BYTES
from ember.processes import free_port, wait_for_port

pytestmark = pytest.mark.timeout(120)
MAX_PACKET = 2 * CHUNK_BYTES
"""The broker refuses (and disconnects) any MQTT packet larger than this."""


@contextlib.contextmanager
def capped_broker():
    with tempfile.TemporaryDirectory(prefix="ember-mqtt-") as tmp:
        port = free_port()
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(mosquitto_config(port, Path(tmp)) + f"\nmax_packet_size {MAX_PACKET}\n")
        with open(Path(tmp) / "mosquitto.log", "ab") as log:
            process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        try:
            wait_for_port("127.0.0.1", port, timeout=10, process=process)
            yield f"mqtt://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(10)


async def test_a_24mb_model_makes_rounds_through_a_broker_capped_at_1mb():
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        arrays = [a + np.float32(1) for a in message.content["arrays"].to_numpy_ndarrays()]
        return Message(RecordDict({"arrays": ArrayRecord(arrays)}), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context) -> Message:
        total = float(sum(a.sum(dtype=np.float64) for a in message.content["arrays"].to_numpy_ndarrays()))
        return Message(RecordDict({"metrics": ConfigRecord({"total": total})}), reply_to=message)

    weights = [np.random.default_rng(0).normal(size=6 * 1024 * 1024).astype(np.float32), np.arange(10, dtype=np.float32)]
    size = sum(w.nbytes for w in weights)
    assert size > 20 * MAX_PACKET
    job, actors = "big-job", ["learner-a", "learner-b", "learner-c"]
    with capped_broker() as url:
        agg_bus = Bus(url, client_id="agg-big")
        grid = MqttGrid(agg_bus, job=job, learners=actors, minimum=3, run_id=1)
        learners = [learner_bus(url, root="ember/v1", job=job, actor=a) for a in actors]
        async with agg_bus, learners[0][0], learners[1][0], learners[2][0]:
            serving = [
                asyncio.create_task(endpoint.run(lambda i=i: (app, learner_context(1, node_id_for(actors[i]), i, 3))))
                for i, (_, endpoint) in enumerate(learners)
            ]
            assert sorted(await grid.wait_ready(10)) == actors
            compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
            for number in (1, 2):
                content = RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": number})})
                messages = [Message(content, node_id_for(a), "train") for a in actors]
                replies = list(await asyncio.to_thread(grid.send_and_receive, messages, timeout=60))
                assert len(replies) == 3 and not any(r.has_error() for r in replies)
                updates = [r.content["arrays"].to_numpy_ndarrays() for r in replies]
                for update in updates:
                    assert all(np.array_equal(u, w + np.float32(1)) for u, w in zip(update, weights, strict=True))
                weights = updates[0]
                content = RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": number})})
                messages = [Message(content, node_id_for(a), "evaluate") for a in actors]
                replies = list(await asyncio.to_thread(grid.send_and_receive, messages, timeout=60))
                expected = float(sum(w.sum(dtype=np.float64) for w in weights))
                assert [r.content["metrics"]["total"] for r in replies] == [expected] * 3
            assert grid.content.referenced_bytes >= size  # round 2's train push referenced the model evaluated in round 1
            assert all(bus.stats["content_misses"] == 0 for bus, _ in learners)
            await grid.signal_all("done", ok=True)
            await asyncio.wait_for(asyncio.gather(*serving), 10)
