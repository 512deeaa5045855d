"""Update codecs round-trip within their stated error bounds (property-based, random arrays,
NaN and +-inf included), and a reply's arrays are decoded on the aggregator whatever the codec."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ember.fl import flwr_compat as compat
from ember.fl.codecs import FLOAT16_MAX, decode_array, decode_message, decode_ndarray, encode_array, encode_message
from ember.jobspec import TrainingSpec

floats = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=40),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=32),
)


def same_non_finite(decoded: np.ndarray, x: np.ndarray) -> None:
    assert np.array_equal(np.isnan(decoded), np.isnan(x))
    assert np.array_equal(decoded[np.isinf(x)], x[np.isinf(x)])  # +-inf kept with its sign


@settings(max_examples=200, deadline=None)
@given(floats)
def test_float16_within_half_an_ulp_clipped_to_its_range_non_finite_kept(x):
    decoded = decode_ndarray(encode_array(x, "float16"))
    assert decoded.dtype == x.dtype and decoded.shape == x.shape
    same_non_finite(decoded, x)
    finite = np.isfinite(x)
    clipped = np.clip(x[finite].astype(np.float64), -FLOAT16_MAX, FLOAT16_MAX)
    bound = np.maximum(np.abs(clipped) * 2.0**-11, 2.0**-25)
    assert np.all(np.abs(decoded[finite].astype(np.float64) - clipped) <= bound)
    assert np.all(np.isfinite(decoded[finite]))  # never turned into inf


@settings(max_examples=200, deadline=None)
@given(floats)
def test_int8_within_half_a_step_of_its_scale_non_finite_exact(x):
    decoded = decode_ndarray(encode_array(x, "int8"))
    assert decoded.dtype == x.dtype and decoded.shape == x.shape
    same_non_finite(decoded, x)
    finite = np.isfinite(x)
    values = x[finite].astype(np.float64)
    scale = np.max(np.abs(values), initial=0.0) / 127
    rounding = np.abs(values) * np.finfo(x.dtype).eps * 2  # the array's own dtype rounds the result
    assert np.all(np.abs(decoded[finite].astype(np.float64) - values) <= scale / 2 + rounding + 1e-300)


@given(hnp.arrays(dtype=st.sampled_from([np.int64, np.int8, np.bool_, np.float16]), shape=hnp.array_shapes(max_side=20)))
def test_arrays_a_codec_does_not_apply_to_travel_unchanged(x):
    for codec in ("none", "float16") if x.dtype == np.float16 else ("none", "float16", "int8"):  # int8 does quantise float16
        array = encode_array(x, codec)
        assert array.stype == "numpy.ndarray"
        assert np.array_equal(decode_array(array).numpy(), x, equal_nan=x.dtype == np.float16)


def test_a_reply_is_encoded_by_the_learner_and_decoded_by_the_aggregator_after_protobuf():
    compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
    request = Message(RecordDict({"config": ConfigRecord({"x": 1})}), 7, "train")
    compat.set_message_id(request, "m1")
    weights = [np.random.default_rng(1).normal(size=(64, 32)).astype(np.float32), np.arange(5)]
    for codec in ("none", "float16", "int8"):
        reply = Message(RecordDict({"arrays": ArrayRecord(weights), "metrics": ConfigRecord({"n": 3})}), reply_to=request)
        encode_message(reply, codec)
        wire = compat.message_to_bytes(reply)
        assert len(wire) < weights[0].nbytes * {"none": 1.1, "float16": 0.6, "int8": 0.35}[codec]
        received = compat.message_from_bytes(wire)
        decode_message(received)
        back = received.content["arrays"].to_numpy_ndarrays()
        assert np.array_equal(back[1], weights[1])
        if codec == "none":
            assert back[0].tobytes() == weights[0].tobytes()
        else:
            assert back[0].dtype == np.float32 and np.allclose(back[0], weights[0], atol=np.abs(weights[0]).max() / 200)


def test_the_job_spec_declares_the_codec_lossless_by_default():
    assert TrainingSpec().update_codec == "none"
    assert TrainingSpec(update_codec="int8").update_codec == "int8"
    with pytest.raises(ValueError):
        TrainingSpec(update_codec="zstd")


async def test_a_learner_with_a_codec_sends_smaller_updates_the_aggregator_decodes(mqtt_broker):
    import asyncio

    from flwr.clientapp import ClientApp

    from ember.bus import Bus
    from ember.fl.clientapp import learner_context
    from ember.fl.endpoint import learner_bus
    from ember.fl.grid import MqttGrid, node_id_for

    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        arrays = [a * np.float32(2) for a in message.content["arrays"].to_numpy_ndarrays()]
        return Message(RecordDict({"arrays": ArrayRecord(arrays)}), reply_to=message)

    weights = [np.random.default_rng(2).normal(size=(256, 256)).astype(np.float32)]
    agg_bus = Bus(mqtt_broker.url, client_id="agg-codec")
    grid = MqttGrid(agg_bus, job="codec-job", learners=["learner-a"], minimum=1, run_id=1)
    bus, endpoint = learner_bus(mqtt_broker.url, root="ember/v1", job="codec-job", actor="learner-a")
    endpoint.codec = "int8"
    async with agg_bus, bus:
        serving = asyncio.create_task(endpoint.run(lambda: (app, learner_context(1, node_id_for("learner-a"), 0, 1))))
        assert await grid.wait_ready(10) == ["learner-a"]
        compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
        message = Message(RecordDict({"arrays": ArrayRecord(weights)}), node_id_for("learner-a"), "train")
        [reply] = await asyncio.to_thread(grid.send_and_receive, [message], timeout=30)
        [got] = reply.content["arrays"].to_numpy_ndarrays()
        expected = weights[0] * 2
        assert got.dtype == np.float32 and np.all(np.abs(got - expected) <= np.abs(expected).max() / 254 * 1.001)
        assert grid.stats["frames_sent"] == 1  # the model fits one chunk; the int8 update too
        await grid.signal_all("done", ok=True)
        assert await asyncio.wait_for(serving, 10) is True
