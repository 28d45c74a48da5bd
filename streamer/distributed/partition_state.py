"""One partition's share of the rolling state, on a key-value store: what a worker folds and publishes.

The events of an account all land in one partition (the key is the actor's DID), and with them every attention
edge the account draws. So a partition can hold, per time bucket, its actors' activity counters and their
outgoing edges, and the union over partitions is exactly the single process's state. The decisions that need the
whole stream (verdicts, window moves, due times) come made, from :mod:`streamer.distributed.sequencer`.

The store is a mapping from string keys to small JSON-able lists: the worker's
:class:`~streamer.distributed.changelog.TrackedStore` (in memory, its changes in a changelog topic), a dict in tests.
Keys start with the partition number, and the key names what the value is (``\\x1f`` separates the parts: it is not
printable, so no DID holds it):

* ``P a b actor`` → ``[count per activity kind ..., n, off]``: the actor's activity in bucket ``b``;
* ``P e b actor subject`` → ``[weight, n, off]``: the actor's attention to ``subject`` in bucket ``b``;
* ``P d did`` → ``[n, off, role]``: an account held without a trace, at its first appearance (``n``, as actor:
  role 0, or as subject: role 1): an actor whose events left neither activity nor an edge (an edit, a profile
  change, a delete), or the other end of an edge a deactivation removed. A single process holds such an account
  until its next prune;
* ``P r actor collection rkey`` → ``[b, kind, subject, off]``: what the actor's record added (its kind's index in
  ``ACTIVITY_KINDS``, the subject of its edge or ""), for a delete to take back. A delete lowers the counter and
  the edge's weight in bucket ``b`` and drops the ``r`` key; a key brought to zero stays (with its ``n``, which
  orders the DIDs, and its ``off``, which keeps a record read again from folding twice) until the next prune, and
  counts as nothing: a single process holds such an account until then too. The records of a bucket leave with
  it;
* ``P q source`` → ``[seq, off]``: the ``skyattr-seq`` of the last record of ``source`` folded (written after
  what the record changed; for a tick, once its shard is out). Records are folded in that order and no other: one
  numbered ahead of it is left for later (``early``: a record delivered out of order, which the consumer delivers
  again in its turn), one at or below it was folded (``read_again``). Records without a number (an older ingest)
  are folded as they come;
* ``P n`` → ``[events, off]`` accepted events ever, ``P w`` → ``[head, off]`` the window's head,
  ``P g`` → ``[deactivations, off]`` the ``deactivate`` control records applied,
  ``P c`` → the ``config`` control record's contents.

``n`` is the sequencer's ordinal of the event that made the key (the first appearance, which orders the DIDs);
``off`` is the Kafka offset of the last record folded into the key. A record whose offset is not above a key's
``off`` is not folded into it again, so re-reading records after a crash (at-least-once delivery, or a table
recovered from a changelog that ran ahead of the committed offsets) changes nothing it already changed. A
``tick`` read again once the state has moved past it gives no shard (:meth:`changed_after`): its shard was
published before any later record was folded, and one made now would hold events after the tick.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.core.events import DELETE, Event
from streamer.core.state import ACTIVITY_INDEX, ACTIVITY_KINDS, StateConfig
from streamer.distributed import event_records
from streamer.distributed.sequencer import Deactivate, Tick, WindowMove
from streamer.distributed.shards import FULL_EVERY, Shard, rank_of
from streamer.distributed.shards import Window as _Window

SEP = "\x1f"
KINDS = len(ACTIVITY_KINDS)


@dataclass(frozen=True, slots=True)
class _BucketView:
    """One bucket's ``a`` entries (actor ids, first positions, activity totals) and ``e`` entries (attender and
    source ids, first positions, weights), over the partition's interned DIDs."""

    act_ids: np.ndarray
    act_pos: np.ndarray
    act_total: np.ndarray
    att: np.ndarray
    src: np.ndarray
    edge_pos: np.ndarray
    weight: np.ndarray


