"""Sealed Jetstream v2 archive segments (``jss0``), written for a local v2's archive and for tests.

Jetstream v2 keeps its full-network archive as sealed segment files: a 256-byte header (magic ``jss0``, an xxh3
metadata checksum, the format version, the block and event counts, the footer's and the block index's offsets),
then blocks, each an 8-byte little-endian length and a zstd frame of a columnar block: the row count, the fixed
width columns (``seq``, ``witnessed_at``, ``indexed_at``, ``kind``, the lengths of ``collection``, ``did``,
``rkey``, ``rev`` and the payload) and the variable columns concatenated in that order; a commit's payload is the
record's DAG-CBOR, a marker's (identity, account, sync) the upstream event's. The reader is the atproto SDK's
(``atproto_jetstream.archive.segment``): this module writes what it reads, and the tests read every segment written
here back through it. The checksum is not xxh3 here (the SDK reads it only to refuse an unsealed segment, 0); it is
a stable 64-bit digest of the blocks, which a local v2 also serves as the segment's ETag.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import libipld
import zstandard

MAGIC = b"jss0"
HEADER_LEN = 256
VERSION = 1
KIND_CREATE, KIND_UPDATE, KIND_DELETE, KIND_IDENTITY, KIND_ACCOUNT, KIND_SYNC = 1, 2, 3, 4, 5, 6
OPERATIONS = {"create": KIND_CREATE, "update": KIND_UPDATE, "delete": KIND_DELETE}
MARKERS = {"identity": KIND_IDENTITY, "account": KIND_ACCOUNT, "sync": KIND_SYNC}
_FIXED = (("seq", "Q"), ("witnessed_at", "q"), ("indexed_at", "q"), ("kind", "B"), ("collection_len", "B"),
          ("did_len", "H"), ("rkey_len", "B"), ("rev_len", "B"), ("event_len", "I"))  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One archived event: what a segment row holds (``payload``: DAG-CBOR bytes, None for a delete)."""

    seq: int
    witnessed_at: int
    kind: int
    did: str
    collection: str = ""
    rkey: str = ""
    rev: str = ""
    payload: bytes | None = None
    indexed_at: int = 0


def row_of(payload: dict) -> Row:
    """The row of a v2 message payload (as :func:`streamer.core.jetstream2_json.to_jetstream2` writes them): the
    record's (or marker's) JSON data model back to the DAG-CBOR it was (links as CID links, ``$bytes`` as bytes),
    so the row's payload is the very block the relay carried and a reader deriving its CID gets the commit's."""
    from streamer.core.events import parse_time_us
    from streamer.core.frames import from_json_model
    from streamer.core.jetstream2_json import PREFIX

    kind = str(payload["$type"]).removeprefix(PREFIX)
    seq, did, time_us = int(payload["seq"]), str(payload["did"]), parse_time_us(payload["time"])
    if kind == "commit":
        op = str(payload["operation"])
        record = payload.get("record")
        data = libipld.encode_dag_cbor(from_json_model(record)) if op != "delete" and record is not None else None
        return Row(seq, time_us, OPERATIONS[op], did, str(payload["collection"]), str(payload["rkey"]),
                   str(payload.get("rev") or ""), data)  # fmt: skip
    return Row(seq, time_us, MARKERS[kind], did, payload=libipld.encode_dag_cbor(from_json_model(payload[kind])))


def block(rows: Sequence[Row]) -> bytes:
    """One block's zstd frame (what ``getBlock`` serves)."""
    variable = [
        [r.collection.encode(), r.did.encode(), r.rkey.encode(), r.rev.encode(), r.payload or b""] for r in rows
    ]
    columns = {
        "seq": [r.seq for r in rows],
        "witnessed_at": [r.witnessed_at for r in rows],
        "indexed_at": [r.indexed_at for r in rows],
        "kind": [r.kind for r in rows],
        "collection_len": [len(v[0]) for v in variable],
        "did_len": [len(v[1]) for v in variable],
        "rkey_len": [len(v[2]) for v in variable],
        "rev_len": [len(v[3]) for v in variable],
        "event_len": [len(v[4]) for v in variable],
    }
    parts = [struct.pack("<I", len(rows))]
    parts += [struct.pack(f"<{len(rows)}{fmt}", *columns[name]) for name, fmt in _FIXED]
    parts += [v[i] for i in range(5) for v in variable]  # each variable column whole, in the column order
    return zstandard.ZstdCompressor().compress(b"".join(parts))


def segment(rows: Sequence[Row], block_rows: int = 256) -> bytes:
    """A sealed segment of ``rows`` (in seq order) in blocks of at most ``block_rows`` (what ``getSegment`` serves).
    The block index and the footer are written after the blocks (offsets of each block, then the counts)."""
    frames = [block(rows[i : i + block_rows]) for i in range(0, len(rows), block_rows)]
    body = b"".join(struct.pack("<Q", len(f)) + f for f in frames)
    offsets, at = [], HEADER_LEN
    for f in frames:
        offsets.append(at)
        at += 8 + len(f)
    index = struct.pack(f"<{len(offsets)}Q", *offsets)
    footer = struct.pack("<QQ", len(rows), len(frames))
    index_at, footer_at = HEADER_LEN + len(body), HEADER_LEN + len(body) + len(index)
    checksum = int.from_bytes(hashlib.sha256(body).digest()[:8], "little") or 1
    header = bytearray(HEADER_LEN)
    header[:4] = MAGIC
    struct.pack_into("<QHII", header, 4, checksum, VERSION, len(frames), len(rows))
    struct.pack_into("<Q", header, 58, footer_at)
    struct.pack_into("<Q", header, 90, index_at)
    return bytes(header) + body + index + footer


def checksum(data: bytes) -> str:
    """A segment's checksum as the 16 hex characters ``planSnapshot`` and ``listSegments`` give."""
    return f"{struct.unpack_from('<Q', data, 4)[0]:016x}"


def block_frames(data: bytes) -> list[bytes]:
    """The block frames of a segment written by :func:`segment` (what ``getBlock`` serves by index)."""
    count = struct.unpack_from("<I", data, 14)[0]
    frames, at = [], HEADER_LEN
    for _ in range(count):
        (length,) = struct.unpack_from("<Q", data, at)
        frames.append(data[at + 8 : at + 8 + length])
        at += 8 + length
    return frames


__all__ = ["Row", "block", "block_frames", "checksum", "row_of", "segment"]
