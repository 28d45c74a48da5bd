"""Rolling agent state: interning, event-time window, activity, attention, budget, snapshots and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.checkpoint import load_checkpoint, save_checkpoint
from streamer.events import Event
from streamer.state import AgentState, StateConfig

HOUR = 3_600_000_000
A, B, C, D = (f"did:plc:{c * 24}" for c in "abcd")


def ev(hour: float, kind: str, actor: str, subject: str = "", seq: int = 0) -> Event:
    return Event(int(hour * HOUR), seq, kind, actor, subject)


def _state(**kw) -> AgentState:
    return AgentState(StateConfig(bucket_hours=1.0, buckets=3, **kw))


def test_activity_attention_and_visibility_by_hand() -> None:
    s = _state()
    for e in [
        ev(0.1, "post", A),
        ev(0.2, "like", B, A),
        ev(0.3, "like", B, A),  # duplicate pair: weights add up
        ev(0.4, "repost", C, A),
        ev(0.5, "reply", C, B),
        ev(0.6, "follow", D, A),
        ev(0.7, "profile", D),
        ev(0.8, "like", A, A),  # self-attention: activity, no edge
    ]:
        assert s.apply(e)
    snap = s.snapshot()
    assert snap.dids == [A, B, C, D], "interned in order of first appearance"
    np.testing.assert_array_equal(snap.x, [2.0, 2.0, 2.0, 0.0])  # follow and profile carry no activity weight
    g = snap.graph
    edges = {(int(a), int(b)): float(w) for a, b, w in zip(g.attender, g.source, g.weight, strict=True)}
    assert edges == {(1, 0): 2.0, (2, 0): 2.0, (2, 1): 3.0, (3, 0): 0.5}
    np.testing.assert_array_equal(snap.visibility, [3.0, 1.0, 0.0, 0.0])  # distinct attenders
    assert s.counters["self_attention"] == 1


def test_window_expires_in_event_time_and_late_events_are_counted() -> None:
    s = _state()
    s.apply(ev(0.5, "like", A, B))
    s.apply(ev(1.5, "like", C, B))
    s.apply(ev(2.5, "post", D))
    assert s.snapshot().edges == 2
    s.apply(ev(3.2, "post", A))  # opens bucket 3: bucket 0 leaves the 3-bucket window
    snap = s.snapshot()
    assert snap.edges == 1 and snap.x[snap.dids.index(A)] == 1.0
    assert snap.window_start_us == 1 * HOUR and snap.window_end_us == 4 * HOUR
    assert not s.apply(ev(0.9, "like", A, B)), "older than the window"
    assert s.counters["late"] == 1
    assert s.apply(ev(1.9, "like", A, B)), "out of order but inside the window"
    assert s.snapshot().edges == 2
    assert snap.dids == [A, B, C, D], "interning outlives the window: indices stay stable"


def test_followers_table_sets_visibility() -> None:
    s = AgentState(StateConfig(), followers={A: 1000.0, C: 5.0})
    s.apply(ev(0, "like", B, A))
    s.apply(ev(0, "like", C, A))
    np.testing.assert_array_equal(s.snapshot().visibility, [0.0, 1000.0, 5.0])  # B, A, C


def test_edge_budget_evicts_the_lightest_oldest_edges() -> None:
    s = _state(edge_budget=3)
    s.apply(ev(0.1, "follow", A, B))  # 0.5, oldest bucket
    s.apply(ev(0.2, "reply", A, C))  # 3.0, oldest bucket
    s.apply(ev(1.1, "like", B, C))
    s.apply(ev(1.2, "like", C, D))
    snap = s.snapshot()
    g = snap.graph
    pairs = {(snap.dids[a], snap.dids[b]) for a, b in zip(g.attender, g.source, strict=True)}
    assert pairs == {(A, C), (B, C), (C, D)}
    assert s.counters["edges_evicted"] == 1


def test_bad_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="bucket_hours"):
        StateConfig(bucket_hours=0)
    with pytest.raises(ValueError, match="buckets"):
        StateConfig(buckets=0)
    with pytest.raises(ValueError, match="unknown kind 'poke'"):
        StateConfig(attention_weights={"poke": 1.0})
    with pytest.raises(ValueError, match=r"activity_weights\[like\]"):
        StateConfig(activity_weights={"like": -1.0})


def test_checkpoint_restores_exactly_and_keeps_interning(tmp_path) -> None:
    rng = np.random.default_rng(0)
    dids = [f"did:plc:{i:024d}" for i in range(200)]
    kinds = ["post", "like", "like", "repost", "reply", "follow", "quote"]
    events = [
        ev(t, kinds[rng.integers(len(kinds))], dids[rng.integers(200)], dids[rng.integers(200)], seq=k)
        for k, t in enumerate(np.sort(rng.uniform(0, 5, 3000)))
    ]
    full = _state()
    for e in events:
        full.apply(e)
    half = _state()
    for e in events[:1700]:
        half.apply(e)
    save_checkpoint(tmp_path, half, cursor=1699)
    restored, cursor, _ = load_checkpoint(tmp_path)
    assert cursor == 1699 and restored.dids == half.dids
    for e in events[1700:]:
        restored.apply(e)
    a, b = full.snapshot(), restored.snapshot()
    assert a.dids == b.dids
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.graph.attender, b.graph.attender)
    np.testing.assert_array_equal(a.graph.source, b.graph.source)
    np.testing.assert_array_equal(a.graph.weight, b.graph.weight)
    assert full.counters == restored.counters
    assert load_checkpoint(tmp_path / "none") is None
    (tmp_path / "state.npz").write_bytes(b"torn")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)
