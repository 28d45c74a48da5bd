"""A partition's shard arrays, kept row by row as events fold, equal a plain recomputation from its store's keys:
bit for bit (the activity sums in the single process's order), at every tick of a hostile stream (deletes, edits,
deactivations, expiries and prunes) and of the bundled archive."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamer.core.state import ACTIVITY_KINDS, StateConfig
from streamer.distributed import partition_state as ps
from streamer.distributed.did_numbers import DidNumbers
from streamer.distributed.merge import Part
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
    """Every window a partition makes compared with the oracle, and the window the attributor's copy of the
    partition holds after each shard (full, or a delta applied) compared with the worker's window at that tick;
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

    def apply(self: PartitionReplica, shard: Any, offset: int, numbers: DidNumbers) -> Any:
        moved = applied(self, shard, offset, numbers)
        if moved:
            _same(as_window(self.part(shard), numbers), windows[(shard.partition, shard.as_of_us)])
        return moved

    monkeypatch.setattr(ps.PartitionState, "_window", compared)
    monkeypatch.setattr(ps.PartitionState, "shard", shard)
    monkeypatch.setattr(PartitionReplica, "apply", apply)
    return kinds


def as_window(part: Part, numbers: DidNumbers) -> dict[str, Any]:
    """A copy's part as the worker's window arrays: rows by first position, edges by the ranks of their ends."""
    from streamer.distributed.shards import ID_BITS

    rows = np.argsort(part.first, kind="stable")
    ids = part.ids[rows]
    rank = {int(i): r for r, i in enumerate(ids)}
    att = np.array([rank[int(i)] for i in part.edges >> ID_BITS], np.int64)
    src = np.array([rank[int(i)] for i in part.edges & ((1 << ID_BITS) - 1)], np.int64)
    by_pair = np.lexsort((src, att))
    dids = numbers.names(part.gids[ids])
    return {"dids": dids, "first": part.first[rows], "x": part.x[rows], "att": att[by_pair], "src": src[by_pair],
            "w": part.w[by_pair]}  # fmt: skip


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


def test_snapshots_are_the_same_when_the_did_numbers_are_given_afresh_at_every_full_shard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attributor numbers DIDs with one table across runs and numbers them afresh when the DIDs no copy holds
    pile up: doing so at every full shard (the copies and the parts of runs still held renumbered) changes no
    snapshot, bit for bit, and the table then holds only the DIDs the copies name."""
    from streamer.core.attribution import AttributionConfig
    from streamer.distributed import gather
    from streamer.distributed.merge import merge
    from streamer.distributed.sequencer import Sequencer

    snaps: dict[bool, list[Any]] = {}
    sizes: list[tuple[int, int]] = []
    config = StateConfig(bucket_hours=1.0, buckets=3)  # a window of 3 h over the day's archive: prunes every hour
    for afresh in (False, True):
        if afresh:
            monkeypatch.setattr(DidNumbers, "crowded", lambda self, live: True)
        runs = snaps[afresh] = []
        dist = equality.Partitioned(3, config, AttributionConfig(), 1 << 20)
        dist.gatherer = gatherer = gather.Gatherer(timeout_s=float("inf"), clock=lambda: 0.0)
        given = gatherer.next_ready

        def next_ready(given: Any = given, runs: list[Any] = runs, gatherer: Any = gatherer) -> Any:
            ready = given()
            if ready is not None:
                runs.append(merge(ready.parts, ready.numbers, config))
                named = np.unique(np.concatenate([r.gids[r.gids >= 0] for r in gatherer.replicas.values()]))
                sizes.append((len(gatherer.numbers), len(named)))
            return ready

        gatherer.next_ready = next_ready  # type: ignore[method-assign]
        dist.run(equality.ARCHIVE, Sequencer(config, 3600.0))
    assert len(snaps[False]) == len(snaps[True]) == 24
    for a, b in zip(snaps[False], snaps[True], strict=True):
        assert a.dids == b.dids and (a.events, a.window_start_us, a.window_end_us) == (
            b.events,
            b.window_start_us,
            b.window_end_us,
        )
        for k in ("x", "visibility"):
            assert np.array_equal(getattr(a, k), getattr(b, k)), k
        for k in ("attender", "source", "weight"):
            assert np.array_equal(getattr(a.graph, k), getattr(b.graph, k)), k
    kept, renumbered = sizes[: len(sizes) // 2], sizes[len(sizes) // 2 :]
    assert kept[-1][0] > kept[-1][1], kept  # without: the table holds DIDs no copy names any more
    assert all(held == named for held, named in renumbered), renumbered


def test_did_numbers() -> None:
    """A DID keeps its number; new ones are numbered next, once each; numbered afresh, the DIDs held keep their
    order and the old table is left as it was for a run still merging with it."""
    numbers = DidNumbers()
    assert numbers.numbers(["a", "b", "a"]).tolist() == [0, 1, 0]
    assert numbers.numbers(["c", "b", "d", "c"]).tolist() == [2, 1, 3, 2]
    assert numbers.names(np.array([3, 0, 2])) == ["d", "a", "c"] and len(numbers) == 4
    fresh, new_of = numbers.compacted([np.array([3, -1, 1]), np.array([1])])
    assert new_of.tolist() == [-1, 0, -1, 1] and fresh.names(np.array([0, 1])) == ["b", "d"]
    assert fresh.numbers(["d", "e", "b"]).tolist() == [1, 2, 0]
    assert numbers.names(np.array([0, 1, 2, 3])) == ["a", "b", "c", "d"] and len(numbers) == 4
    big = DidNumbers()
    big.numbers([f"did:{i}" for i in range(5000)])
    assert big.names(np.array([4999, 1024, 0])) == ["did:4999", "did:1024", "did:0"]
