"""A partition's shard arrays, kept row by row as events fold, equal a plain recomputation from its store's keys:
bit for bit (the activity sums in the single process's order), at every tick of a hostile stream (deletes, edits,
deactivations, expiries and prunes) and of the bundled archive."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamer.core.state import ACTIVITY_KINDS, StateConfig
from streamer.distributed import partition_state as ps
from streamer.distributed.partition_state import KINDS, SEP, PartitionState
from streamer.distributed.replica import PartitionReplica
from tests.streamer.distributed import test_partitioned_equality as equality


def from_store(state: PartitionState) -> dict[str, Any]:
    """The oracle: the window read from the store's own keys in bucket order, summed in plain Python floats."""
    assert state.config is not None
    weights = [float(state.config.activity_weights.get(k, 0.0)) for k in ACTIVITY_KINDS]
    floor = state.config.edge_floor
    prefix = state.prefix
    keys = [k.split(SEP)[1:] for k in state.store if k.startswith(prefix)]
    first: dict[str, int] = {}
    activity: dict[str, float] = {}
    edges: dict[tuple[str, str], float] = {}

    def seen(did: str, pos: int) -> None:
        first[did] = min(first.get(did, pos), pos)

    for parts in sorted((p for p in keys if p[0] in "ae"), key=lambda p: int(p[1])):  # stable: bucket order
        value = state.store[prefix + SEP.join(parts)]
        if parts[0] == "a":
            seen(parts[2], 2 * value[KINDS])
            total = 0.0
            for c, wk in zip(value[:KINDS], weights, strict=True):
                total += c * wk
            activity[parts[2]] = activity.get(parts[2], 0.0) + total
        else:
            seen(parts[2], 2 * value[1])
            seen(parts[3], 2 * value[1] + 1)
            if value[0] > floor:
                edges[(parts[2], parts[3])] = edges.get((parts[2], parts[3]), 0.0) + float(value[0])
    for parts in (p for p in keys if p[0] == "d"):
        held = state.store[prefix + SEP.join(parts)]
        seen(parts[1], 2 * held[0] + (held[2] if len(held) > 2 else 0))
    dids = sorted(first, key=first.__getitem__)
    rank = {d: i for i, d in enumerate(dids)}
    pairs = sorted((rank[a], rank[s], w) for (a, s), w in edges.items())
    return {
        "dids": dids,
        "first": np.array([first[d] for d in dids], np.int64),
        "x": np.array([activity.get(d, 0.0) for d in dids]),
        "att": np.array([p[0] for p in pairs], np.int64),
        "src": np.array([p[1] for p in pairs], np.int64),
        "w": np.array([p[2] for p in pairs], np.float64),
    }


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every window a partition makes compared with the oracle, and every shard the attributor's copy of the
    partition turns it back into (full, or rebuilt from a delta) compared with the worker's window at that tick;
    the kinds of shard seen."""
    made = ps.PartitionState._window
    made_shard = ps.PartitionState.shard
    applied = PartitionReplica.apply
    windows: dict[tuple[int, int], dict[str, Any]] = {}
    kinds: list[str] = []

    def compared(self: PartitionState) -> Any:
        window = made(self)
        got, want = window.arrays(self._names), from_store(self)
        _same(got, want)
        return window

    def shard(self: PartitionState, tick: Any, partitions: int) -> Any:
        out = made_shard(self, tick, partitions)
        windows[(self.partition, tick.as_of_us)] = self.arrays()
        kinds.append("full" if out.full else "delta")
        return out

    def apply(self: PartitionReplica, shard: Any, offset: int) -> Any:
        out = applied(self, shard, offset)
        if out is not None:
            _same(out.arrays, windows[(shard.partition, shard.as_of_us)])
        return out

    monkeypatch.setattr(ps.PartitionState, "_window", compared)
    monkeypatch.setattr(ps.PartitionState, "shard", shard)
    monkeypatch.setattr(PartitionReplica, "apply", apply)
    return kinds


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert list(got["dids"]) == list(want["dids"])
    for k in ("first", "x", "att", "src", "w"):
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_arrays_equal_the_store_through_a_hostile_stream(checked: list[str], seed: int) -> None:
    equality._both_modes(equality.hostile_stream(seed))
    assert len(checked) > 60 and checked.count("delta") > checked.count("full") > 0


def test_the_arrays_equal_the_store_over_the_bundled_archive(checked: list[str]) -> None:
    from streamer.core.attribution import AttributionConfig
    from streamer.distributed.sequencer import Sequencer

    dist = equality.Partitioned(3, StateConfig(), AttributionConfig(), 1 << 20)
    dist.run(equality.ARCHIVE, Sequencer(StateConfig(), 3600.0))
    assert len(checked) == 3 * 24 and checked.count("delta") > checked.count("full") > 0


class CountingStore(dict):  # type: ignore[type-arg]
    """A store that counts how often it is scanned."""

    scans = 0

    def keys(self) -> Any:
        type(self).scans += 1
        return super().keys()


def test_a_worker_given_many_partitions_reads_its_table_once() -> None:
    """After a rebalance a worker's partitions are rebuilt from one pass over the table (``keys_by_partition``),
    and each is the partition a scan of its own rebuilds."""
    from streamer.core.attribution import AttributionConfig
    from streamer.distributed.partition_state import keys_by_partition
    from streamer.distributed.sequencer import Sequencer, Tick

    dist = equality.Partitioned(4, StateConfig(), AttributionConfig(), 1 << 20)
    dist.run(equality.ARCHIVE, Sequencer(StateConfig(), 3600.0))
    store = CountingStore(dist.store)
    CountingStore.scans = 0
    owned = keys_by_partition(store)
    rebuilt = [PartitionState(p, store, owned.pop(p, [])) for p in range(4)]
    assert CountingStore.scans == 1 and not owned
    tick = Tick(as_of_us=1, final=True)
    for p, state in enumerate(rebuilt):
        scanned = PartitionState(p, dict(dist.store))
        a, b = state.shard(tick, 4), scanned.shard(tick, 4)
        assert a.arrays["dids"] == b.arrays["dids"] and (a.events, a.head) == (b.events, b.head)
        for k in ("first", "x", "att", "src", "w"):
            assert np.array_equal(a.arrays[k], b.arrays[k]), k


def test_shards_merge_alike_when_every_did_hash_collides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The merge numbers DIDs by their string hash and checks each group string for string: with every hash the
    same it falls back to numbering by the strings, and the snapshot is the same."""
    from streamer.core.attribution import AttributionConfig
    from streamer.distributed import shards
    from streamer.distributed.sequencer import Sequencer, Tick

    dist = equality.Partitioned(3, StateConfig(), AttributionConfig(), 1 << 20)
    dist.run(equality.ARCHIVE, Sequencer(StateConfig(), 3600.0))
    parts = [state.shard(Tick(as_of_us=1, final=True), 3) for state in dist.states]
    want = shards.merge(parts, StateConfig())
    monkeypatch.setattr(shards, "hash", lambda did: 7, raising=False)
    got = shards.merge(parts, StateConfig())
    assert got.dids == want.dids and len(set(got.dids)) == len(got.dids) > 1000
    assert np.array_equal(got.x, want.x) and np.array_equal(got.visibility, want.visibility)
    for k in ("attender", "source", "weight"):
        assert np.array_equal(np.asarray(getattr(got.graph, k)), np.asarray(getattr(want.graph, k))), k
