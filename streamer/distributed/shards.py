"""Shards: one partition's state at one due time, as ``skyattr.shards`` records, and their merge into a snapshot.

A worker publishes, at each ``tick`` of each partition it owns, the partition's window (:meth:`PartitionState.
arrays`) with what the attributor needs to put the partitions together: the due time, the partition and how many
there are, the events accepted so far, the window's head and its newest bucket. The body is an ``npz`` of the
arrays, zstd-compressed, cut in chunks of at most :data:`CHUNK_BYTES` (under Kafka's default 1 MB message limit);
the chunks travel under the key ``partition``, so they stay in order, and each carries in its headers which shard
it belongs to and which chunk of how many it is.

:func:`merge` is the inverse of partitioning: the union of the DIDs, ordered by their first appearance in the
stream (the order a single process interns them), the activity summed, the edges put together (each attender's
edges live in one partition, so no pair is counted twice) and the visibility counted over all of them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from streamer.core.followers import Followers
from streamer.core.state import Snapshot, StateConfig, decode_strings, encode_strings, visibility_of, window_bounds

SCHEMA = "skyattr.shard/1"
CHUNK_BYTES = 900_000


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

    @property
    def id(self) -> ShardId:
        return ShardId(self.as_of_us, self.partition)

    def to_chunks(self, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
        """``(value, headers)`` of each chunk."""
        a = self.arrays
        offsets, blob = encode_strings(a["dids"])
        buffer = io.BytesIO()
        np.savez(
            buffer,
            dids_offsets=offsets,
            dids_blob=blob,
            **{k: a[k] for k in ("first", "x", "att", "src", "w")},
        )
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
        for k in ("as_of_us", "partition", "partitions", "events", "head", "newest_bucket", "chunks", "chunk"):
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
    try:
        raw = zstandard.ZstdDecompressor().decompress(b"".join(pieces))
        with np.load(io.BytesIO(raw)) as z:
            arrays: dict[str, Any] = {k: z[k] for k in ("first", "x", "att", "src", "w")}
            arrays["dids"] = decode_strings(z["dids_offsets"], z["dids_blob"])
    except (ValueError, KeyError, OSError, zstandard.ZstdError) as exc:
        raise ValueError(f"shard of partition {meta['partition']} at {meta['as_of_us']} is damaged: {exc}") from None
    keys = ("as_of_us", "final", "partition", "partitions", "events", "head", "newest_bucket", "config")
    return Shard(**{k: meta[k] for k in keys}, arrays=arrays)


def merge(shards: Sequence[Shard], config: StateConfig, followers: Followers | None = None) -> Snapshot:
    """The snapshot the shards of one due time add up to (see the module doc)."""
    if not shards:
        raise ValueError("no shards to merge")
    dids_all = [d for s in shards for d in s.arrays["dids"]]
    first_all = np.concatenate([s.arrays["first"] for s in shards])
    group, names = _group(dids_all)  # each entry's DID as a number, and the DIDs those numbers name
    # earliest appearance first (a DID met again, as a subject elsewhere, keeps its place): a DID's place is that
    # of its first entry in the stable order of the positions
    place = np.empty(len(first_all), np.int64)
    place[np.argsort(first_all, kind="stable")] = np.arange(len(first_all))
    earliest = np.full(len(names), np.iinfo(np.int64).max)
    np.minimum.at(earliest, group, place)
    ranked = np.argsort(earliest, kind="stable")
    rank = np.empty(len(names), np.int64)
    rank[ranked] = np.arange(len(names))
    dids = [names[i] for i in ranked.tolist()]
    n = len(dids)
    global_of = rank[group]  # each entry's index in the snapshot
    x = np.zeros(n)
    np.add.at(x, global_of, np.concatenate([s.arrays["x"] for s in shards]))  # shard by shard, in order
    att_parts, src_parts, w_parts = [], [], []
    start = 0
    for s in shards:
        a = s.arrays
        local = global_of[start : start + len(a["dids"])]
        start += len(a["dids"])
        if len(local):
            att_parts.append(local[a["att"]])
            src_parts.append(local[a["src"]])
            w_parts.append(a["w"])
    att = np.concatenate(att_parts) if att_parts else np.zeros(0, np.int64)
    src = np.concatenate(src_parts) if src_parts else np.zeros(0, np.int64)
    w = np.concatenate(w_parts) if w_parts else np.zeros(0)
    graph = None
    if len(att):
        from kernels import AttentionGraph

        by_pair = np.argsort(att * max(n, 1) + src)  # pairs are unique: one key each, sorted by (attender, source)
        att, src, w = att[by_pair], src[by_pair], w[by_pair]
        graph = AttentionGraph(att.astype(np.int32), src.astype(np.int32), w, max(n, 1))
    visibility = visibility_of(dids, src, followers, x)
    start, end = window_bounds(config, max(s.head for s in shards), (s.newest_bucket for s in shards))
    events = sum(s.events for s in shards)
    return Snapshot(x, visibility, graph, dids, start, end, events)


def _group(dids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each DID of ``dids`` as the number of its distinct value, and those values (in order of first entry):
    grouped by Python's string hash (mapped in C, sorted by numpy), the groups checked string for string, so a
    shard of millions of accounts is merged without a Python loop over them; hashes that collide (or a check that
    fails) fall back to a dict."""
    hashes = np.fromiter(map(hash, dids), np.int64, len(dids))
    _, first, group = np.unique(hashes, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    values = np.array(dids, dtype=object)
    named = values[first]
    if bool((named[group] == values).all()):  # each DID the same string as its group's first: no collision
        return group, named.tolist()
    index: dict[str, int] = {}  # two DIDs share a hash: number them by the strings themselves
    group = np.fromiter((index.setdefault(d, len(index)) for d in dids), np.int64, len(dids))
    return group, list(index)
