"""Attribution overlapped with ingest, and the cheap parts of a run: the same results, in order, nothing lost.

The event-time pipeline freezes the state at each due time and builds the snapshot and runs the kernels in a
worker thread while ingest goes on. These tests hold it to what the sequential pipeline gave: every snapshot
equal to a full compaction of the window (bit for bit, whatever the bucket layout), the results of any number of
runs in flight equal to one at a time, ingest moving while a run computes, and no checkpoint written while a due
run is undelivered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from streamer.core.attribution import AttributionConfig, top_indices
from streamer.core.dispatch import SequentialDispatcher
from streamer.core.pipeline import Pipeline
from streamer.core.state import AgentState, FrozenState, StateConfig, _compact
from streamer.sources.archive import ArchiveSource
from streamer.testing.synth import default_archive
from tests.compare import VOLATILE, assert_close


async def _replay(ahead: int, config: StateConfig | None = None) -> tuple[list[Any], Pipeline]:
    source = ArchiveSource(default_archive())
    dispatcher = SequentialDispatcher(AgentState(config), source.stats)
    results: list[Any] = []
    config = AttributionConfig(nodes=8, panel_size=10)  # a panel that holds under half the attribution: alerts
    pipe = Pipeline(dispatcher, config, 1800, results.append, clock="event", ahead=ahead)
    ended = await pipe.run(source)
    assert not ended.interrupted
    return results, pipe


def _messages(results: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.to_message().items() if k not in VOLATILE} for r in results]


def test_runs_in_flight_give_the_results_of_one_at_a_time() -> None:
    one, _ = asyncio.run(_replay(ahead=1))
    four, _ = asyncio.run(_replay(ahead=4))
    assert [(r.topic, r.run) for r in four] == [(r.topic, r.run) for r in one], "the same messages in the same order"
    runs = [r for r in four if r.topic == "tiers"]
    assert [r.run for r in runs] == list(range(1, len(runs) + 1)) and len(runs) >= 40, "numbered in due order"
    assert any(r.topic == "alerts" for r in one), "the archive moves the alert"
    for a, b in zip(_messages(four), _messages(one), strict=True):
        assert_close(a, b)


def test_ingest_goes_on_while_a_run_computes() -> None:
    delivered_at: list[int] = []

    async def watch() -> None:
        source = ArchiveSource(default_archive())
        dispatcher = SequentialDispatcher(AgentState(), source.stats)
        pipe = Pipeline(
            dispatcher,
            AttributionConfig(nodes=8),
            1800,
            lambda r: delivered_at.append(dispatcher.state.events - r.events) if r.topic == "tiers" else None,
            clock="event",
            ahead=2,
        )
        measure = pipe._measure

        def slow(frozen: FrozenState) -> Any:
            time.sleep(0.05)
            return measure(frozen)

        pipe._measure = slow  # type: ignore[method-assign]
        await pipe.run(source)

    asyncio.run(watch())
    # sequentially only the event that made the run due is applied before its result; here ingest ran on
    assert max(delivered_at) > 50, "events were applied after a run's due time and before its result"


def test_no_checkpoint_while_a_due_run_is_undelivered() -> None:
    delivered: list[Any] = []
    checks: list[tuple[int, int]] = []
    pipe_box: list[Pipeline] = []

    async def checkpoint() -> None:
        pipe = pipe_box[0]
        assert not pipe._due and not pipe._flight, "a checkpoint with a run in flight"
        checks.append((pipe.schedule.run, sum(r.topic == "tiers" for r in delivered)))

    async def run() -> None:
        source = ArchiveSource(default_archive())
        dispatcher = SequentialDispatcher(AgentState(), source.stats)
        pipe = Pipeline(dispatcher, AttributionConfig(nodes=8), 1800, delivered.append, clock="event", ahead=3)
        pipe_box.append(pipe)
        await pipe.run(source, checkpoint=checkpoint, checkpoint_every_s=1e9, checkpoint_every_items=500)

    asyncio.run(run())
    assert len(checks) >= 20
    assert all(run == n for run, n in checks), "every run numbered before a checkpoint was delivered before it"


@pytest.mark.parametrize("hours,buckets", [(24.0, 14), (1.0, 14), (0.25, 30)])
def test_every_snapshot_equals_a_full_compaction(hours: float, buckets: int, monkeypatch: Any) -> None:
    compared = [0]
    lock = threading.Lock()
    snapshot = FrozenState.snapshot

    def checked(self: FrozenState) -> Any:
        snap = snapshot(self)
        if snap.graph is not None:
            att, src, w = _compact(*(np.concatenate([b[i] for b in self.buckets]) for i in (2, 3, 4)))
            assert np.array_equal(snap.graph.attender, att) and np.array_equal(snap.graph.source, src)
            assert np.array_equal(snap.graph.weight, w.astype(np.float64)), "weights bit for bit"
            with lock:
                compared[0] += 1
        return snap

    monkeypatch.setattr(FrozenState, "snapshot", checked)
    results, _ = asyncio.run(_replay(ahead=2, config=StateConfig(bucket_hours=hours, buckets=buckets)))
    assert compared[0] == sum(r.topic == "tiers" for r in results) >= 40


def test_top_indices_is_the_lexsort_order() -> None:
    rng = np.random.default_rng(7)
    for _ in range(3000):
        n, k = int(rng.integers(0, 80)), int(rng.integers(-1, 90))
        phi = rng.integers(0, 4, n).astype(float) if rng.random() < 0.5 else rng.random(n)
        want = np.lexsort((np.arange(n), -phi))[: max(k, 0)] if n else np.zeros(0, np.int64)
        assert np.array_equal(top_indices(phi, k), want), (phi, k)