class _BucketArrays:
    """A bucket's ``a`` and ``e`` entries as growing arrays, a row per key: what :meth:`PartitionState.arrays`
    reads at each tick without a pass in Python over the bucket."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.acts = self.edges = 0
        self.act_ids = np.zeros(16, np.int64)
        self.act_pos = np.zeros(16, np.int64)
        self.counts = np.zeros((16, KINDS), np.int64)
        self.att = np.zeros(16, np.int64)
        self.src = np.zeros(16, np.int64)
        self.edge_pos = np.zeros(16, np.int64)
        self.weight = np.zeros(16)

    def put(self, key: str, parts: tuple[str, ...], value: list[Any], intern: Any) -> None:
        row = self.rows.get(key)
        if len(parts) == 1:
            if row is None:
                row = self.rows[key] = self.acts
                self.acts += 1
                if row == len(self.act_ids):
                    self.act_ids, self.act_pos = np.resize(self.act_ids, 2 * row), np.resize(self.act_pos, 2 * row)
                    self.counts = np.resize(self.counts, (2 * row, KINDS))
                self.act_ids[row] = intern(parts[0])
                self.act_pos[row] = 2 * value[KINDS]
            self.counts[row] = value[:KINDS]
        else:
            if row is None:
                row = self.rows[key] = self.edges
                self.edges += 1
                if row == len(self.att):
                    self.att, self.src, self.edge_pos, self.weight = (
                        np.resize(a, 2 * row) for a in (self.att, self.src, self.edge_pos, self.weight)
                    )
                self.att[row], self.src[row] = intern(parts[0]), intern(parts[1])
                self.edge_pos[row] = 2 * value[1]
            self.weight[row] = float(value[0])

    def view(self, weights: list[float]) -> _BucketView:
        """The rows, with each actor's activity total: count times weight added kind by kind, in float64 (the
        single process's sum, in its order)."""
        n, m = self.acts, self.edges
        total = np.zeros(n)
        for k, wk in enumerate(weights):
            total += self.counts[:n, k] * wk
        return _BucketView(self.act_ids[:n], self.act_pos[:n], total, self.att[:m], self.src[:m],
                           self.edge_pos[:m], self.weight[:m])  # fmt: skip


@dataclass(frozen=True)
class _Shipped:
    """The last shard published: its due time, the DIDs' interning it used, deltas since a full one, its window."""

    as_of_us: int
    generation: int
    deltas: int
    window: _Window


