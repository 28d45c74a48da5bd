"""A worker folds each partition in the order its records were written, whatever order they are delivered in.

Seen in CI: after a rebalance faust-streaming delivered a record it had fetched before it (offset 277) ahead of
the seek to the committed offset (182), and the partition's event counter lost four events for every later run
(agents, edges and shares were right: only ``P n`` is moved by every record). Each record now carries its number
in its partition (``skyattr-seq``) and a partition is folded in that order only. The delivery is replayed here on
the partition's real records (the ingest's encoding and numbering), folded by the real :class:`PartitionState`
on a dict as the worker's table.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamer.core.attribution import AttributionConfig
from streamer.core.state import StateConfig
from streamer.distributed import event_records
from streamer.distributed.partition_state import PartitionState
from streamer.distributed.sequencer import Sequencer
from tests.streamer.distributed.test_partitioned_equality import ARCHIVE, Partitioned

Record = tuple[bytes, list[tuple[str, bytes]]]


class Recorded(Partitioned):
    """The records the ingest writes (numbered), per partition, instead of folding them."""

    def __init__(self, partitions: int) -> None:
        super().__init__(partitions, StateConfig(), AttributionConfig(nodes=4), 1 << 20)
        self.sent: list[list[Record]] = [[] for _ in range(partitions)]

    def send(self, partition: int, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.sent[partition].append((value, self.numbering.headers(partition, headers)))


@pytest.fixture(scope="module")
def records() -> list[Record]:
    ingest = Recorded(4)
    ingest.run(ARCHIVE, Sequencer(StateConfig(), 3600.0))
    return ingest.sent[1]


def _fold(state: PartitionState, records: list[Record], offsets: Any, unnumbered: bool = False) -> None:
    for offset in offsets:
        value, headers = records[offset]
        if unnumbered:
            headers = [h for h in headers if h[0] != event_records.SEQ_HEADER]
        if state.fold(offset, value, headers) is not None:
            state.published()


def _rebalanced(records: list[Record], unnumbered: bool = False) -> tuple[PartitionState, dict[str, Any]]:
    """Folded to ``folded``, then a rebalance that gives the partition back: four records fetched before it are
    delivered first, then the seek to the committed offset (``committed``, behind what the table holds) delivers
    everything from there on."""
    n = len(records)
    folded, committed = n // 2, n // 2 - 120
    store: dict[str, Any] = {}
    _fold(PartitionState(1, store), records, range(folded), unnumbered)
    state = PartitionState(1, store)  # rebuilt from the table, as after every assignment
    _fold(state, records, [folded + 30, folded + 31, folded + 32, folded + 33], unnumbered)  # fetched before
    _fold(state, records, range(committed, n), unnumbered)
    return state, store


def test_records_delivered_ahead_of_their_turn_are_folded_in_it(records: list[Record]) -> None:
    reference = PartitionState(1, {})
    _fold(reference, records, range(len(records)))
    assert reference.events > 1000

    unnumbered, _ = _rebalanced(records, unnumbered=True)
    assert unnumbered.events < reference.events, "folded as delivered, this delivery loses events"

    state, store = _rebalanced(records)
    assert state.skipped["early"] == 4 and state.skipped["read_again"] > 100
    assert state.events == reference.events
    assert store == reference.store


def test_a_tick_is_taken_once_its_shard_is_out(records: list[Record]) -> None:
    """A worker stopped between a tick and its shard's acknowledgement reads the tick again and publishes it; one
    stopped after it does not."""
    ticks = [i for i, (_, h) in enumerate(records) if event_records.schema_of(h) == event_records.CONTROL_SCHEMA
             and b'"tick"' in records[i][0]]  # fmt: skip
    at = ticks[3]
    store: dict[str, Any] = {}
    state = PartitionState(1, store)
    _fold(state, records, range(at))
    value, headers = records[at]
    assert state.fold(at, value, headers) is not None  # the shard is made, never acknowledged: the worker stops
    again = PartitionState(1, store)
    assert again.fold(at, value, headers) is not None
    again.published()
    assert PartitionState(1, store).fold(at, value, headers) is None
