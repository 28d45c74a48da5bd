"""The one decoding step every source goes through: a raw relay frame or a Jetstream event to a ``Decoded``.

The decoders (:func:`streamer.core.frames.decode_frame`, :func:`streamer.core.jetstream_json.from_jetstream`,
:func:`streamer.core.jetstream2_json.from_jetstream2`)
promise not to raise on bad input; should one item find a case they miss, it becomes
``Decoded(error="decoder_exception")`` here, at the item boundary, and the stream goes on. Only the first such item
is logged; the count is in the stats of the source that read it.
"""

from __future__ import annotations

import logging
from typing import Any

from streamer.core.frames import MAX_FRAME_BYTES, Decoded, decode_frame
from streamer.core.jetstream2_json import from_jetstream2
from streamer.core.jetstream_json import from_jetstream
from streamer.core.logonce import OncePerKind

log = logging.getLogger("skyattr.decode")
_warn = OncePerKind(log)


def decode_item(
    item: bytes | dict[str, Any], *, records: bool = False, max_bytes: int = MAX_FRAME_BYTES, jetstream: int = 1
) -> Decoded:
    """Decode a relay frame (``bytes``) or a parsed Jetstream event (a ``dict``: a v1 event, or with
    ``jetstream=2`` a v2 message payload); never raises on bad input."""
    try:
        if isinstance(item, bytes | bytearray | memoryview):
            return decode_frame(bytes(item), records=records, max_bytes=max_bytes)
        return from_jetstream2(item) if jetstream == 2 else from_jetstream(item)
    except Exception as exc:
        name = type(exc).__name__
        _warn.log(
            name, "decoder raised %s on an item; counted as decoder_exception and skipped", name, level=logging.ERROR
        )
        return Decoded(error="decoder_exception", detail=name)
