"""The pure parts under the distributed mode's delivery: re-read records fold once, a tick read again gives no
shard, and the attributor's gatherer hands runs out in order, first copy wins, with a deadline."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamer.core.events import Event
from streamer.distributed import event_records
from streamer.distributed.gather import Complete, Gatherer, Incomplete
from streamer.distributed.partition_state import PartitionState
from streamer.distributed.sequencer import Sequencer, Tick
from streamer.distributed.shards import chunk_meta
from tests.streamer.distributed.test_partition_arrays import as_window

HOUR = 3_600_000_000
A, B, C = (f"did:plc:{c * 24}" for c in "abc")


def _records(n: int = 400) -> list[tuple[bytes, Any]]:
    """A sequenced stream of one partition's records (controls included), as the ingest writes them."""
    seq = Sequencer(interval_s=600.0)
    out = [(event_records.encode_control(seq.config_dict()), event_records.control_headers("t"))]
    kinds = ["like", "repost", "post", "reply", "follow"]
    for i in range(n):
        e = Event(1000 * HOUR + i * 10_000_000, i, kinds[i % 5], [A, B][i % 2], [B, C, A][i % 3])
        verdict = seq.decide(e)
        out += [(event_records.encode_control(c), event_records.control_headers("t")) for c in verdict.controls]
        out.append((event_records.encode(i, 0, e, ordinal=verdict.ordinal)[1], event_records.headers("t")))
    return out


def _fold(state: PartitionState, records: list[tuple[bytes, Any]], start: int = 0) -> list[Tick]:
    ticks = []
    for offset in range(start, len(records)):
        tick = state.fold(offset, *records[offset])
        if tick is not None:
            ticks.append(tick)
    return ticks


