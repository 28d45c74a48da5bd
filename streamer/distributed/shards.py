"""Shards: one partition's state at one due time, as ``skyattr.shards`` records.

A worker publishes, at each ``tick`` of each partition it owns, the partition's window (:meth:`PartitionState.
arrays`) with what the attributor needs to put the partitions together: the due time, the partition and how many
there are, the events accepted so far, the window's head and its newest bucket. The body is an ``npz`` of the
arrays, zstd-compressed, cut in chunks of at most :data:`CHUNK_BYTES` (under Kafka's default 1 MB message limit);
the chunks travel under the key ``partition``, so they stay in order, and each carries in its headers which shard
it belongs to and which chunk of how many it is.

A shard is **full** (the whole window: every DID with its first position and activity, every edge) or a **delta**
(``base``: the due time of the shard it is relative to, from the same worker): the DID rows and edges that are new
or changed since, those gone, and the DIDs not named before. Rows and edges name DIDs by the worker's interned ids
(a :class:`Window`), so an edge costs two integers and a weight, and a tick ships what the events since the last
one changed, not the window. The attributor keeps each partition's window as its shards built it, across runs
(:class:`~streamer.distributed.replica.PartitionReplica`), and merges the copies (:func:`~streamer.distributed.
merge.merge`); a worker ships a full shard when it has no earlier one (first tick, restart, rebalance), after a
prune (ids are interned afresh) and every :data:`FULL_EVERY` ticks, which bounds what a restarted attributor reads
back to rebuild its copies.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from streamer.core.state import decode_strings, encode_strings

SCHEMA = "skyattr.shard/2"
CHUNK_BYTES = 900_000
FULL_EVERY = 12  # a partition's shards: one full, then at most this many minus one deltas
ID_BITS = 32  # an edge's key: attender id << ID_BITS | source id (a partition interns fewer than 2**31 DIDs)
_FULL = ("ids", "first", "x", "att", "src", "w")
_DELTA = ("named", "up_ids", "up_first", "up_x", "gone_ids", "up_edges", "up_w", "gone_edges")


@dataclass(frozen=True)
class Window:
    """A partition's window over its interned DIDs, in shard order: ``ids`` of the DIDs present, ordered by their
    first position ``first`` (unique), their activity ``x``; the edges' attender and source ids, ordered by the
    ranks of the two in ``ids``, and weights ``w``."""

    ids: np.ndarray
    first: np.ndarray
    x: np.ndarray
    att_ids: np.ndarray
    src_ids: np.ndarray
    w: np.ndarray

    def arrays(self, names: Sequence[str]) -> dict[str, Any]:
        """The shard arrays: DIDs by name, edges by rank (indices into ``dids``)."""
        rank = rank_of(self.ids)
        return {
            "dids": [names[i] for i in self.ids.tolist()],
            "first": self.first,
            "x": self.x,
            "att": rank[self.att_ids],
            "src": rank[self.src_ids],
            "w": self.w,
        }

    def full(self, names: Sequence[str]) -> dict[str, Any]:
        """A full shard's arrays: :meth:`arrays` and each row's id (what later deltas name it by)."""
        return {**self.arrays(names), "ids": self.ids}

    def edge_keys(self) -> np.ndarray:
        return (self.att_ids << ID_BITS) | self.src_ids

    def delta(self, base: Window, names: Sequence[str], known: np.ndarray) -> dict[str, Any]:
        """A delta shard's arrays against ``base`` (a window over the same ids): rows new or changed (``up_``),
        rows gone (``gone_ids``), edges likewise by key, and the DIDs of ids ``known`` does not mark (never named
        to the attributor since the last full shard)."""
        up, gone = _changes(base.ids, (base.first, base.x), self.ids, (self.first, self.x))
        eup, egone = _changes(base.edge_keys(), (base.w,), self.edge_keys(), (self.w,))
        fresh = self.ids[up]
        fresh = fresh[~known[fresh]]
        return {
            "named": [names[i] for i in fresh.tolist()],
            "named_ids": fresh,
            "up_ids": self.ids[up],
            "up_first": self.first[up],
            "up_x": self.x[up],
            "gone_ids": base.ids[gone],
            "up_edges": self.edge_keys()[eup],
            "up_w": self.w[eup],
            "gone_edges": base.edge_keys()[egone],
        }


def rank_of(ids: np.ndarray) -> np.ndarray:
    """id -> its row in ``ids`` (-1 for an id not there)."""
    rank = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, np.int64)
    rank[ids] = np.arange(len(ids))
    return rank


def _changes(
    old_keys: np.ndarray, old_cols: tuple[np.ndarray, ...], keys: np.ndarray, cols: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``keys`` new or with any column changed, bit for bit; rows of ``old_keys`` gone). Keys are unique."""
    order = np.argsort(old_keys, kind="stable")
    sorted_old = old_keys[order]
    pos = np.searchsorted(sorted_old, keys)
    inside = pos < len(sorted_old)
    match = np.zeros(len(keys), bool)
    match[inside] = sorted_old[pos[inside]] == keys[inside]
    at = order[np.minimum(pos, max(len(order) - 1, 0))] if len(order) else pos
    same = match.copy()
    for old, new in zip(old_cols, cols, strict=True):
        if len(order):
            same &= _bits(old[at]) == _bits(new)
    gone = ~np.isin(old_keys, keys, assume_unique=True)
    return np.flatnonzero(~same), np.flatnonzero(gone)


