"""Update codecs: opt-in lossy compression of learner -> aggregator updates (`training.update_codec`).

A learner's endpoint encodes the floating-point arrays of every reply's `ArrayRecord`s before
sending (`encode_message`); the aggregator's grid decodes every reply it receives
(`decode_message`) before the strategy sees it. An encoded array is a Flower `Array` whose
`stype` names the codec (`ember.float16`, `ember.int8`) and whose `dtype`/`shape` are the
original's, so a reply is self-describing: the aggregator needs no setting. Arrays that are not
floating point (or already float16 under `float16`) travel unchanged.

- `none` (default): nothing is encoded; updates arrive bit-exact.
- `float16`: each value rounded to the nearest float16. Error: for |x| <= 65504,
  |decoded - x| <= max(|x| * 2**-11, 2**-25) (float16's half-ulp; the second term for
  subnormals). Finite values beyond float16's range are clipped to +-65504 (never turned into
  inf). NaN stays NaN, +-inf stays +-inf.
- `int8`: symmetric 8-bit quantisation with one scale per array, `scale = max|finite x| / 127`;
  each value is `round(x / scale)` in [-127, 127]. Error: |decoded - x| <= scale / 2 (plus the
  rounding of the array's own dtype). NaN and +-inf are not quantised: their positions and
  values are carried exactly beside the codes, and an array of only non-finite values or zeros
  has scale 0.

`zstd` (lossless) is not offered: it needs the `zstandard` package, which Ember does not depend on.
"""

from __future__ import annotations

import struct
from typing import Literal

import numpy as np
from flwr.app import Array, ArrayRecord, Message

UpdateCodec = Literal["none", "float16", "int8"]
CODECS: tuple[str, ...] = ("none", "float16", "int8")
FLOAT16_MAX = float(np.finfo(np.float16).max)
_INT8_HEAD = struct.Struct(">dQ")
"""int8 payload: scale (float64), count of non-finite values; then the int8 codes, the
non-finite positions (uint64) and their values (the array's dtype)."""


def _is_float(dtype: np.dtype) -> bool:
    return bool(np.issubdtype(dtype, np.floating))


def encode_array(array: np.ndarray, codec: str) -> Array:
    """`array` as a Flower `Array`, encoded with `codec` when it applies."""
    array = np.asarray(array)
    if codec == "none" or not _is_float(array.dtype) or (codec == "float16" and array.dtype == np.float16):
        return Array(array)
    flat = np.ascontiguousarray(array).reshape(-1)
    if codec == "float16":
        data = np.clip(flat, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)  # NaN stays NaN
        infinite = np.isinf(flat)  # np.clip made them +-65504: restore them
        data[infinite] = flat[infinite].astype(np.float16)
        payload = data.tobytes()
    elif codec == "int8":
        finite = np.isfinite(flat)
        bad = np.flatnonzero(~finite).astype(np.uint64)
        peak = float(np.max(np.abs(flat[finite]), initial=0.0))
        scale = peak / 127.0 if peak > 0 and np.isfinite(peak / 127.0) else 0.0
        codes = np.zeros(flat.size, dtype=np.int8)
        if scale > 0:
            codes[finite] = np.clip(np.rint(flat[finite].astype(np.float64) / scale), -127, 127).astype(np.int8)
        payload = b"".join((_INT8_HEAD.pack(scale, bad.size), codes.tobytes(), bad.tobytes(), flat[~finite].tobytes()))
    else:
        raise ValueError(f"unknown update codec {codec!r} (known: {', '.join(CODECS)})")
    return Array(dtype=str(array.dtype), shape=tuple(array.shape), stype=f"ember.{codec}", data=payload)


def decode_array(array: Array) -> Array:
    """A Flower `Array` with the codec undone (an unencoded one is returned as is)."""
    if not array.stype.startswith("ember."):
        return array
    return Array(decode_ndarray(array))


def decode_ndarray(array: Array) -> np.ndarray:
    codec, dtype, shape = array.stype.removeprefix("ember."), np.dtype(array.dtype), tuple(array.shape)
    count = int(np.prod(shape, dtype=np.int64))
    if codec == "float16":
        return np.frombuffer(array.data, dtype=np.float16, count=count).astype(dtype).reshape(shape)
    if codec == "int8":
        scale, bad = _INT8_HEAD.unpack_from(array.data)
        offset = _INT8_HEAD.size
        codes = np.frombuffer(array.data, dtype=np.int8, count=count, offset=offset)
        offset += count
        where = np.frombuffer(array.data, dtype=np.uint64, count=bad, offset=offset)
        values = np.frombuffer(array.data, dtype=dtype, count=bad, offset=offset + 8 * bad)
        out = (codes.astype(np.float64) * scale).astype(dtype)
        out[where.astype(np.intp)] = values
        return out.reshape(shape)
    raise ValueError(f"unknown update codec in stype {array.stype!r}")


def encode_message(message: Message, codec: str) -> None:
    """Encode (in place) the floating-point arrays of a reply's `ArrayRecord`s."""
    if codec == "none" or message.has_error() or not message.has_content():
        return
    for name, record in list(message.content.array_records.items()):
        message.content[name] = ArrayRecord(
            {key: encode_array(value.numpy(), codec) if value.stype == "numpy.ndarray" else value for key, value in record.items()}
        )


def decode_message(message: Message) -> None:
    """Undo (in place) any codec on a reply's arrays."""
    if message.has_error() or not message.has_content():
        return
    for name, record in list(message.content.array_records.items()):
        if any(value.stype.startswith("ember.") for value in record.values()):
            message.content[name] = ArrayRecord({key: decode_array(value) for key, value in record.items()})