def test_records_read_again_after_a_crash_fold_once_and_their_ticks_give_no_shard() -> None:
    records = _records()
    once: dict[str, Any] = {}
    unbroken = PartitionState(0, once)
    ticks = _fold(unbroken, records)
    assert len(ticks) > 5
    again: dict[str, Any] = {}
    state = PartitionState(0, again)
    _fold(state, records[: len(records) // 2])
    # the crash: the table (recovered from the changelog) is ahead of the committed offset, 40 records back
    state = PartitionState(0, again)
    later = _fold(state, records, start=len(records) // 2 - 40)
    assert again == once, "every key as if each record had been folded once"
    assert state.skipped["tick_read_again"] == sum(
        1 for v, _ in records[len(records) // 2 - 40 : len(records) // 2] if b'"tick"' in v
    )
    assert [t for t in ticks if t not in later] == ticks[: len(ticks) - len(later)]
    # the copy in memory a state rebuilt from the table holds is the one folding gave: the same shard
    a, b = state.arrays(), unbroken.arrays()
    assert a["dids"] == b["dids"] and len(a["dids"]) == 3 and len(a["att"]) > 0
    for k in ("first", "x", "att", "src", "w"):
        np.testing.assert_array_equal(a[k], b[k])


def _chunks(state: PartitionState, tick: Tick, partitions: int, chunk: int = 64) -> list[tuple[dict[str, Any], bytes]]:
    return [(chunk_meta(h), v) for v, h in state.shard(tick, partitions).to_chunks(chunk)]


def test_the_gatherer_hands_out_runs_in_order_first_copy_wins_and_gives_up_after_its_deadline() -> None:
    records = _records(300)
    parts = [PartitionState(p, {}) for p in range(2)]
    ticks = [_fold(p, records) for p in parts][1]
    now = [0.0]
    g = Gatherer(timeout_s=10.0, clock=lambda: now[0])
    offset = 0
    starts: dict[tuple[int, int], int] = {}

    def add(p: int, tick: Tick) -> None:
        nonlocal offset
        starts.setdefault((p, tick.as_of_us), offset)
        for meta, value in _chunks(parts[p], tick, 2):
            g.add(offset, meta, value)
            offset += 1

    add(0, ticks[0])  # a partition publishes its runs in order: the older run is seen before the newer completes
    add(0, ticks[1])
    add(1, ticks[1])
    assert g.next_ready() is None, "the older run comes first"
    assert g.low_offset() == 0
    add(0, ticks[0])  # a worker published it again: dropped
    assert g.dropped > 0
    now[0] = 11.0
    first = g.next_ready()
    assert isinstance(first, Incomplete) and first.missing == [1] and first.as_of_us == ticks[0].as_of_us
    second = g.next_ready()
    assert isinstance(second, Complete) and second.as_of_us == ticks[1].as_of_us and len(second.shards) == 2
    got = as_window(second.parts[0], second.numbers)
    assert got["dids"] == parts[0].arrays()["dids"]
    np.testing.assert_array_equal(got["x"], parts[0].shard(ticks[1], 2).arrays["x"])
    # each run handed out names where its shards start, for the position its caller commits until it is published
    assert first.offsets == [starts[(0, ticks[0].as_of_us)]]
    assert sorted(second.offsets) == sorted(starts[(p, ticks[1].as_of_us)] for p in range(2))
    # nothing is pending; a restart reads again from the oldest full shard the partitions' copies were built from,
    # or from the first shard of a run handed out and not committed yet
    assert g.next_ready() is None and g.low_offset() == starts[(0, ticks[1].as_of_us)]
    assert g.low_offset(handed_out=[second]) == starts[(0, ticks[1].as_of_us)]
    assert g.low_offset(handed_out=[first, second]) == starts[(0, ticks[0].as_of_us)] == 0
    add(1, ticks[0])  # too late: that run is given up
    assert not g.runs


def test_records_out_of_place_are_refused_by_name_and_the_partition_goes_on() -> None:
    """A tick or an event before any config record (a topic not written by this ingest), a second config that
    differs, a record of another schema and one that is not JSON: each a ValueError naming it; the state folds
    the next good record as if they had not been there."""
    import pytest

    records = _records(60)
    state = PartitionState(0, {})
    tick = event_records.encode_control(Tick(5)), event_records.control_headers("t")
    with pytest.raises(ValueError, match="before any config"):
        state.fold(0, *tick)
    with pytest.raises(ValueError, match="before any config"):
        state.fold(1, *records[-1])
    state.fold(2, *records[0])
    other = Sequencer(interval_s=60.0).config_dict()
    with pytest.raises(ValueError, match="was filled with configuration"):
        state.fold(3, event_records.encode_control(other), event_records.control_headers("t"))
    with pytest.raises(ValueError, match="has schema 'other/1'"):
        state.fold(4, b"{}", [("skyattr-schema", b"other/1")])
    with pytest.raises(ValueError, match=r"not a skyattr\.event/1 record"):
        state.fold(5, b"\xff not json", event_records.headers("t"))
    good: dict[str, Any] = {}
    _fold(PartitionState(0, good), records)
    for offset, record in enumerate(records[1:], start=6):
        state.fold(offset, *record)
    assert state.events == PartitionState(0, good).events == 60


def test_delta_shards_rebuild_every_window_and_a_restart_reads_back_from_the_oldest_full_one() -> None:
    """A partition's shards (a full one, then deltas) through the topic's encoding: the gatherer hands out, for
    every run, the window of each partition as its copy holds it, bit for bit the worker's; a delta published again
    is dropped; a delta after a gap gives no shard (counted) until the next full one. A gatherer started afresh at
    :meth:`low_offset` with the runs done so far (an attributor's restart) hands out the later runs the same."""
    from streamer.distributed import partition_state

    records = _records(1500)
    part = PartitionState(0, {})
    topic: list[tuple[dict[str, Any], bytes]] = []
    windows: dict[int, dict[str, Any]] = {}
    ticks: list[Tick] = []
    for offset, (value, headers) in enumerate(records):
        tick = part.fold(offset, value, headers)
        if tick is not None:
            shard = part.shard(tick, 1)
            topic += [(chunk_meta(h), v) for v, h in shard.to_chunks(64)]
            part.published()
            windows[tick.as_of_us] = part.arrays()
            ticks.append(tick)
    kinds = [m["base"] < 0 for m, _ in topic if m["chunk"] == 0]
    assert len(ticks) > partition_state.FULL_EVERY and kinds.count(True) >= 2 and kinds.count(False) > kinds.count(True)

    def replayed(g: Gatherer, start: int, stop: int | None = None) -> list[Complete]:
        out = []
        for offset, (meta, value) in enumerate(topic[start:stop], start=start):
            g.add(offset, meta, value)
            while (ready := g.next_ready()) is not None:
                assert isinstance(ready, Complete)
                out.append(ready)
        return out

    def same(runs: list[Complete]) -> None:
        for r in runs:
            got, want = as_window(r.parts[0], r.numbers), windows[r.as_of_us]
            assert got["dids"] == want["dids"]
            for k in ("first", "x", "att", "src", "w"):
                assert np.array_equal(got[k], want[k]), (r.as_of_us, k)

    runs = replayed(Gatherer(timeout_s=10.0, clock=lambda: 0.0), 0)
    assert [r.as_of_us for r in runs] == [t.as_of_us for t in ticks]
    same(runs)
    # an attributor that committed the run 4 before the end (its due time and the gatherer's low offset), killed
    for done_at in range(2, len(ticks) - 1):
        done = ticks[done_at].as_of_us
        cut = 1 + max(i for i, (m, _) in enumerate(topic) if m["as_of_us"] == done)
        before = Gatherer(timeout_s=10.0, clock=lambda: 0.0)
        assert replayed(before, 0, cut)[-1].as_of_us == done
        low = before.low_offset()
        assert low is not None and low <= cut
        again = replayed(Gatherer(done, 10.0, lambda: 0.0), low)
        assert [r.as_of_us for r in again] == [t.as_of_us for t in ticks[done_at + 1 :]], done_at
        same(again)
    # a delta published again is dropped in silence; one after a gap is counted and gives no shard
    g2 = Gatherer(timeout_s=10.0, clock=lambda: 0.0)
    firsts = [i for i, (m, _) in enumerate(topic) if m["chunk"] == 0]
    whole = [topic[a:b] for a, b in zip(firsts, [*firsts[1:], len(topic)], strict=True)]
    for offset, (meta, value) in enumerate([*whole[0], *whole[1], *whole[1], *whole[3]]):
        g2.add(offset, meta, value)
    assert g2.unchained == 1 and sorted(g2.runs) == [ticks[0].as_of_us, ticks[1].as_of_us]
