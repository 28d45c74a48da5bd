"""Arrays in a JSON record: an ``npz`` of them, zstd-compressed, in base64.

The ingest's cursor record carries the relay seq judge's ring of recent seqs and the sequencer's state this way:
a few kilobytes of int64s that JSON would spell out digit by digit.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import zstandard


def pack(arrays: dict[str, Any]) -> str:
    """``arrays`` (name → array) as text."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return base64.b64encode(zstandard.ZstdCompressor(level=3).compress(buffer.getvalue())).decode()


def unpack(text: str) -> dict[str, np.ndarray]:
    """The arrays :func:`pack` wrote; ``ValueError`` naming what is wrong for any other text."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(base64.b64decode(text))
        with np.load(io.BytesIO(raw)) as z:
            return {name: z[name] for name in z.files}
    except (ValueError, OSError, zstandard.ZstdError) as exc:
        raise ValueError(f"not packed arrays: {exc}") from None
