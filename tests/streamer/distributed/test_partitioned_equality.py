"""The partitioned state adds up to the single process's: sequencer → records → partitions → shards → merge.

No broker here: the records go through their real encodings, partitioned by actor DID, folded by
:class:`PartitionState` on plain dicts, and at every tick the shards (through their chunked encoding) are merged
and attributed with the single process's own functions. The runs must be the runs of ``replay`` on the same
archive: same due times, same agents, edges and events, same tier shares, TVD, r* and top accounts.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.app.replay import replay
from streamer.core.attribution import AttributionConfig, finish, measure
from streamer.core.results import RunResult
from streamer.core.schedule import ScheduleState, accepted
from streamer.core.state import StateConfig
from streamer.distributed import event_records
from streamer.distributed.gather import Complete, Gatherer
from streamer.distributed.merge import merge
from streamer.distributed.partition_state import PartitionState
from streamer.distributed.sequencer import Sequencer, Tick
from streamer.distributed.shards import chunk_meta
from streamer.sources.archive import ArchiveSource
from tests.compare import VOLATILE, assert_close

ARCHIVE = Path(__file__).resolve().parents[3] / "streamer" / "data" / "default.skyarch.zst"


def partition_of(did: str, partitions: int) -> int:
    return zlib.crc32(did.encode()) % partitions


class Partitioned:
    """Ingest, workers and attributor of the distributed mode in one process, on dicts."""

    def __init__(self, partitions: int, config: StateConfig, attribution: AttributionConfig, chunk: int) -> None:
        self.partitions, self.config, self.attribution, self.chunk = partitions, config, attribution, chunk
        self.store: dict[str, Any] = {}  # one table for all partitions, as one worker holding them all has
        self.states = [PartitionState(p, self.store) for p in range(partitions)]
        self.offsets = [0] * partitions
        self.numbering = event_records.Numbering(range(partitions))  # each record's skyattr-seq, as the ingest's
        self.schedule = ScheduleState()
        self.results: list[RunResult] = []
        self.gatherer = Gatherer(timeout_s=float("inf"), clock=lambda: 0.0)
        self.shard_offset = 0

    def send(self, partition: int, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        offset = self.offsets[partition]
        self.offsets[partition] += 1
        tick = self.states[partition].fold(offset, value, self.numbering.headers(partition, headers))
        if tick is not None:
            self.shard(partition, tick)

    def broadcast(self, control: Any) -> None:
        for p in range(self.partitions):
            self.send(p, event_records.encode_control(control), event_records.control_headers("test"))

    def shard(self, partition: int, tick: Tick) -> None:
        """Publish the partition's shard (full or delta) through the topic's encoding to the attributor's gatherer,
        which rebuilds each partition's window from its shards; attribute every run it completes."""
        state = self.states[partition]
        for value, headers in state.shard(tick, self.partitions).to_chunks(self.chunk):
            self.gatherer.add(self.shard_offset, chunk_meta(headers), value)
            self.shard_offset += 1
        state.published()
        while (ready := self.gatherer.next_ready()) is not None:
            assert isinstance(ready, Complete), ready
            snap = merge(ready.parts, ready.numbers, self.config)
            s = self.schedule
            out = finish(
                measure(snap, self.attribution),
                self.attribution,
                run=s.run + 1,
                as_of_us=ready.as_of_us,
                alert_active=s.alert_active,
            )
            if out.result is not None:
                self.schedule = accepted(s, out.alert_active)
                self.results.append(out.result)

    def run(self, path: Path, sequencer: Sequencer) -> None:
        self.broadcast(sequencer.config_dict())
        for item in _items(path):
            for index, event in enumerate(item.events):
                verdict = sequencer.decide(event)
                for control in verdict.controls:
                    self.broadcast(control)
                _, value = event_records.encode(
                    item.source_cursor,
                    index,
                    verdict.recorded(event),
                    ordinal=verdict.ordinal,
                    refused=verdict.reason or "",
                )
                self.send(partition_of(event.actor, self.partitions), value, event_records.headers("test"))
                for control in verdict.after:
                    self.broadcast(control)
        tail = sequencer.finish()
        if tail is not None:
            self.broadcast(tail)


def _items(path: Path) -> list[Any]:
    import asyncio

    async def read() -> list[Any]:
        return [item async for item in ArchiveSource(path)]

    return asyncio.run(read())


@pytest.fixture(scope="module")
def single() -> list[RunResult]:
    out: list[Any] = []
    replay(ARCHIVE, attribution=AttributionConfig(), interval_s=300.0, deliver=out.append)
    return [r for r in out if isinstance(r, RunResult)]


