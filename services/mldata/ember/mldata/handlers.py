"""Bus handlers of mldata: thin, they hand the payload to the transport-free `Ingestor`."""

from __future__ import annotations

import asyncio

from ember.bus import Handler, Message
from ember.mldata.ingest import Batch, Ingestor


def data_handler(ingestor: Ingestor, flushes: asyncio.Queue[Batch]) -> Handler:
    """`data/{tag}` (subscribed raw: the ingestor decodes and counts bad envelopes itself)."""

    async def on_data(message: Message) -> None:
        batch = ingestor.accept(message.params.get("tag", ""), message.payload)
        if batch is not None:
            await flushes.put(batch)  # bounded: a slow disk slows consumption, not memory

    return on_data