class PartitionState:
    """See the module doc. ``config`` is taken from the store when the partition has one (the ``config`` control
    record, see :meth:`configure`)."""

    def __init__(self, partition: int, store: MutableMapping[str, Any], keys: Iterable[str] | None = None) -> None:
        self.partition = partition
        self.store = store
        self.prefix = f"{partition}{SEP}"
        self.config: StateConfig | None = None
        # The a and e keys of each bucket, with their parsed parts and values: a copy in memory of what this
        # partition holds in the store (only this object writes those keys), so folding reads no store value and
        # a shard parses no key; rebuilt from the store after a recovery.
        self._by_bucket: dict[int, dict[str, tuple[tuple[str, ...], list[Any]]]] = {}
        self._dangling: dict[str, tuple[str, int]] = {}  # d key -> (DID, position 2 n + role)
        self._records: dict[int, dict[str, tuple[int, int, str]]] = {}  # bucket -> r key -> (bucket, kind, subject)
        self._record_bucket: dict[str, int] = {}  # r key -> its bucket
        # each bucket's a and e entries as arrays, kept until the bucket changes (see arrays()), over DIDs interned
        # here (ids in self._names, forgotten at a prune)
        self._arrays: dict[int, _BucketArrays] = {}
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._generation = 0
        # the window this object published last (a delta is taken against it) and the ids whose DIDs it named
        self._shipped: _Shipped | None = None
        self._pending: _Shipped | None = None
        self._known = np.zeros(0, bool)
        self.skipped: Counter[str] = Counter()  # records not folded, by reason (this process's, not durable)
        self._tick_turn: tuple[str, list[int]] | None = None  # the P q mark of a tick whose shard is not out yet
        self._rebuild(keys)

    # the keys --------------------------------------------------------------------------------------------------
    def _key(self, *parts: object) -> str:
        return self.prefix + SEP.join(map(str, parts))

    def _own_keys(self) -> Iterator[str]:
        prefix = self.prefix
        return (k for k in list(self.store.keys()) if isinstance(k, str) and k.startswith(prefix))

    def _rebuild(self, keys: Iterable[str] | None = None) -> None:
        """The in-memory index of the partition's keys, from the store (after a recovery); ``keys``: the
        partition's keys when the caller has them (:func:`keys_by_partition`), else the store is scanned."""
        self._by_bucket.clear()
        self._dangling.clear()
        self._records.clear()
        self._record_bucket.clear()
        self._forget_arrays()
        for key in self._own_keys() if keys is None else keys:
            parts = key.split(SEP)
            if parts[1] in ("a", "e"):
                self._by_bucket.setdefault(int(parts[2]), {})[key] = (tuple(parts[3:]), list(self.store[key]))
            elif parts[1] == "d":
                held = self.store[key]
                self._dangling[key] = (parts[2], 2 * int(held[0]) + (int(held[2]) if len(held) > 2 else 0))
            elif parts[1] == "r":
                b, k, subject = self.store[key][:3]
                self._remember(key, int(b), int(k), str(subject))
        cfg = self.store.get(self._key("c"))
        if cfg is not None:
            self._adopt(cfg)

    def _adopt(self, cfg: dict[str, Any]) -> None:
        self.config = StateConfig(**cfg["state"])
        self._act = self.config.activity_codes()
        self._att = self.config.attention()
        self._bucket_us = self.config.bucket_us
        self._edge_floor = self.config.edge_floor  # no live edge is lighter (as in the state)

    # folding ---------------------------------------------------------------------------------------------------
    def fold(self, offset: int, value: bytes, headers: Any) -> Tick | None:
        """One record of ``skyattr.events`` at ``offset``, in its turn (``P q``, see the module doc): an event is
        folded in (a refused one counted), a control record applied; a ``tick`` is returned, for the caller to
        publish :meth:`shard` (its turn is marked taken at :meth:`published`). ``ValueError`` names a record that
        is neither (its turn is taken: it is done with)."""
        turn = event_records.turn_of(headers)
        if turn is None:
            return self._fold(offset, value, headers)
        key = self._key("q", turn[0])
        held = self.store.get(key)
        if held is not None and turn[1] <= held[0]:
            self.skipped["read_again"] += 1
            return None
        if held is not None and turn[1] > held[0] + 1:
            self.skipped["early"] += 1
            return None
        try:
            tick = self._fold(offset, value, headers)
        except ValueError:
            self.store[key] = [turn[1], offset]
            raise
        if tick is None:
            self.store[key] = [turn[1], offset]
        else:
            self._tick_turn = (key, [turn[1], offset])
        return tick

    def _fold(self, offset: int, value: bytes, headers: Any) -> Tick | None:
        schema = event_records.schema_of(headers)
        if schema == event_records.CONTROL_SCHEMA:
            control = event_records.decode_control(value)
            if isinstance(control, Tick):
                if self.config is None:
                    raise ValueError(f"partition {self.partition}: a tick at offset {offset} before any config record")
                if self.changed_after(offset):  # read again after a crash: the shard went out before the state
                    self.skipped["tick_read_again"] += 1  # moved on, and the state now is not the tick's
                    return None
                return control
            if isinstance(control, WindowMove):
                self.move(offset, control)
            elif isinstance(control, Deactivate):
                self.deactivate(offset, control.did)
            else:
                self.configure(control)
            return None
        if schema not in (event_records.SCHEMA, ""):
            raise ValueError(f"record at offset {offset} of partition {self.partition} has schema {schema!r}")
        record = event_records.decode(value)
        if record.refused:
            self.skipped[record.refused] += 1
        elif record.ordinal < 0:
            self.skipped["unsequenced"] += 1  # written by an ingest without a sequencer: nothing to fold it by
        else:
            self.apply(offset, record.ordinal, record.event)
        return None

    def configure(self, cfg: dict[str, Any]) -> None:
        """The ``config`` control record: the window and weights the sequencer decided with. A partition keeps
        the first it got; another one later is refused (``ValueError``), as a single process refuses to resume a
        checkpoint with other options."""
        key = self._key("c")
        held = self.store.get(key)
        if held is None:
            self.store[key] = cfg
            self._adopt(cfg)
        elif held != cfg:
            raise ValueError(
                f"partition {self.partition} was filled with configuration {held}; its events topic now says {cfg}"
            )

    def apply(self, offset: int, ordinal: int, event: Event) -> None:
        """Fold one accepted event (record ``offset``, sequencer ordinal ``ordinal``)."""
        if self.config is None:
            raise ValueError(f"partition {self.partition}: an event before any config control record")
        store = self.store
        key = self._key("n")
        held = store.get(key)
        if held is None or offset > held[1]:
            store[key] = [(held[0] if held else 0) + 1, offset]
        actor = event.actor
        if event.operation == "update":  # an edit: no activity, no attention, the account held
            self._dangle(actor, ordinal, offset)
            return
        if event.kind == DELETE:
            self._take_back(offset, self._key("r", actor, event.collection, event.rkey))
            self._dangle(actor, ordinal, offset)
            return
        b = event.time_us // self._bucket_us
        left_trace = False
        code = self._act.get(event.kind)
        bucket = self._by_bucket.get(b)
        if bucket is None:
            bucket = self._by_bucket[b] = {}
        if code is not None:
            key = self._key("a", b, actor)
            entry = bucket.get(key)
            if entry is None:
                counts = [0] * KINDS
                counts[code] = 1
                self._put(b, key, (actor,), [*counts, ordinal, offset])
            elif offset > entry[1][-1]:
                value = list(entry[1])
                value[code] += 1
                value[-1] = offset
                self._put(b, key, entry[0], value)
            left_trace = True
        w = self._att.get(event.kind)
        subject = event.subject
        if w is not None and subject and subject != actor:
            key = self._key("e", b, actor, subject)
            entry = bucket.get(key)
            if entry is None:
                self._put(b, key, (actor, subject), [w, ordinal, offset])
            elif offset > entry[1][2]:
                held = entry[1]
                self._put(b, key, entry[0], [held[0] + w, held[1], offset])
            left_trace = True
        if not left_trace:
            self._dangle(actor, ordinal, offset)
        elif event.rkey:  # what a delete of it must take back
            key = self._key("r", actor, event.collection, event.rkey)
            edge = subject if w is not None and subject and subject != actor else ""
            if key not in self._record_bucket:
                store[key] = [b, ACTIVITY_INDEX[event.kind], edge, offset]
                self._remember(key, b, ACTIVITY_INDEX[event.kind], edge)

    def _put(self, b: int, key: str, parts: tuple[str, ...], value: list[Any]) -> None:
        """Write an ``a`` or ``e`` key of bucket ``b``: to the store, its copy in memory and, when the bucket's
        arrays are made, their row (see :meth:`arrays`)."""
        self.store[key] = value
        self._by_bucket[b][key] = (parts, value)
        arrays = self._arrays.get(b)
        if arrays is not None:
            arrays.put(key, parts, value, self._id)

    def _remember(self, key: str, b: int, k: int, subject: str) -> None:
        self._records.setdefault(b, {})[key] = (b, k, subject)
        self._record_bucket[key] = b

    def _take_back(self, offset: int, key: str) -> None:
        """A delete of the record ``key``: lower what its create raised (each key once per offset, so a delete
        read again changes nothing), then forget the record."""
        b = self._record_bucket.pop(key, None)
        if b is None:  # not in the window, or added nothing
            return
        _, k, subject = self._records[b].pop(key)
        kind = ACTIVITY_KINDS[k]
        bucket = self._by_bucket.get(b, {})
        actor = key.split(SEP)[2]
        code = self._act.get(kind)
        akey = self._key("a", b, actor)
        if code is not None and (entry := bucket.get(akey)) is not None and offset > entry[1][-1]:
            value = list(entry[1])
            value[code] -= 1
            value[-1] = offset
            self._put(b, akey, entry[0], value)
        ekey = self._key("e", b, actor, subject)
        if subject and (entry := bucket.get(ekey)) is not None and offset > entry[1][2]:
            self._put(b, ekey, entry[0], [entry[1][0] - self._att[kind], entry[1][1], offset])
        self.store.pop(key, None)

    def _dangle(self, did: str, ordinal: int, offset: int, role: int = 0) -> None:
        """Hold ``did`` without a trace, at its first appearance (ordinal ``ordinal``, as actor: role 0, or as
        subject: role 1) until the next prune."""
        key = self._key("d", did)
        held = self._dangling.get(key)
        if held is None or 2 * ordinal + role < held[1]:
            self.store[key] = [ordinal, offset, role]
            self._dangling[key] = (did, 2 * ordinal + role)

    def move(self, offset: int, moved: WindowMove) -> None:
        """The ``window`` control record: drop the buckets that left the window (and, on a prune, the accounts
        held without a trace)."""
        store = self.store
        key = self._key("w")
        held = store.get(key)
        if held is None or offset > held[1]:
            store[key] = [moved.head, offset]
        for b in sorted(set(self._by_bucket) | set(self._records)):
            if b < moved.oldest or (moved.drop_beyond is not None and b > moved.drop_beyond):
                self._arrays.pop(b, None)
                for k in self._by_bucket.pop(b, {}):
                    store.pop(k, None)  # (iterating a dict yields its keys: the store keys)
                for k in self._records.pop(b, {}):
                    store.pop(k, None)
                    del self._record_bucket[k]
        if moved.prune:
            self._forget_arrays()  # the DIDs interned for the arrays go too: held since the last prune at most
            for k in self._dangling:
                store.pop(k, None)
            self._dangling.clear()
            for entries in self._by_bucket.values():  # keys deletes brought to zero: no trace, so pruned
                for k in [k for k, (parts, value) in entries.items() if not self._live(parts, value)]:
                    del entries[k]
                    store.pop(k, None)

    def _live(self, parts: tuple[str, ...], value: list[Any]) -> bool:
        """Whether an ``a`` or ``e`` key still holds activity or an edge (a delete may have brought it to zero)."""
        return any(value[:KINDS]) if len(parts) == 1 else value[0] > self._edge_floor

    def deactivate(self, offset: int, did: str) -> None:
        """The ``deactivate`` control record: drop everything ``did`` did in this partition and every edge towards
        it (see :mod:`streamer.distributed.sequencer`), as a single process does at the deactivating event; records
        towards it keep their activity only, so a later delete takes back no edge. One pass over the partition's
        window in memory: deactivations are rare next to events. ``P g`` → ``[count, off]`` marks it done."""
        store, key = self.store, self._key("g")
        held = store.get(key)
        if held is not None and offset <= held[1]:  # read again after a crash: done already
            return
        store[key] = [(held[0] if held else 0) + 1, offset]
        self._arrays.clear()
        for entries in self._by_bucket.values():
            for k in [k for k, (parts, _) in entries.items() if did in parts]:
                parts, value = entries.pop(k)
                store.pop(k, None)
                if len(parts) == 2:  # the other end stays, without a trace, until the next prune (as it does in a
                    other = 1 if parts[0] == did else 0  # single process, which interned it)
                    self._dangle(parts[other], int(value[1]), offset, other)
        dkey = self._key("d", did)
        if self._dangling.pop(dkey, None) is not None:
            store.pop(dkey, None)
        for records in self._records.values():
            for k, (b, kind, subject) in list(records.items()):
                if k.split(SEP)[2] == did:
                    del records[k]
                    del self._record_bucket[k]
                    store.pop(k, None)
                elif subject == did:
                    records[k] = (b, kind, "")
                    store[k] = [b, kind, "", offset]

    # reading ---------------------------------------------------------------------------------------------------
    def changed_after(self, offset: int) -> bool:
        """Whether a record after ``offset`` changed the state already (accepted events move ``P n``, window
        moves ``P w``, deactivations ``P g``; nothing else changes it): then a record at ``offset`` is being read
        again."""
        marks = (self.store.get(self._key(k)) for k in ("n", "w", "g"))
        return max(m[1] if m else -1 for m in marks) > offset

    @property
    def events(self) -> int:
        held = self.store.get(self._key("n"))
        return int(held[0]) if held else 0

    @property
    def head(self) -> int:
        held = self.store.get(self._key("w"))
        return int(held[0]) if held else -1

    @property
    def buckets(self) -> list[int]:
        return sorted(b for b, entries in self._by_bucket.items() if entries)

    def _forget_arrays(self) -> None:
        self._arrays.clear()
        self._ids.clear()
        self._names.clear()
        self._generation += 1  # ids mean other DIDs from here: the next shard is a full one

    def _id(self, did: str) -> int:
        i = self._ids.get(did)
        if i is None:
            i = self._ids[did] = len(self._names)
            self._names.append(did)
        return i

    def _bucket_arrays(self, b: int) -> _BucketArrays:
        """Bucket ``b``'s entries as arrays over interned DIDs, made from the copy in memory when they are not
        made yet (after a recovery, a prune or a deactivation) and kept row by row from then on (:meth:`_put`): a
        tick reads what changed since the last, not the whole window in Python."""
        held = self._arrays.get(b)
        if held is None:
            held = self._arrays[b] = _BucketArrays()
            for key, (parts, value) in self._by_bucket.get(b, {}).items():
                held.put(key, parts, value, self._id)
        return held

    def _window(self) -> _Window:
        """The partition's window over its interned DIDs (see :meth:`arrays`), rows and edges in shard order."""
        assert self.config is not None
        weights = [float(self.config.activity_weights.get(k, 0.0)) for k in ACTIVITY_KINDS]
        parts = [self._bucket_arrays(b).view(weights) for b in sorted(self._by_bucket) if self._by_bucket[b]]
        dangling = [(self._id(did), pos) for did, pos in self._dangling.values()]
        n = len(self._names)
        never = np.iinfo(np.int64).max
        first = np.full(n, never, np.int64)
        x = np.zeros(n)
        for p in parts:
            np.minimum.at(first, p.act_ids, p.act_pos)
            np.add.at(x, p.act_ids, p.act_total)
            np.minimum.at(first, p.att, p.edge_pos)
            np.minimum.at(first, p.src, p.edge_pos + 1)
        if dangling:
            held_ids, held_pos = np.array(dangling, np.int64).T
            np.minimum.at(first, held_ids, held_pos)
        floor = self._edge_floor
        live = [p.weight > floor for p in parts]  # an edge deletes brought to zero is no edge
        att = np.concatenate([p.att[m] for p, m in zip(parts, live, strict=True)] or [np.zeros(0, np.int64)])
        src = np.concatenate([p.src[m] for p, m in zip(parts, live, strict=True)] or [np.zeros(0, np.int64)])
        w = np.concatenate([p.weight[m] for p, m in zip(parts, live, strict=True)] or [np.zeros(0)])
        pairs, where = np.unique(att * max(n, 1) + src, return_inverse=True)
        summed = np.zeros(len(pairs))
        np.add.at(summed, where.reshape(-1), w)  # bucket by bucket, as the single process adds them
        present = np.flatnonzero(first != never)
        order = present[np.argsort(first[present], kind="stable")]  # unique positions: one DID, one first
        rank = rank_of(order)
        att_ids, src_ids = pairs // max(n, 1), pairs % max(n, 1)
        by_pair = np.lexsort((rank[src_ids], rank[att_ids]))
        return _Window(order, first[order], x[order], att_ids[by_pair], src_ids[by_pair], summed[by_pair])

    def arrays(self) -> dict[str, Any]:
        """The partition's window as arrays: DIDs with the position of their first appearance (``2 n + role``,
        role 0 as actor, 1 as subject: a single process interns the actor of an event before its subject), each
        DID's activity, and the attention edges summed over the buckets, sorted by (attender, source). Each
        bucket's arrays are kept until it changes (:meth:`_bucket_arrays`); they are put together in bucket order
        by numpy's unbuffered ``add.at`` (in the order given: the single process's sums, term for term) and
        ``minimum.at``."""
        return self._window().arrays(self._names)

    def shard(self, tick: Tick, partitions: int) -> Shard:
        """The partition's shard for ``tick`` (the state as it stands at the tick's record): the whole window,
        or what changed since the shard this object published last (see :mod:`streamer.distributed.shards`). A
        full one when there is no earlier one to be relative to (a worker's first tick of the partition, after a
        restart or a rebalance), when the DIDs were interned afresh (a prune), and every :data:`FULL_EVERY`
        ticks, so an attributor that restarts reads back a bounded stretch of the shards topic. The caller says
        when the broker has it (:meth:`published`)."""
        buckets = self.buckets
        window = self._window()
        shipped = self._shipped
        full = shipped is None or shipped.generation != self._generation or shipped.deltas + 1 >= FULL_EVERY
        n = len(self._names)
        if full:
            self._known = np.zeros(n, bool)  # ids whose DIDs the attributor was told, since this full shard
        elif len(self._known) < n:
            self._known = np.concatenate([self._known, np.zeros(n - len(self._known), bool)])
        if full:
            arrays, base = window.full(self._names), -1
        else:
            assert shipped is not None
            arrays, base = window.delta(shipped.window, self._names, self._known), shipped.as_of_us
        self._known[window.ids] = True
        deltas = 0 if full or shipped is None else shipped.deltas + 1
        # the base of the next delta once the broker has this one (:meth:`published`); until then none, so a shard
        # that may or may not have reached the attributor is followed by a full one
        self._shipped, self._pending = None, _Shipped(tick.as_of_us, self._generation, deltas, window)
        return Shard(
            as_of_us=tick.as_of_us,
            final=tick.final,
            partition=self.partition,
            partitions=partitions,
            events=self.events,
            head=self.head,
            newest_bucket=buckets[-1] if buckets else -1,
            arrays=arrays,
            config=dict(self.store[self._key("c")]),
            base=base,
        )

    def published(self) -> None:
        """The shard :meth:`shard` made last is acknowledged by the broker: the next may be relative to it, and
        the tick's turn is taken."""
        self._shipped, self._pending = self._pending, None
        if self._tick_turn is not None:
            key, mark = self._tick_turn
            self.store[key] = mark
            self._tick_turn = None


def keys_by_partition(store: MutableMapping[str, Any]) -> dict[int, list[str]]:
    """Every key of a table holding several partitions, grouped by partition in one pass: a worker given many
    partitions after a rebalance reads its table once, not once per partition."""
    out: dict[int, list[str]] = {}
    for key in list(store.keys()):
        if isinstance(key, str):
            head, sep, _ = key.partition(SEP)
            if sep and head.isdigit():
                out.setdefault(int(head), []).append(key)
    return out