@pytest.mark.parametrize("partitions,chunk", [(1, 1 << 20), (3, 4096)])
def test_partitions_add_up_to_the_single_process(single: list[RunResult], partitions: int, chunk: int) -> None:
    config, attribution = StateConfig(), AttributionConfig()
    dist = Partitioned(partitions, config, attribution, chunk)
    dist.run(ARCHIVE, Sequencer(config, 300.0))
    assert [r.as_of_us for r in dist.results] == [r.as_of_us for r in single]
    for a, b in zip(dist.results, single, strict=True):
        assert (a.agents, a.edges, a.events, a.active_agents) == (b.agents, b.edges, b.events, b.active_agents)
        ma, mb = a.to_message(), b.to_message()
        for k in VOLATILE:
            ma.pop(k), mb.pop(k)
        assert_close(ma, mb, f"run {a.run}")
    assert len(single) == 288 and np.isfinite(single[-1].value)


def _edges(snap: Any) -> tuple[Any, Any, Any]:
    return snap.graph.attender, snap.graph.source, snap.graph.weight


def hostile_stream(seed: int, hours: float = 9.0, per_hour: int = 600) -> list[Any]:
    """Events over several 1-hour buckets: every kind, edits, deletes, self-attention, unstorable DIDs, accounts
    deactivated and reactivated, stragglers from hours back, times from the far future and before the epoch, and a
    jump of the whole stream."""
    from streamer.core.events import KIND_COLLECTION, Event

    rng = np.random.default_rng(seed)
    hour = 3_600_000_000
    dids = [f"did:plc:{i:024d}" for i in range(60)] + ["did:plc:bad\x00did"]
    kinds = ["post", "reply", "quote", "repost", "like", "follow", "profile", "block"]
    events = []
    made: list[tuple[str, str, str, str]] = []  # (actor, subject, collection, rkey) of each create, for deletes
    gone: list[str] = []  # accounts deactivated now
    n = int(hours * per_hour)
    for i in range(n):
        t = int((1000 + hours * i / n) * hour) + (5 * hour if i > n * 0.8 else 0)  # the stream jumps late on
        r = rng.random() if i > 50 else 1.0  # a clean start: warm-up judges nothing (one far-future time there
        # moves the schedule past every later due time, in the single process as here)
        if r < 0.03:
            t -= int(rng.integers(1, 6)) * hour  # a straggler, late once the window has moved past it
        elif r < 0.04:
            t += int(rng.integers(1, 40)) * hour * 24  # a clock far ahead
        elif r < 0.045:
            t = -int(rng.integers(1, 10))
        actor = dids[min(int(rng.pareto(1.2)), 59)] if rng.random() > 0.01 else dids[-1]
        subject = dids[int(rng.integers(0, len(dids)))] if rng.random() > 0.1 else actor
        kind = kinds[int(rng.integers(0, len(kinds)))]
        op = "update" if rng.random() < 0.05 else "create"
        roll = rng.random()
        if roll < 0.05 and made:  # a delete of an earlier record (its create may be late, expired, or deleted)
            events.append(Event(t, i, "delete", *made[int(rng.integers(0, len(made)))], operation="delete"))
            continue
        if roll < 0.056 and i > 50:  # an account deactivated (a busy one), or one reactivated
            active = bool(gone) and rng.random() < 0.5
            who = gone.pop(int(rng.integers(0, len(gone)))) if active else dids[min(int(rng.pareto(1.2)), 59)]
            if not active:
                gone.append(who)
            extra = {"active": True} if active else {"active": False, "status": "deactivated"}
            events.append(Event(t, i, "account", who, extra=extra))
            continue
        collection = KIND_COLLECTION.get(kind, "app.bsky.actor.profile")
        subject = subject if kind not in ("post", "profile") else ""
        events.append(Event(t, i, kind, actor, subject, collection, f"r{i}", operation=op))
        if op == "create":
            made.append((actor, "", collection, f"r{i}"))
    return events


