"""Rolling per-agent state: who is active and who attends to whom, over a window of event time.

* DIDs are interned to dense indices in order of first appearance (actor or subject), so index i is stable for
  the life of the state and across checkpoints.
* Time is bucketed in **event time** (default 14 buckets of one day). An event lands in bucket
  ``time_us // bucket_us``; when a newer bucket opens, buckets older than the window are dropped whole. Events
  older than the window are counted as ``late`` and skipped.
* Activity: per bucket, counters per agent for each activity kind (post, reply, quote, repost, like, follow);
  x_i = sum over the window of ``activity_weights[kind] * count``.
* Attention W: per bucket, edges attender -> source with weights by interaction kind, buffered and compacted
  (duplicate pairs summed) in batches. The whole window is held to ``edge_budget`` edges: beyond it the lightest
  edges of the oldest bucket are evicted (counted).
* Visibility: follower counts from an optional ``did,followers`` table, else the number of distinct attenders in
  the window.

Deletes carry no record, so a deleted like or follow is not subtracted: it ages out with its bucket. They are
counted as ``delete`` events.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kernels import AttentionGraph
from streamer.events import FOLLOW, LIKE, POST, QUOTE, REPLY, REPOST, Event

ACTIVITY_KINDS = (POST, REPLY, QUOTE, REPOST, LIKE, FOLLOW)
ACTIVITY_INDEX = {k: i for i, k in enumerate(ACTIVITY_KINDS)}
DEFAULT_ACTIVITY_WEIGHTS = {POST: 1.0, REPLY: 1.0, QUOTE: 1.0, REPOST: 1.0, LIKE: 1.0, FOLLOW: 0.0}
DEFAULT_ATTENTION_WEIGHTS = {LIKE: 1.0, REPOST: 2.0, REPLY: 3.0, QUOTE: 3.0, FOLLOW: 0.5}
US_PER_HOUR = 3_600_000_000
FLUSH_EVERY = 1 << 16


@dataclass(frozen=True)
class StateConfig:
    """Window and weights. ``bucket_hours`` x ``buckets`` is the window (default 14 days)."""

    bucket_hours: float = 24.0
    buckets: int = 14
    activity_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ACTIVITY_WEIGHTS))
    attention_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ATTENTION_WEIGHTS))
    edge_budget: int = 20_000_000

    def __post_init__(self) -> None:
        if not (self.bucket_hours > 0 and np.isfinite(self.bucket_hours)):
            raise ValueError(f"bucket_hours must be a positive number, got {self.bucket_hours!r}")
        if int(self.buckets) != self.buckets or self.buckets < 1:
            raise ValueError(f"buckets must be a positive integer, got {self.buckets!r}")
        if int(self.edge_budget) != self.edge_budget or self.edge_budget < 1:
            raise ValueError(f"edge_budget must be a positive integer, got {self.edge_budget!r}")
        for name, table, allowed in (
            ("activity_weights", self.activity_weights, ACTIVITY_KINDS),
            ("attention_weights", self.attention_weights, tuple(DEFAULT_ATTENTION_WEIGHTS)),
        ):
            for kind, w in table.items():
                if kind not in allowed:
                    raise ValueError(f"{name}: unknown kind {kind!r}; allowed: {', '.join(allowed)}")
                if not (np.isfinite(w) and w >= 0):
                    raise ValueError(f"{name}[{kind}] must be a finite number >= 0, got {w!r}")

    @property
    def bucket_us(self) -> int:
        return round(self.bucket_hours * US_PER_HOUR)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket_hours": self.bucket_hours,
            "buckets": self.buckets,
            "activity_weights": dict(self.activity_weights),
            "attention_weights": dict(self.attention_weights),
            "edge_budget": self.edge_budget,
        }


@dataclass
class Snapshot:
    """What the kernels take: activity x, visibility, the attention graph, and the DIDs behind the indices."""

    x: np.ndarray
    visibility: np.ndarray
    graph: AttentionGraph | None
    dids: list[str]
    window_start_us: int
    window_end_us: int
    events: int

    @property
    def agents(self) -> int:
        return len(self.dids)

    @property
    def edges(self) -> int:
        return 0 if self.graph is None else self.graph.edges


class _Bucket:
    """One time bucket: activity counters (agents x kinds) and compacted attention edges."""

    __slots__ = ("att", "counts", "index", "src", "weight")

    def __init__(self, index: int, capacity: int) -> None:
        self.index = index
        self.counts = np.zeros((capacity, len(ACTIVITY_KINDS)), np.uint32)
        self.att = np.zeros(0, np.int32)
        self.src = np.zeros(0, np.int32)
        self.weight = np.zeros(0, np.float32)

    def grow(self, capacity: int) -> None:
        if capacity > len(self.counts):
            bigger = np.zeros((capacity, len(ACTIVITY_KINDS)), np.uint32)
            bigger[: len(self.counts)] = self.counts
            self.counts = bigger

    def add_edges(self, att: np.ndarray, src: np.ndarray, weight: np.ndarray) -> None:
        self.att, self.src, self.weight = _compact(
            np.concatenate([self.att, att]), np.concatenate([self.src, src]), np.concatenate([self.weight, weight])
        )


def _compact(att: np.ndarray, src: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge duplicate (attender, source) pairs, summing weights; result sorted by (attender, source)."""
    if len(att) == 0:
        return att.astype(np.int32), src.astype(np.int32), weight.astype(np.float32)
    key = (att.astype(np.int64) << 32) | src.astype(np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    summed = np.bincount(inverse, weights=weight, minlength=len(uniq)).astype(np.float32)
    return (uniq >> 32).astype(np.int32), (uniq & 0xFFFFFFFF).astype(np.int32), summed


class AgentState:
    """Interning, rolling activity and attention. Feed events with :meth:`apply`; read with :meth:`snapshot`."""

    def __init__(self, config: StateConfig | None = None, followers: dict[str, float] | None = None) -> None:
        self.config = config or StateConfig()
        self.followers = followers
        self._bucket_us = self.config.bucket_us
        self._act_w = {k: float(w) for k, w in self.config.activity_weights.items() if w > 0}
        self._att_w = {k: float(w) for k, w in self.config.attention_weights.items() if w > 0}
        self.index: dict[str, int] = {}
        self.dids: list[str] = []
        self.buckets: dict[int, _Bucket] = {}
        self.head = -1  # newest bucket index seen
        self.counters: Counter[str] = Counter()
        self.events = 0
        self.last_time_us = 0
        self._pending_act: dict[int, list[int]] = {}
        self._pending_edges: dict[int, tuple[list[int], list[int], list[float]]] = {}
        self._pending = 0

    # ingest ------------------------------------------------------------------------------------------------
    def intern(self, did: str) -> int:
        idx = self.index.get(did)
        if idx is None:
            idx = self.index[did] = len(self.dids)
            self.dids.append(did)
        return idx

    def apply(self, event: Event) -> bool:
        """Fold one event into the state. Returns False (and counts why) when it is outside the window."""
        b = event.time_us // self._bucket_us
        if b > self.head:
            self._advance(b)
        elif b <= self.head - self.config.buckets:
            self.counters["late"] += 1
            return False
        kind = event.kind
        self.events += 1
        self.last_time_us = max(self.last_time_us, event.time_us)
        self.counters[kind] += 1
        actor = self.intern(event.actor)
        if kind in self._act_w:
            self._pending_act.setdefault(b, []).append(actor * len(ACTIVITY_KINDS) + ACTIVITY_INDEX[kind])
            self._pending += 1
        w = self._att_w.get(kind)
        if w is not None and event.subject:
            subject = self.intern(event.subject)
            if subject == actor:
                self.counters["self_attention"] += 1
            else:
                att, src, ws = self._pending_edges.setdefault(b, ([], [], []))
                att.append(actor)
                src.append(subject)
                ws.append(w)
                self._pending += 1
        if self._pending >= FLUSH_EVERY:
            self.flush()
        return True

    def _advance(self, b: int) -> None:
        self.flush()
        self.head = b
        oldest = b - self.config.buckets + 1
        for old in [k for k in self.buckets if k < oldest]:
            del self.buckets[old]
            self.counters["buckets_expired"] += 1

    def _bucket(self, b: int) -> _Bucket:
        bucket = self.buckets.get(b)
        if bucket is None:
            bucket = self.buckets[b] = _Bucket(b, max(1024, len(self.dids)))
        return bucket

    def flush(self) -> None:
        """Move buffered events into the buckets' arrays (compacting edges) and enforce the edge budget."""
        if not self._pending:
            return
        capacity = len(self.dids)
        for b, codes in self._pending_act.items():
            bucket = self._bucket(b)
            if capacity > len(bucket.counts):
                bucket.grow(max(capacity, int(len(bucket.counts) * 1.5)))
            np.add.at(bucket.counts.reshape(-1), np.asarray(codes, np.int64), 1)
        for b, (att, src, ws) in self._pending_edges.items():
            self._bucket(b).add_edges(np.asarray(att, np.int32), np.asarray(src, np.int32), np.asarray(ws, np.float32))
        self._pending_act.clear()
        self._pending_edges.clear()
        self._pending = 0
        self._enforce_budget()

    def _enforce_budget(self) -> None:
        total = sum(len(b.att) for b in self.buckets.values())
        for b in sorted(self.buckets):
            if total <= self.config.edge_budget:
                return
            bucket = self.buckets[b]
            excess = min(total - self.config.edge_budget, len(bucket.att))
            if excess == 0:
                continue
            keep = np.sort(np.argsort(bucket.weight, kind="stable")[excess:])
            bucket.att, bucket.src, bucket.weight = bucket.att[keep], bucket.src[keep], bucket.weight[keep]
            self.counters["edges_evicted"] += excess
            total -= excess

    # read --------------------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Arrays for the kernels (copies; ingest may continue afterwards)."""
        self.flush()
        n = len(self.dids)
        weights = np.array([self.config.activity_weights.get(k, 0.0) for k in ACTIVITY_KINDS])
        x = np.zeros(n)
        att_parts, src_parts, w_parts = [], [], []
        for b in sorted(self.buckets):
            bucket = self.buckets[b]
            m = min(n, len(bucket.counts))
            x[:m] += bucket.counts[:m] @ weights
            att_parts.append(bucket.att)
            src_parts.append(bucket.src)
            w_parts.append(bucket.weight)
        graph = None
        distinct = np.zeros(n)
        if att_parts and sum(len(a) for a in att_parts):
            att, src, w = _compact(np.concatenate(att_parts), np.concatenate(src_parts), np.concatenate(w_parts))
            graph = AttentionGraph(att, src, w.astype(np.float64), max(n, 1))
            distinct = np.bincount(src, minlength=n).astype(np.float64)
        if self.followers is not None:
            visibility = np.array([float(self.followers.get(d, 0.0)) for d in self.dids])
        else:
            visibility = distinct
        start = (self.head - self.config.buckets + 1) * self._bucket_us if self.head >= 0 else 0
        end = (self.head + 1) * self._bucket_us if self.head >= 0 else 0
        return Snapshot(x, visibility, graph, list(self.dids), start, end, self.events)

    # checkpoint support ------------------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, metadata) holding the whole state, for :mod:`streamer.checkpoint`."""
        self.flush()
        arrays: dict[str, np.ndarray] = {"dids": np.frombuffer("\n".join(self.dids).encode(), np.uint8)}
        for b, bucket in self.buckets.items():
            arrays[f"b{b}_counts"] = bucket.counts[: len(self.dids)]
            arrays[f"b{b}_att"], arrays[f"b{b}_src"], arrays[f"b{b}_w"] = bucket.att, bucket.src, bucket.weight
        meta = {
            "config": self.config.as_dict(),
            "head": self.head,
            "buckets": sorted(self.buckets),
            "counters": dict(self.counters),
            "events": self.events,
            "last_time_us": self.last_time_us,
            "agents": len(self.dids),
        }
        return arrays, meta

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], followers: dict[str, float] | None = None
    ) -> AgentState:
        state = cls(StateConfig(**meta["config"]), followers)
        raw = bytes(arrays["dids"]).decode()
        state.dids = raw.split("\n") if raw else []
        if len(state.dids) != meta["agents"]:
            raise ValueError(f"checkpoint holds {len(state.dids)} DIDs but its metadata says {meta['agents']}")
        state.index = {d: i for i, d in enumerate(state.dids)}
        for b in meta["buckets"]:
            bucket = _Bucket(b, 0)
            bucket.counts = np.array(arrays[f"b{b}_counts"], np.uint32)
            bucket.att, bucket.src = np.array(arrays[f"b{b}_att"]), np.array(arrays[f"b{b}_src"])
            bucket.weight = np.array(arrays[f"b{b}_w"])
            state.buckets[b] = bucket
        state.head, state.events = meta["head"], meta["events"]
        state.last_time_us = meta["last_time_us"]
        state.counters = Counter(meta["counters"])
        return state
