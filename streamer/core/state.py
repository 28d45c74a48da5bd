"""Rolling per-agent state: who is active and who attends to whom, over a window of event time.

* DIDs are interned to dense indices in order of first appearance (actor or subject). Agents absent from the
  whole window are pruned when a bucket expires and the survivors renumbered in the same order, so the table
  holds the window's agents, not every account ever seen, and index order stays first-appearance order.
* Time is bucketed in **event time** (default 14 buckets of one day): an event lands in bucket
  ``time_us // bucket_us``. The window is governed by a **watermark**, not by any single event's time (see
  below): buckets older than the window relative to the watermark are dropped whole, events older than it are
  counted as ``late`` and events too far ahead of the stream are counted as ``future_time``; neither is applied.
* Activity: per bucket, counters per (agent, kind) for each weighted activity kind (post, reply, quote, repost,
  like, follow), held sparsely (only pairs that occurred): x_i = sum over the window of ``weight * count``.
* Attention W: per bucket, edges attender -> source with weights by interaction kind, buffered and compacted
  (duplicate pairs summed) in batches. The whole window is held to ``edge_budget`` edges: beyond it the lightest
  edges of the oldest bucket are evicted (counted).
* Visibility: follower counts from an optional ``did,followers`` table, else the number of distinct attenders in
  the window.

Watermark. A commit's ``time`` is whatever its PDS wrote, so one item dated 2100 must not be able to expire the
window. The state keeps the last ``WATERMARK_SAMPLES`` (K = 1001) event times in a ring (every event with
storable DIDs and a representable time, accepted or not, so that a genuine jump of the whole stream is followed)
and every ``WATERMARK_EVERY`` (R = 128) events (every 16 while the ring fills) takes its median ``m`` and upper
quartile ``q`` with one ``np.partition`` (about 8 us: well under 0.1 us per event):

* the watermark is ``max(previous, m)``: monotone, and moved only when half of the recent stream has moved;
  the head bucket (hence expiry and ``late``) follows it, never an individual event;
* the horizon is ``watermark + min(3 (q - m), window) + max_future_skew``: in an ordered stream the front runs
  about ``2 (q - m)`` ahead of the median, so this is "the stream's front plus a margin plus the producers' clock
  skew", whatever the event rate. Past stragglers (backfill) do not widen it; events beyond it are
  ``future_time``. An optional receive clock ``now_us`` caps it further at ``now_us + max_future_skew``;
* warm-up: until ``WATERMARK_WARMUP`` (16) samples exist nothing is judged (a first event cannot be judged
  against anything) and nothing expires; the head is provisional. When the watermark is established, buckets
  outside ``[window start, horizon]`` (a poisoned first event's) are dropped and their agents pruned;
* a genuine jump of the whole stream beyond the horizon (an outage, an archive that starts days later) is
  followed once the median has moved: at most ``K // 2 + R`` (= 628) events after the jump are counted
  ``future_time``, after which the new time is the watermark (about ``K // 4 + R`` when the jump is shorter than
  the window: the upper quartile opens the horizon first).

The watermark (ring, sample count, watermark, lead) is part of the checkpoint, so a killed-and-resumed replay
makes exactly the decisions an uninterrupted one makes.

Deletes. A delete carries no record, only its path (actor, collection, record key), so the state keeps an index of
what each record in the window added: per bucket, the 64-bit BLAKE2b hash of ``actor/collection/rkey`` of every
created record that added activity or an edge, with its actor, subject and kind (17 bytes a record). A delete
subtracts exactly that from the bucket the create landed in (the count of its kind, the weight of its edge; an edge
whose weight reaches zero is gone, so a deleted follow no longer makes its subject visible) and is counted
``delete_applied``; a delete of a record the index does not hold (created before the window, or before the state
began, or of a kind that adds nothing) changes nothing and is counted ``delete_unmatched``. The index is held to
``record_budget`` records: beyond it the oldest bucket's entries go first (counted ``records_unindexed``), and
a delete of such a record is unmatched, so memory stays bounded whatever the stream (0: no index, no deletes taken
back, and none of the index's cost: about 1 µs a create, for the hash of its path).

Deactivated accounts. An ``#account`` event with ``active: false`` (the account was deleted, taken down, suspended
or deactivated) removes the account from the state at once: its activity, the edges it draws and the edges it
receives, in every bucket, so no result published after it holds its DID or anything it did. Until an
``#account`` event with ``active: true`` reactivates it, every event by it is refused as ``deactivated`` (counted,
as ``late`` is) and every event towards it counts as its author's activity without the edge
(``deactivated_subject``), as the purge leaves the earlier ones; after that it comes back with its new activity
only. The deactivated
DIDs (with the time of their deactivation) are part of the checkpoint; ``counters`` holds ``accounts_deactivated``
and ``accounts_reactivated``, and ``decider.deactivated`` the accounts inactive now.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the kernels (and JAX) load when a snapshot is first taken, not when the CLI starts
    from kernels import AttentionGraph

from streamer.core.decisions import ACCEPTED, Decider, Decision, storable_did
from streamer.core.events import DELETE, FOLLOW, LIKE, POST, QUOTE, REPLY, REPOST, Event
from streamer.core.followers import Followers, FollowerSource
from streamer.core.watermark import (  # noqa: F401  (re-exported: the rule's constants are the state's)
    FUTURE_TIME,
    LATE,
    LEAD_FACTOR,
    MAX_TIME_US,
    WATERMARK_EVERY,
    WATERMARK_SAMPLES,
    WATERMARK_WARMUP,
    Advance,
    Watermark,
)

ACTIVITY_KINDS = (POST, REPLY, QUOTE, REPOST, LIKE, FOLLOW)
UPDATE = "update"  # counter of record updates (edits): accepted, neither activity nor attention
ACTIVITY_INDEX = {k: i for i, k in enumerate(ACTIVITY_KINDS)}
DEFAULT_ACTIVITY_WEIGHTS = {POST: 1.0, REPLY: 1.0, QUOTE: 1.0, REPOST: 1.0, LIKE: 1.0, FOLLOW: 0.0}
DEFAULT_ATTENTION_WEIGHTS = {LIKE: 1.0, REPOST: 2.0, REPLY: 3.0, QUOTE: 3.0, FOLLOW: 0.5}
US_PER_HOUR = 3_600_000_000
FLUSH_EVERY = 1 << 16

KIND_BITS = 3  # an activity counter's code is agent << KIND_BITS | kind
KIND_MASK = (1 << KIND_BITS) - 1

RECORD_BYTES = 17  # one record index entry: hash (8), actor (4), subject (4), kind (1)
DEAD_RECORD = 0xFF  # the kind of a pending record a delete took back


def record_key(actor: str, collection: str, rkey: str) -> int:
    """The index key of the record at ``at://actor/collection/rkey``: the first 64 bits of its BLAKE2b hash (as a
    signed int64), so a key costs 8 bytes whatever the path's length and is the same in every process (a checkpoint
    stores it). Two
    paths of one window share a key with probability about ``records² / 2⁶⁵`` (10⁻⁵ at 2·10⁷ records)."""
    path = f"{actor}/{collection}/{rkey}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(path, digest_size=8).digest(), "little", signed=True)


@dataclass(frozen=True)
class StateConfig:
    """Window and weights. ``bucket_hours`` x ``buckets`` is the window (default 14 days).
    ``max_future_skew_s``: how far (beyond the stream's own front) a producer's clock may run ahead before its
    events are refused as ``future_time``; at most one bucket is used."""

    bucket_hours: float = 24.0
    buckets: int = 14
    activity_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ACTIVITY_WEIGHTS))
    attention_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ATTENTION_WEIGHTS))
    edge_budget: int = 20_000_000
    max_future_skew_s: float = 600.0
    record_budget: int = 20_000_000

    def __post_init__(self) -> None:
        if not (self.bucket_hours > 0 and np.isfinite(self.bucket_hours)):
            raise ValueError(f"bucket_hours must be a positive number, got {self.bucket_hours!r}")
        if int(self.buckets) != self.buckets or self.buckets < 1:
            raise ValueError(f"buckets must be a positive integer, got {self.buckets!r}")
        if int(self.edge_budget) != self.edge_budget or self.edge_budget < 1:
            raise ValueError(f"edge_budget must be a positive integer, got {self.edge_budget!r}")
        if int(self.record_budget) != self.record_budget or self.record_budget < 0:
            raise ValueError(f"record_budget must be an integer >= 0, got {self.record_budget!r}")
        if not (self.max_future_skew_s >= 0 and np.isfinite(self.max_future_skew_s)):
            raise ValueError(f"max_future_skew_s must be a finite number >= 0, got {self.max_future_skew_s!r}")
        for name, table, allowed in (
            ("activity_weights", self.activity_weights, ACTIVITY_KINDS),
            ("attention_weights", self.attention_weights, tuple(DEFAULT_ATTENTION_WEIGHTS)),
        ):
            for kind, w in table.items():
                if kind not in allowed:
                    raise ValueError(f"{name}: unknown kind {kind!r}; allowed: {', '.join(allowed)}")
                if not (np.isfinite(w) and w >= 0):
                    raise ValueError(f"{name}[{kind}] must be a finite number >= 0, got {w!r}")

    def activity_codes(self) -> dict[str, int]:
        """The kinds counted as activity (weight > 0), each with its index in ``ACTIVITY_KINDS``."""
        return {k: ACTIVITY_INDEX[k] for k, w in self.activity_weights.items() if w > 0}

    def attention(self) -> dict[str, float]:
        """The kinds that draw an attention edge (weight > 0), each with its weight."""
        return {k: float(w) for k, w in self.attention_weights.items() if w > 0}

    @property
    def edge_floor(self) -> float:
        """Half the lightest attention weight: an edge at or below it holds no live attention (deletes brought it
        there), in the state and in the partitions alike."""
        return 0.5 * min(self.attention().values(), default=1.0)

    @property
    def bucket_us(self) -> int:
        return round(self.bucket_hours * US_PER_HOUR)

    @property
    def skew_us(self) -> int:
        """The clock skew allowance in microseconds, capped at one bucket so a skewed event opens at most the
        next bucket beyond the stream's front."""
        return min(round(self.max_future_skew_s * 1_000_000), self.bucket_us)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket_hours": self.bucket_hours,
            "buckets": self.buckets,
            "activity_weights": dict(self.activity_weights),
            "attention_weights": dict(self.attention_weights),
            "edge_budget": self.edge_budget,
            "max_future_skew_s": self.max_future_skew_s,
            "record_budget": self.record_budget,
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


def window_bounds(config: StateConfig, head: int, buckets: Iterable[int]) -> tuple[int, int]:
    """(start, end) µs of the window whose head bucket is ``head`` and which holds ``buckets``: from the oldest
    bucket the window keeps to the end of the newest one held (accepted events just ahead of the head included);
    (0, 0) before the head is known. The single process's snapshot and the distributed merge both use it."""
    if head < 0:
        return 0, 0
    return (head - config.buckets + 1) * config.bucket_us, (max([head, *buckets]) + 1) * config.bucket_us


def visibility_of(dids: list[str], source: np.ndarray, followers: Followers | None, x: np.ndarray) -> np.ndarray:
    """Each account's visibility: its followers when a table is given, what a follower source answers (asked with
    the proxy below and the activity ``x``), else its distinct attenders (``source``: the source of each distinct
    attention pair)."""
    proxy = np.bincount(source, minlength=len(dids)).astype(np.float64)
    if isinstance(followers, FollowerSource):
        return np.asarray(followers.visibility(dids, proxy, x), np.float64)
    if followers is not None:
        return np.array([float(followers.get(d, 0.0)) for d in dids])
    return proxy


def encode_strings(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, blob): string i is ``blob[offsets[i]:offsets[i + 1]]`` in UTF-8. Length-prefixed, so no
    character (newline, NUL, anything) can split or merge entries; ``surrogatepass`` makes every Python string
    encodable."""
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    if encoded:
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), np.uint8)


def decode_strings(offsets: np.ndarray, blob: np.ndarray) -> list[str]:
    """The inverse of :func:`encode_strings`; ``ValueError`` when the offsets do not fit the blob."""
    offsets = np.asarray(offsets)
    raw = np.asarray(blob, np.uint8).tobytes()
    if (
        offsets.ndim != 1
        or len(offsets) == 0
        or offsets[0] != 0
        or offsets[-1] != len(raw)
        or (len(offsets) > 1 and np.any(np.diff(offsets) < 0))
    ):
        raise ValueError("string table offsets do not fit its blob")
    bounds = offsets.tolist()
    if raw.isascii():  # the usual case: byte offsets are character offsets, one decode for all
        text = raw.decode("ascii")
        return [text[a:b] for a, b in pairwise(bounds)]
    return [raw[a:b].decode("utf-8", "surrogatepass") for a, b in pairwise(bounds)]


class _Bucket:
    """One time bucket: sparse activity counters and compacted attention edges (sorted by (attender, source),
    each pair once: :class:`EdgeMerger` relies on it).

    ``codes`` (sorted, unique, ``agent << KIND_BITS | kind``) and ``counts`` hold only the (agent, kind) pairs
    that occurred in the bucket, so a bucket costs what happened in it, not the size of the DID table.

    The record index of the bucket's creates (see the module doc) is ``rkeys`` (sorted), ``ragent``, ``rsubject``
    (-1: the record added no edge) and ``rkind`` (its kind's index in ``ACTIVITY_KINDS``; -1 marks an entry a
    delete used, dropped at the next flush). Only the state reads it: it is written in place."""

    __slots__ = ("att", "codes", "counts", "dead", "index", "ragent", "rkeys", "rkind", "rsubject", "src", "weight")

    def __init__(self, index: int) -> None:
        self.index = index
        self.codes = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.uint32)
        self.att = np.zeros(0, np.int32)
        self.src = np.zeros(0, np.int32)
        self.weight = np.zeros(0, np.float32)
        self.rkeys = np.zeros(0, np.int64)
        self.ragent = np.zeros(0, np.int32)
        self.rsubject = np.zeros(0, np.int32)
        self.rkind = np.zeros(0, np.int8)
        self.dead = 0  # index entries marked used since the last flush

    def add_counts(self, codes: np.ndarray) -> None:
        """Add one to the counter of each code (repeats add up): a sorted merge, linear in the bucket's size."""
        new, cnt = np.unique(codes, return_counts=True)
        pos = np.searchsorted(self.codes, new)
        hit = pos < len(self.codes)
        hit[hit] = self.codes[pos[hit]] == new[hit]
        if hit.any():
            self.counts[pos[hit]] += cnt[hit].astype(np.uint32)
        if not hit.all():
            miss = ~hit
            self.codes = np.insert(self.codes, pos[miss], new[miss])
            self.counts = np.insert(self.counts, pos[miss], cnt[miss].astype(np.uint32))

    def sub_counts(self, codes: np.ndarray) -> None:
        """Take one from the counter of each code (codes the bucket holds: a delete's create added them); a
        counter reaching zero is gone."""
        old, cnt = np.unique(codes, return_counts=True)
        pos = np.searchsorted(self.codes, old)
        counts = self.counts.copy()  # replaced, not written in place: a frozen state may share the array
        counts[pos] -= np.minimum(counts[pos], cnt.astype(np.uint32))
        keep = counts > 0
        self.codes, self.counts = (self.codes, counts) if keep.all() else (self.codes[keep], counts[keep])

    def add_edges(self, att: np.ndarray, src: np.ndarray, weight: np.ndarray, floor: float = 0.0) -> None:
        """Add edges (a delete's are negative), duplicates summed; an edge left lighter than ``floor`` (half the
        lightest attention weight: no live edge is lighter) is gone."""
        att, src, weight = _compact(
            np.concatenate([self.att, att]), np.concatenate([self.src, src]), np.concatenate([self.weight, weight])
        )
        keep = weight > floor
        self.att, self.src, self.weight = (att, src, weight) if keep.all() else (att[keep], src[keep], weight[keep])

    # the record index ------------------------------------------------------------------------------------------
    def add_records(self, keys: np.ndarray, agents: np.ndarray, subjects: np.ndarray, kinds: np.ndarray) -> None:
        """Merge new index entries in (and drop the used ones): linear in the bucket's index."""
        self.compact_records()
        order = np.argsort(keys, kind="stable")
        keys, agents, subjects, kinds = keys[order], agents[order], subjects[order], kinds[order]
        pos = np.searchsorted(self.rkeys, keys, side="right")
        self.rkeys = np.insert(self.rkeys, pos, keys)
        self.ragent = np.insert(self.ragent, pos, agents)
        self.rsubject = np.insert(self.rsubject, pos, subjects)
        self.rkind = np.insert(self.rkind, pos, kinds)

    def find_record(self, key: int) -> int:
        """The position of the live entry of ``key``, or -1."""
        keys = self.rkeys
        pos = int(keys.searchsorted(key))
        end = len(keys)
        while pos < end and int(keys[pos]) == key:
            if self.rkind[pos] >= 0:
                return pos
            pos += 1
        return -1

    def compact_records(self, keep: np.ndarray | None = None) -> int:
        """Drop the used entries (and those ``keep`` is false for); the number of live ones dropped."""
        if keep is None and not self.dead:
            return 0
        live = self.rkind >= 0
        mask = live if keep is None else live & keep
        self.rkeys, self.ragent = self.rkeys[mask], self.ragent[mask]
        self.rsubject, self.rkind = self.rsubject[mask], self.rkind[mask]
        self.dead = 0
        return int(live.sum()) - len(self.rkeys)

    def forget_agent(self, agent: int) -> None:
        """A deactivated agent: its records go, the edges of records towards it were removed with it."""
        self.compact_records(self.ragent != agent)
        self.rsubject = np.where(self.rsubject == agent, -1, self.rsubject).astype(np.int32)

    def mark(self, alive: np.ndarray) -> None:
        """Set ``alive`` for every agent this bucket mentions."""
        alive[self.codes >> KIND_BITS] = True
        alive[self.att] = True
        alive[self.src] = True

    def renumber(self, new_index: np.ndarray) -> None:
        """Apply an order-preserving renumbering of agents (so codes and edges stay sorted)."""
        self.codes = (new_index[self.codes >> KIND_BITS] << KIND_BITS) | (self.codes & KIND_MASK)
        self.att = new_index[self.att].astype(np.int32)
        self.src = new_index[self.src].astype(np.int32)
        # a record whose actor was pruned (its traces evicted) can no longer be subtracted from anything
        agents = new_index[self.ragent]
        self.compact_records(agents >= 0)
        self.ragent = new_index[self.ragent].astype(np.int32)
        subjects = np.where(self.rsubject >= 0, new_index[np.maximum(self.rsubject, 0)], -1)
        self.rsubject = np.maximum(subjects, -1).astype(np.int32)


def _compact(att: np.ndarray, src: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge duplicate (attender, source) pairs, summing weights; result sorted by (attender, source)."""
    return _split(*_summed(_keys(att, src), weight))


class EdgeMerger:
    """The window's attention edges as one compacted list, built incrementally: the merge of every bucket but the
    newest is kept (with the bucket arrays it came from), and while those are unchanged — between two runs usually
    only the newest bucket changes — a snapshot merges just the newest one into it (a searchsorted merge, linear in
    the edges, instead of sorting them all again). Weights are summed in float64, as the full compaction sums
    them, so the result is the same bit for bit either way. Thread-safe (the worker and the loop both snapshot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._older: tuple[np.ndarray, ...] = ()  # the attender arrays the cached merge was made from
        self._keys = np.zeros(0, np.int64)
        self._weights = np.zeros(0, np.float64)

    def edges(self, buckets: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
        """(attender, source, weight) of the union of ``buckets`` (oldest first), duplicates summed, sorted."""
        older, newest = buckets[:-1], buckets[-1]
        if not older:  # one bucket: already compacted
            return newest[0], newest[1], newest[2].astype(np.float32)
        with self._lock:
            same = len(older) == len(self._older) and all(a is b[0] for a, b in zip(self._older, older, strict=True))
            if not same:
                att, src, w = (np.concatenate([b[i] for b in older]) for i in range(3))
                self._keys, self._weights = _summed(_keys(att, src), w)
                self._older = tuple(b[0] for b in older)
            # a bucket's edges are compacted (sorted, unique pairs) whenever they change: no second compaction
            keys, weights = _merge(self._keys, self._weights, _keys(newest[0], newest[1]), newest[2].astype(np.float64))
        return _split(keys, weights)


def _keys(att: np.ndarray, src: np.ndarray) -> np.ndarray:
    """One sortable int64 per (attender, source) pair."""
    return (att.astype(np.int64) << 32) | src.astype(np.int64)


def _split(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attender, source, float32 weight) arrays back from pair keys and their summed weights."""
    return (keys >> 32).astype(np.int32), (keys & 0xFFFFFFFF).astype(np.int32), weights.astype(np.float32)


def _summed(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and the float64 sum of the weights of each."""
    if len(keys) == 0:
        return keys.astype(np.int64), np.zeros(0, np.float64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inverse, weights=weights, minlength=len(uniq))


def _merge(keys_a: np.ndarray, w_a: np.ndarray, keys_b: np.ndarray, w_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge two sorted unique key lists, summing the weights of keys in both."""
    if len(keys_b) == 0:
        return keys_a, w_a
    pos = np.searchsorted(keys_a, keys_b)
    hit = pos < len(keys_a)
    hit[hit] = keys_a[pos[hit]] == keys_b[hit]
    weights = w_a.copy()
    weights[pos[hit]] += w_b[hit]
    miss = ~hit
    return np.insert(keys_a, pos[miss], keys_b[miss]), np.insert(weights, pos[miss], w_b[miss])


@dataclass(frozen=True)
class FrozenState:
    """What one snapshot is made from (:meth:`AgentState.freeze`): per bucket (codes, counts, attender, source,
    weight), the DIDs, the window and the event count."""

    config: StateConfig
    followers: Followers | None
    dids: list[str]
    buckets: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]
    window_start_us: int
    window_end_us: int
    events: int
    merged: EdgeMerger

    @property
    def nbytes(self) -> int:
        """What holding this frozen state costs at most: its arrays (shared with the live state until ingest replaces
        them) and the DID list's references."""
        return sum(a.nbytes for b in self.buckets for a in b) + 8 * len(self.dids)

    def snapshot(self) -> Snapshot:
        """Activity per agent (weighted counts over the window), the compacted attention graph and visibility
        (followers when given, else distinct attenders)."""
        n = len(self.dids)
        weights = np.zeros(1 << KIND_BITS)
        weights[: len(ACTIVITY_KINDS)] = [self.config.activity_weights.get(k, 0.0) for k in ACTIVITY_KINDS]
        x = np.zeros(n)
        for codes, counts, _, _, _ in self.buckets:
            if len(codes):
                x += np.bincount(codes >> KIND_BITS, weights=counts * weights[codes & KIND_MASK], minlength=n)
        graph = None
        src = np.zeros(0, np.int64)
        if sum(len(b[2]) for b in self.buckets):
            att, src, w = self.merged.edges([b[2:] for b in self.buckets])
            from kernels import AttentionGraph

            graph = AttentionGraph(att, src, w.astype(np.float64), max(n, 1))
        visibility = visibility_of(self.dids, src, self.followers, x)
        return Snapshot(x, visibility, graph, self.dids, self.window_start_us, self.window_end_us, self.events)


class AgentState:
    """Interning, rolling activity and attention. Feed events with :meth:`apply`; read with :meth:`snapshot`."""

    def __init__(self, config: StateConfig | None = None, followers: Followers | None = None) -> None:
        self.config = config or StateConfig()
        self.followers = followers
        self._bucket_us = self.config.bucket_us
        self._act_code = self.config.activity_codes()
        self._att_w = self.config.attention()
        self.index: dict[str, int] = {}
        self.dids: list[str] = []
        self.buckets: dict[int, _Bucket] = {}
        self.counters: Counter[str] = Counter()
        self.events = 0
        self.last_time_us = 0  # newest accepted event time
        self._pending_act: dict[int, list[int]] = {}
        self._pending_edges: dict[int, tuple[list[int], list[int], list[float]]] = {}
        self._pending_unact: dict[int, list[int]] = {}  # activity codes deletes take back, per bucket
        # records created since the last flush, in three parallel lists (cheap appends; arrays at the flush): the
        # key, actor << 32 | (subject + 1) and bucket << 8 | kind (kind DEAD_RECORD once a delete took it back);
        # and the position of each key's entry, for a delete of a record still pending
        self._prec_keys: list[int] = []
        self._prec_ab: list[int] = []
        self._prec_bk: list[int] = []
        self._pending_records: dict[int, int] = {}
        self._pending = 0
        self._edge_floor = self.config.edge_floor
        self._indexing = self.config.record_budget > 0  # record_budget 0: deletes take nothing back, at no cost
        self._wm = Watermark(self._bucket_us, self.config.buckets, self.config.skew_us)
        self.decider = Decider(self._wm, frozenset(self._att_w))  # the stream's decisions (core/decisions.py)
        self._merged = EdgeMerger()
        self._forgotten: list[int] = []  # indices of deactivated agents, dropped from `dids` at the next renumbering

    @property
    def head(self) -> int:
        """The watermark's bucket (-1 before any event; provisional during warm-up)."""
        return self._wm.head

    @property
    def watermark(self) -> Watermark:
        """The stream's watermark (read it; the state moves it)."""
        return self._wm

    # ingest ------------------------------------------------------------------------------------------------
    def intern(self, did: str) -> int:
        """The index of ``did``, adding it if new; ``ValueError`` for a DID :func:`storable_did` refuses."""
        idx = self.index.get(did)
        if idx is None:
            if not storable_did(did):
                raise ValueError(f"refusing to intern {did!r}: not a storable DID")
            idx = self.index[did] = len(self.dids)
            self.dids.append(did)
        return idx

    def decide(self, event: Event, now_us: int | None = None) -> Decision:
        """The stream's decision on ``event`` (:meth:`streamer.core.decisions.Decider.decide`, the one the
        distributed ingest makes too), with its consequences for the state: a window move it reports is applied
        (buckets expire, accounts left without a trace are pruned), a refusal counted in ``counters``. ``now_us``
        (optional) is the receive clock: an event more than ``max_future_skew_s`` ahead of it is ``future_time``
        even before the watermark is established. An accepted event is then handed to :meth:`fold`; what runs in
        between (the event-time scheduler's snapshot, see :class:`~streamer.core.dispatch.SequentialDispatcher`)
        sees the state before it, so a run stamped T holds exactly the accepted events before T."""
        decision = self.decider.decide(event, now_us, self.index)
        if decision.moved is not None:
            self._advance(decision.moved)
        if decision.reason is not None:
            self.counters[decision.reason] += 1
        return decision

    def apply(self, event: Event, now_us: int | None = None) -> str | None:
        """:meth:`decide`, then :meth:`fold` when accepted: None when the event was applied, else the reason it was
        not (``late``, ``future_time``, ``bad_did``, ``deactivated``)."""
        decision = self.decide(event, now_us)
        if decision.reason is None:
            self.fold(event, decision)
        return decision.reason

    def fold(self, event: Event, decision: Decision = ACCEPTED) -> None:
        """Fold an event :meth:`decide` accepted, as ``decision`` says."""
        t = event.time_us
        kind = event.kind
        actor_did = event.actor
        self.events += 1
        if t > self.last_time_us:
            self.last_time_us = t
        if decision.account:
            if decision.account == "deactivated":
                self.counters[kind] += 1
                self._deactivate(actor_did)
                return None
            self.counters["accounts_reactivated"] += 1
        w = self._att_w.get(kind)
        subject_did = event.subject if w is not None else ""
        if decision.no_subject:  # the attender's activity counts, the edge towards an inactive account does not
            self.counters["deactivated_subject"] += 1
            subject_did = ""
        b = t // self._bucket_us
        index = self.index  # read here: a snapshot since the decision may have renumbered
        actor = index.get(actor_did)
        subject = index.get(subject_did) if subject_did else None
        if actor is None:
            actor = index[actor_did] = len(self.dids)
            self.dids.append(actor_did)
        if event.operation == "update":  # an edit: the record's activity and attention were counted at its creation
            self.counters[UPDATE] += 1
            return None
        self.counters[kind] += 1
        if kind == DELETE:
            self._delete(record_key(actor_did, event.collection, event.rkey))
            return None
        code = self._act_code.get(kind)
        if code is not None:
            codes = self._pending_act.get(b)
            if codes is None:
                codes = self._pending_act[b] = []
            codes.append(actor << KIND_BITS | code)
            self._pending += 1
        edge_to = -1
        if subject_did:
            if subject is None and (subject := index.get(subject_did)) is None:  # new, unless it is the actor
                subject = index[subject_did] = len(self.dids)
                self.dids.append(subject_did)
            if subject == actor:
                self.counters["self_attention"] += 1
            else:
                pending = self._pending_edges.get(b)
                if pending is None:
                    pending = self._pending_edges[b] = ([], [], [])
                att, src, ws = pending
                att.append(actor)
                src.append(subject)
                ws.append(w)  # type: ignore[arg-type]  # not None: there is a subject only for an attention kind
                self._pending += 1
                edge_to = subject
        if (code is not None or edge_to >= 0) and event.rkey and self._indexing:  # what a delete must take back
            key = record_key(actor_did, event.collection, event.rkey)
            self._pending_records[key] = len(self._prec_keys)
            self._prec_keys.append(key)
            self._prec_ab.append(actor << 32 | (edge_to + 1))
            self._prec_bk.append(b << 8 | ACTIVITY_INDEX[kind])
        if self._pending >= FLUSH_EVERY:
            self.flush()
        return None

    def _delete(self, key: int) -> None:
        """Take back what the create of record ``key`` added (see the module doc): from the pending buffers when
        it is still there, else from its bucket, newest first."""
        found: tuple[int, int, int, int] | None = None
        n = self._pending_records.pop(key, None)
        if n is not None:
            bk, ab = self._prec_bk[n], self._prec_ab[n]
            found = (bk >> 8, ab >> 32, (ab & 0xFFFFFFFF) - 1, bk & 0xFF)
            self._prec_bk[n] = bk | DEAD_RECORD
        else:
            for b in sorted(self.buckets, reverse=True):
                bucket = self.buckets[b]
                pos = bucket.find_record(key)
                if pos >= 0:
                    found = (b, int(bucket.ragent[pos]), int(bucket.rsubject[pos]), int(bucket.rkind[pos]))
                    bucket.rkind[pos] = -1
                    bucket.dead += 1
                    break
            else:
                self.counters["delete_unmatched"] += 1
                return
        b, actor, subject, k = found
        kind = ACTIVITY_KINDS[k]
        self.counters["delete_applied"] += 1
        code = self._act_code.get(kind)
        if code is not None:
            self._pending_unact.setdefault(b, []).append(actor << KIND_BITS | code)
            self._pending += 1
        if subject >= 0:
            att, src, ws = self._pending_edges.setdefault(b, ([], [], []))
            att.append(actor)
            src.append(subject)
            ws.append(-self._att_w[kind])
            self._pending += 1

    def _deactivate(self, did: str) -> None:
        """Remove ``did``'s activity and every edge it draws or receives (the decider refuses its events until it
        is reactivated, see the module doc). Its slot in ``dids`` goes at the next renumbering (a snapshot, a
        checkpoint, a prune): until then it is out of ``index`` and holds nothing."""
        self.counters["accounts_deactivated"] += 1
        i = self.index.pop(did, None)
        if i is None:
            return
        self.flush()  # the pending buffers hold its events too
        for bucket in self.buckets.values():  # arrays replaced, never written in place: a frozen state shares them
            keep = (bucket.codes >> KIND_BITS) != i
            if not keep.all():
                bucket.codes, bucket.counts = bucket.codes[keep], bucket.counts[keep]
            keep = (bucket.att != i) & (bucket.src != i)
            if not keep.all():
                bucket.att, bucket.src, bucket.weight = bucket.att[keep], bucket.src[keep], bucket.weight[keep]
            bucket.forget_agent(i)
        self._forgotten.append(i)

    def _drop_forgotten(self) -> None:
        """Renumber without the deactivated agents' slots (order kept, so edges stay sorted)."""
        if not self._forgotten:
            return
        self.flush()
        alive = np.ones(len(self.dids), bool)
        alive[self._forgotten] = False
        self._renumber(np.flatnonzero(alive))

    def _renumber(self, keep: np.ndarray) -> None:
        """Keep the agents ``keep`` (sorted indices), renumbered in order."""
        n = len(self.dids)
        new_index = np.full(n, -1, np.int64)
        new_index[keep] = np.arange(len(keep))
        for bucket in self.buckets.values():
            bucket.renumber(new_index)
        self.dids = [self.dids[i] for i in keep.tolist()]
        self.index = dict(zip(self.dids, range(len(self.dids)), strict=True))
        self._forgotten.clear()

    def _advance(self, moved: Advance) -> bool:
        """The head moved: buckets older than the window expire (and, when the watermark is first established,
        buckets beyond the horizon, which only warm-up can have made, are dropped); agents left without any
        trace in the window are pruned."""
        self.flush()
        oldest, drop_beyond = moved.oldest, moved.drop_beyond
        removed = False
        for b in sorted(self.buckets):
            if b < oldest:
                del self.buckets[b]
                self.counters["buckets_expired"] += 1
                removed = True
            elif drop_beyond is not None and b > drop_beyond:
                del self.buckets[b]
                self.counters["buckets_dropped"] += 1
                removed = True
        return removed and self._prune()

    def _prune(self) -> bool:
        """Forget agents with no activity and no edge (either end) in any remaining bucket, renumbering the rest
        in order (so indices stay first-appearance order and edges stay sorted). Pending buffers are empty here
        (the caller flushed); ``followers`` is keyed by DID and needs nothing."""
        n = len(self.dids)
        alive = np.zeros(n, bool)
        for bucket in self.buckets.values():
            bucket.mark(alive)
        keep = np.flatnonzero(alive)
        if len(keep) == n:
            return False
        self.counters["agents_pruned"] += n - len(keep) - len(self._forgotten)  # those were counted as deactivated
        self._renumber(keep)
        return True

    def _bucket(self, b: int) -> _Bucket:
        bucket = self.buckets.get(b)
        if bucket is None:
            bucket = self.buckets[b] = _Bucket(b)
        return bucket

    def flush(self) -> None:
        """Move buffered events into the buckets' arrays (compacting edges) and enforce the edge budget."""
        if not self._pending and not self._prec_keys:
            return
        for b, codes in self._pending_act.items():
            self._bucket(b).add_counts(np.asarray(codes, np.int64))
        for b, codes in self._pending_unact.items():
            self._bucket(b).sub_counts(np.asarray(codes, np.int64))
        floor = self._edge_floor
        for b, (att, src, ws) in self._pending_edges.items():
            self._bucket(b).add_edges(
                np.asarray(att, np.int32), np.asarray(src, np.int32), np.asarray(ws, np.float32), floor
            )
        if self._prec_keys:
            keys = np.array(self._prec_keys, np.int64)
            ab, bk = np.array(self._prec_ab, np.int64), np.array(self._prec_bk, np.int64)
            kinds = bk & 0xFF
            live = kinds != DEAD_RECORD
            keys, ab, bk, kinds = keys[live], ab[live], bk[live], kinds[live]
            buckets = bk >> 8
            for b in np.unique(buckets).tolist():
                here = buckets == b
                self._bucket(b).add_records(
                    keys[here],
                    (ab[here] >> 32).astype(np.int32),
                    ((ab[here] & 0xFFFFFFFF) - 1).astype(np.int32),
                    kinds[here].astype(np.int8),
                )
        for bucket in self.buckets.values():
            bucket.compact_records()
        self._pending_act.clear()
        self._pending_unact.clear()
        self._pending_edges.clear()
        self._pending_records.clear()
        self._prec_keys.clear()
        self._prec_ab.clear()
        self._prec_bk.clear()
        self._pending = 0
        self._enforce_budget()
        self._enforce_record_budget()

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

    def _enforce_record_budget(self) -> None:
        """Hold the record index to ``record_budget`` entries: the oldest bucket's go first (the highest keys of
        a bucket, a uniform sample of its records, when only part of it must go)."""
        total = sum(len(b.rkeys) for b in self.buckets.values())
        for b in sorted(self.buckets):
            if total <= self.config.record_budget:
                return
            bucket = self.buckets[b]
            excess = min(total - self.config.record_budget, len(bucket.rkeys))
            keep = np.arange(len(bucket.rkeys)) < len(bucket.rkeys) - excess
            bucket.compact_records(keep)
            self.counters["records_unindexed"] += excess
            total -= excess

    @property
    def records_indexed(self) -> int:
        """Records a delete can take back now (the index's entries, flushed or pending)."""
        return sum(len(b.rkeys) - b.dead for b in list(self.buckets.values())) + len(self._pending_records)

    # read --------------------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Arrays for the kernels (copies; ingest may continue afterwards)."""
        return self.freeze().snapshot()

    def freeze(self) -> FrozenState:
        """The state as it is now, cheaply: what :meth:`snapshot` needs, by reference where ingest never writes
        in place (edge arrays, codes and the DID list are replaced, not mutated, when they change) and copied
        where it does (counters). The expensive part, :meth:`FrozenState.snapshot`, can then run in another
        thread while ingest goes on."""
        self.flush()
        self._drop_forgotten()
        buckets = tuple((b.codes, b.counts.copy(), b.att, b.src, b.weight) for _, b in sorted(self.buckets.items()))
        start, end = window_bounds(self.config, self.head, self.buckets)
        dids = self.dids.copy()  # a list of references: ~1 ms per 10^5 accounts
        return FrozenState(self.config, self.followers, dids, buckets, start, end, self.events, self._merged)

    # checkpoint support ------------------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, metadata) holding the whole state, for :mod:`streamer.core.checkpoint`. DIDs are stored
        length-prefixed (``dids_offsets`` into the UTF-8 ``dids_blob``), so no DID can break the file."""
        self.flush()
        self._drop_forgotten()
        offsets, blob = encode_strings(self.dids)
        gone_offsets, gone_blob = encode_strings(list(self.decider.deactivated))
        arrays: dict[str, np.ndarray] = {
            "dids_offsets": offsets,
            "dids_blob": blob,
            "watermark_ring": np.array(self._wm.ring, np.int64),
            "deactivated_offsets": gone_offsets,
            "deactivated_blob": gone_blob,
            "deactivated_time_us": np.array(list(self.decider.deactivated.values()), np.int64),
        }
        for b, bucket in self.buckets.items():
            arrays[f"b{b}_codes"], arrays[f"b{b}_counts"] = bucket.codes, bucket.counts
            arrays[f"b{b}_att"], arrays[f"b{b}_src"], arrays[f"b{b}_w"] = bucket.att, bucket.src, bucket.weight
            arrays[f"b{b}_rkeys"], arrays[f"b{b}_ragent"] = bucket.rkeys, bucket.ragent
            arrays[f"b{b}_rsubject"], arrays[f"b{b}_rkind"] = bucket.rsubject, bucket.rkind
        meta = {
            "config": self.config.as_dict(),
            "head": self.head,
            "buckets": sorted(self.buckets),
            "counters": dict(self.counters),
            "events": self.events,
            "last_time_us": self.last_time_us,
            "agents": len(self.dids),
            "watermark": self._wm.to_dict(),
        }
        return arrays, meta

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], followers: Followers | None = None
    ) -> AgentState:
        """The state :meth:`to_arrays` saved; ``ValueError`` (or ``KeyError`` for a missing array) when the arrays
        are inconsistent, so a damaged checkpoint is refused rather than half-read."""
        state = cls(StateConfig(**meta["config"]), followers)
        if "dids_offsets" not in arrays:
            raise ValueError("the checkpoint's state layout predates length-prefixed DIDs")
        state.dids = decode_strings(arrays["dids_offsets"], arrays["dids_blob"])
        n = len(state.dids)
        if n != meta["agents"]:
            raise ValueError(f"checkpoint holds {n} DIDs but its metadata says {meta['agents']}")
        state.index = {d: i for i, d in enumerate(state.dids)}
        if len(state.index) != n:
            raise ValueError("checkpoint holds a DID twice")
        for b in meta["buckets"]:
            bucket = _Bucket(b)
            bucket.codes = np.array(arrays[f"b{b}_codes"], np.int64)
            bucket.counts = np.array(arrays[f"b{b}_counts"], np.uint32)
            bucket.att = np.array(arrays[f"b{b}_att"], np.int32)
            bucket.src = np.array(arrays[f"b{b}_src"], np.int32)
            bucket.weight = np.array(arrays[f"b{b}_w"], np.float32)
            if f"b{b}_rkeys" in arrays:  # absent from checkpoints written before deletes were taken back
                bucket.rkeys = np.array(arrays[f"b{b}_rkeys"], np.int64)
                bucket.ragent = np.array(arrays[f"b{b}_ragent"], np.int32)
                bucket.rsubject = np.array(arrays[f"b{b}_rsubject"], np.int32)
                bucket.rkind = np.array(arrays[f"b{b}_rkind"], np.int8)
                if not (
                    len(bucket.rkeys) == len(bucket.ragent) == len(bucket.rsubject) == len(bucket.rkind)
                    and not np.any(bucket.rkeys[1:] < bucket.rkeys[:-1])
                    and np.all((bucket.ragent >= 0) & (bucket.ragent < n))
                    and np.all((bucket.rsubject >= -1) & (bucket.rsubject < n))
                    and np.all((bucket.rkind >= 0) & (bucket.rkind < len(ACTIVITY_KINDS)))
                ):
                    raise ValueError(f"checkpoint bucket {b}'s record index is inconsistent with its {n} DIDs")
            codes = bucket.codes
            if (
                len(codes) != len(bucket.counts)
                or not len(bucket.att) == len(bucket.src) == len(bucket.weight)
                or (len(codes) and (codes[0] < 0 or np.max(codes >> KIND_BITS) >= n or np.any(np.diff(codes) <= 0)))
                or (len(codes) and np.max(codes & KIND_MASK) >= len(ACTIVITY_KINDS))
                or (len(bucket.att) and (min(np.min(bucket.att), np.min(bucket.src)) < 0))
                or (len(bucket.att) and max(np.max(bucket.att), np.max(bucket.src)) >= n)
            ):
                raise ValueError(f"checkpoint bucket {b} is inconsistent with its {n} DIDs")
            state.buckets[b] = bucket
        if "deactivated_offsets" in arrays:  # absent from checkpoints written before deactivations were honoured
            gone = decode_strings(arrays["deactivated_offsets"], arrays["deactivated_blob"])
            times = np.asarray(arrays["deactivated_time_us"], np.int64)
            if len(times) != len(gone) or any(d in state.index for d in gone):
                raise ValueError("checkpoint's deactivated accounts are inconsistent with its state")
            state.decider.deactivated = dict(zip(gone, times.tolist(), strict=True))
        state.events = meta["events"]
        state.last_time_us = meta["last_time_us"]
        state.counters = Counter(meta["counters"])
        try:
            state._wm.restore(arrays["watermark_ring"], meta["watermark"], meta["head"])
        except ValueError as exc:
            raise ValueError(f"checkpoint {exc}") from None
        return state