def _both_modes(events: list[Any]) -> tuple[Any, list[str | None], list[tuple[int, Any]], list[tuple[int, Any]]]:
    """``events`` through a single process and through the sequencer and three partitions, on a 2-hour window with a
    run every 10 minutes: the state, the verdicts, and the (due time, snapshot) of every run in each mode."""
    from streamer.core.schedule import interval_us, step
    from streamer.core.state import AgentState

    config = StateConfig(bucket_hours=1.0, buckets=2)
    every = interval_us(600.0)
    state = AgentState(config)
    schedule = ScheduleState()
    single: list[tuple[int, Any]] = []

    def before_fold(t: int) -> None:
        nonlocal schedule
        schedule, due = step(schedule, t, every)
        if due is not None:
            single.append((due, state.snapshot()))

    seq = Sequencer(config, 600.0)
    partitions = 3
    store: dict[str, Any] = {}
    parts = [PartitionState(p, store) for p in range(partitions)]
    offsets = [0] * partitions
    merged: list[tuple[int, Any]] = []

    def send(p: int, value: bytes, headers: Any) -> Tick | None:
        offsets[p] += 1
        return parts[p].fold(offsets[p], value, headers)

    gatherer = Gatherer(timeout_s=float("inf"), clock=lambda: 0.0)
    shard_offset = 0

    def broadcast(control: Any) -> None:
        nonlocal shard_offset
        ticks = [send(p, event_records.encode_control(control), event_records.control_headers("t")) for p in range(3)]
        if ticks[0] is not None:  # each partition's shard (full or delta) through the topic's encoding and the
            for part in parts:  # attributor's copies of the windows
                for value, headers in part.shard(ticks[0], partitions).to_chunks(1 << 20):
                    gatherer.add(shard_offset, chunk_meta(headers), value)
                    shard_offset += 1
                part.published()
            ready = gatherer.next_ready()
            assert isinstance(ready, Complete) and ready.as_of_us == ticks[0].as_of_us, ready
            merged.append((ready.as_of_us, merge(ready.parts, ready.numbers, config)))

    broadcast(seq.config_dict())
    verdicts = []
    for i, event in enumerate(events):
        verdict = seq.decide(event)
        verdicts.append(verdict.reason)
        decision = state.decide(event)
        assert decision.reason == verdict.reason, f"event {i}"
        if decision.reason is None:
            before_fold(event.time_us)
            state.fold(event, decision)
        for control in verdict.controls:
            broadcast(control)
        recorded = verdict.recorded(event)
        _, value = event_records.encode(i, 0, recorded, ordinal=verdict.ordinal, refused=verdict.reason or "")
        send(partition_of(event.actor, partitions), value, event_records.headers("t"))
        for control in verdict.after:
            broadcast(control)
    return state, verdicts, merged, single


def _assert_same_runs(merged: list[tuple[int, Any]], single: list[tuple[int, Any]]) -> None:
    assert [t for t, _ in merged] == [t for t, _ in single]
    for (t, a), (_, b) in zip(merged, single, strict=True):
        assert (a.events, a.window_start_us, a.window_end_us) == (b.events, b.window_start_us, b.window_end_us), t
        # the same accounts; their order (first appearance) can differ once buckets expired: a partition orders
        # an account by its earliest event still in the window, a single process by its first since it was
        # last pruned
        assert sorted(a.dids) == sorted(b.dids), t
        ib = {d: i for i, d in enumerate(b.dids)}
        order = [ib[d] for d in a.dids]
        np.testing.assert_allclose(a.x, b.x[order], err_msg=str(t))
        np.testing.assert_allclose(a.visibility, b.visibility[order], err_msg=str(t))
        if b.graph is None:
            assert a.graph is None
            continue
        ea, eb = ({(s.dids[i], s.dids[j]): w for i, j, w in zip(*_edges(s), strict=True)} for s in (a, b))
        assert ea.keys() == eb.keys(), t
        np.testing.assert_allclose([ea[k] for k in eb], list(eb.values()), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shards_merge_to_the_single_process_snapshot_through_expiry_prunes_and_hostile_times(seed: int) -> None:
    state, verdicts, merged, single = _both_modes(hostile_stream(seed))
    assert {"late", "future_time", "bad_did", "deactivated"} <= set(verdicts), "the stream exercises every refusal"
    assert state.counters["buckets_expired"] > 0 and state.counters["agents_pruned"] > 0
    counted = ("delete_applied", "delete_unmatched", "accounts_deactivated", "accounts_reactivated")
    assert all(state.counters[k] > 5 for k in counted), {k: state.counters[k] for k in counted}
    assert state.counters["deactivated_subject"] > 0
    assert len(single) > 20
    _assert_same_runs(merged, single)


def test_a_bucket_of_edits_only_prunes_alike_in_both_modes() -> None:
    """An hour in which only edits (and deletes of nothing) arrive leaves no trace in the window, so when it leaves
    the window nothing is pruned on its account: the single process held no bucket for it, and the partitions must
    not forget the accounts that only edited in it either."""
    from streamer.core.events import Event

    hour = 3_600_000_000
    writer, editor, reader = ("did:plc:" + c * 24 for c in "wer")
    events: list[Any] = []
    seq = 0
    for h in range(7):
        for k in range(400):
            seq += 1
            t = (1000 + h) * hour + k * hour // 400
            if h == 2:  # the edits-only hour
                events.append(Event(t, seq, "post", editor, "", "app.bsky.feed.post", f"e{k}", operation="update"))
            else:
                events.append(Event(t, seq, "post", writer, "", "app.bsky.feed.post", f"p{seq}", operation="create"))
            if h == 5 and k % 50 == 0:  # an account that only edits, while the edits-only hour leaves the window
                events.append(Event(t, seq, "post", reader, "", "app.bsky.feed.post", f"r{k}", operation="update"))
    state, _, merged, single = _both_modes(events)
    assert state.counters["buckets_expired"] > 0
    assert any(reader in snap.dids for _, snap in single), "the reader was held (without a trace) at some run"
    _assert_same_runs(merged, single)