def _bits(a: np.ndarray) -> np.ndarray:
    """The array's values as integers of the same width: floats compared bit for bit (0.0 is not -0.0)."""
    return a.view(np.int64) if a.dtype == np.float64 else a


@dataclass(frozen=True)
class ShardId:
    """Which shard: the run's due time (µs) and the partition."""

    as_of_us: int
    partition: int


@dataclass
class Shard:
    """One partition's window at one due time (see the module doc)."""

    as_of_us: int
    final: bool
    partition: int
    partitions: int
    events: int
    head: int
    newest_bucket: int  # -1: the partition holds no bucket
    arrays: dict[str, Any]
    config: dict[str, Any]  # the window, weights and interval the partition was filled with (its config record)
    base: int = -1  # a delta: the due time of the shard it is relative to; -1: a full shard

    @property
    def id(self) -> ShardId:
        return ShardId(self.as_of_us, self.partition)

    @property
    def full(self) -> bool:
        return self.base < 0

    def to_chunks(self, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
        """``(value, headers)`` of each chunk."""
        a = self.arrays
        names = "dids" if self.full else "named"
        offsets, blob = encode_strings(a[names])
        buffer = io.BytesIO()
        columns = _FULL if self.full else _DELTA[1:]
        extra = {} if self.full else {"named_ids": a["named_ids"]}
        np.savez(buffer, names_offsets=offsets, names_blob=blob, **extra, **{k: a[k] for k in columns})
        body = zstandard.ZstdCompressor(level=3).compress(buffer.getvalue())
        pieces = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)] or [b""]
        meta = {
            "as_of_us": self.as_of_us,
            "final": self.final,
            "partition": self.partition,
            "partitions": self.partitions,
            "events": self.events,
            "head": self.head,
            "newest_bucket": self.newest_bucket,
            "config": self.config,
            "base": self.base,
            "chunks": len(pieces),
        }
        return [
            (piece, [("skyattr-schema", SCHEMA.encode()), ("skyattr-shard", json.dumps({**meta, "chunk": i}).encode())])
            for i, piece in enumerate(pieces)
        ]


def chunk_meta(headers: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """The shard metadata of one chunk record; ``ValueError`` naming what is wrong when it is not one."""
    found = dict(headers.items() if hasattr(headers, "items") else headers or ())
    if found.get("skyattr-schema") != SCHEMA.encode():
        raise ValueError(f"not a {SCHEMA} record (schema header {found.get('skyattr-schema')!r})")
    try:
        meta = json.loads(found["skyattr-shard"])
        for k in ("as_of_us", "partition", "partitions", "events", "head", "newest_bucket", "base", "chunks", "chunk"):
            meta[k] = int(meta[k])
        meta["final"] = bool(meta["final"])
        if not isinstance(meta["config"], dict):
            raise TypeError("config is not an object")
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"bad {SCHEMA} header: {exc}") from None
    if not 0 <= meta["chunk"] < meta["chunks"] or not 0 <= meta["partition"] < meta["partitions"]:
        raise ValueError(f"bad {SCHEMA} header: chunk or partition out of range in {meta}")
    return meta


def from_chunks(meta: dict[str, Any], pieces: Sequence[bytes]) -> Shard:
    """The shard of ``meta`` (any chunk's) from its pieces in chunk order."""
    full = meta["base"] < 0
    try:
        raw = zstandard.ZstdDecompressor().decompress(b"".join(pieces))
        with np.load(io.BytesIO(raw)) as z:
            columns = _FULL if full else ("named_ids", *_DELTA[1:])
            arrays: dict[str, Any] = {k: z[k] for k in columns}
            arrays["dids" if full else "named"] = decode_strings(z["names_offsets"], z["names_blob"])
    except (ValueError, KeyError, OSError, zstandard.ZstdError) as exc:
        raise ValueError(f"shard of partition {meta['partition']} at {meta['as_of_us']} is damaged: {exc}") from None
    keys = ("as_of_us", "final", "partition", "partitions", "events", "head", "newest_bucket", "config", "base")
    return Shard(**{k: meta[k] for k in keys}, arrays=arrays)
