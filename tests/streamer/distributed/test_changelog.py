"""A partition's changelog in coarse units: one record per transaction, read back into the same state.

A partition's real records (the ingest's encoding and numbering of the bundled archive) are folded by the real
:class:`PartitionState` on a :class:`TrackedStore`, a transaction every few records as a worker cuts them; what the
changelog holds, read back into an empty store (from its start, or from its last snapshot only, as after the
records before it were deleted), is the store key for key, and a state built on it makes the same shards.
"""

from __future__ import annotations

import pytest

from streamer.distributed import changelog
from streamer.distributed.partition_state import PartitionState
from tests.streamer.distributed.test_delivery_order import Record, records  # noqa: F401 (a fixture)


def _folded(sent: list[Record], every: int, monkeypatch: pytest.MonkeyPatch, ratio: float) -> tuple[
    changelog.TrackedStore, list[tuple[bytes, bytes]], list[int]
]:  # fmt: skip
    monkeypatch.setattr(changelog, "SNAPSHOT_RATIO", ratio)
    monkeypatch.setattr(changelog, "KEYS_PER_RECORD", 500)
    store, meter = changelog.TrackedStore(), changelog.Meter()
    state = PartitionState(1, store)
    log: list[tuple[bytes, bytes]] = []
    snapshots: list[int] = []
    for start in range(0, len(sent), every):
        for offset in range(start, min(start + every, len(sent))):
            value, headers = sent[offset]
            tick = state.fold(offset, value, headers)
            if tick is not None:  # the worker makes the shard, then marks the tick's turn taken
                state.shard(tick, 4)
                state.published()
        out, snapshot = meter.records(store)
        if snapshot:
            snapshots.append(len(log))
        log.extend(out)
    return store, log, snapshots


def _read_back(log: list[tuple[bytes, bytes]]) -> changelog.TrackedStore:
    store = changelog.TrackedStore()
    for kind, value in log:
        changelog.apply(store, kind, value)
    return store


@pytest.mark.parametrize("every", [1, 37, 1000])
def test_the_changelog_read_back_is_the_state(records: list[Record], every: int, monkeypatch) -> None:  # noqa: F811
    store, log, snapshots = _folded(records, every, monkeypatch, ratio=1e9)
    assert not snapshots and len(log) >= -(-len(records) // every) // 2
    assert _read_back(log).data == store.data and len(store.data) > 100


def test_from_the_last_snapshot_alone_it_is_the_state_too(records: list[Record], monkeypatch) -> None:  # noqa: F811
    store, log, snapshots = _folded(records, 50, monkeypatch, ratio=0.5)
    assert len(snapshots) >= 3, "snapshots were taken"
    assert changelog.kind_of([(changelog.KIND_HEADER, log[snapshots[-1]][0])]) == changelog.RESET
    assert _read_back(log[snapshots[-1] :]).data == store.data
    assert _read_back(log).data == store.data, "and the whole log, snapshots and all"
    again = PartitionState(1, _read_back(log[snapshots[-1] :]))
    assert again.events == PartitionState(1, store).events > 0 and again.buckets == PartitionState(1, store).buckets


def test_a_record_that_is_no_changelog_record_is_named() -> None:
    store = changelog.TrackedStore()
    with pytest.raises(ValueError, match="kind"):
        changelog.apply(store, b"other", changelog.encode({"a": [1]})[0])
    with pytest.raises(ValueError, match="undecodable"):
        changelog.apply(store, changelog.DELTA, b"not zstd")
    changelog.apply(store, changelog.DELTA, changelog.encode({"a": [1], "b": [2]})[0])
    changelog.apply(store, changelog.DELTA, changelog.encode({"a": None})[0])
    assert store.data == {"b": [2]} and not store.changes()
