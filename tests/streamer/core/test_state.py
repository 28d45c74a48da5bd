"""Rolling agent state: interning, event-time window under a watermark, activity, attention, budget, pruning,
snapshots and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamer.core.checkpoint import load_checkpoint, save_checkpoint
from streamer.core.events import Event
from streamer.core.state import (
    WATERMARK_EVERY,
    WATERMARK_SAMPLES,
    WATERMARK_WARMUP,
    AgentState,
    Snapshot,
    StateConfig,
)

HOUR = 3_600_000_000
A, B, C, D = (f"did:plc:{c * 24}" for c in "abcd")
CLOCK = "did:plc:" + "k" * 24  # the background stream's one actor


def ev(hour: float, kind: str, actor: str, subject: str = "", seq: int = 0) -> Event:
    return Event(int(hour * HOUR), seq, kind, actor, subject)


def _state(**kw) -> AgentState:
    return AgentState(StateConfig(bucket_hours=1.0, buckets=3, **kw))


def steady(s: AgentState, start_h: float, end_h: float, per_hour: int = 2000, actor: str = CLOCK) -> list[str | None]:
    """A well-ordered background stream (posts by one account), what establishes and moves the watermark."""
    n = round((end_h - start_h) * per_hour)
    return [s.apply(ev(start_h + (end_h - start_h) * i / n, "post", actor)) for i in range(n)]


def by_did(snap: Snapshot) -> tuple[dict[str, float], dict[str, float], dict[tuple[str, str], float]]:
    """x, visibility and the edges keyed by DID: comparable across states that number agents differently."""
    g = snap.graph
    edges: dict[tuple[str, str], float] = {}
    if g is not None:
        edges = {(snap.dids[a], snap.dids[b]): float(w) for a, b, w in zip(g.attender, g.source, g.weight, strict=True)}
    x = dict(zip(snap.dids, snap.x.tolist(), strict=True))
    return x, dict(zip(snap.dids, snap.visibility.tolist(), strict=True)), edges


def same_arrays(a: AgentState, b: AgentState) -> None:
    """Bit for bit the same state: every checkpoint array and the metadata."""
    (xa, ma), (xb, mb) = a.to_arrays(), b.to_arrays()
    assert ma == mb
    assert xa.keys() == xb.keys()
    for key in xa:
        assert xa[key].dtype == xb[key].dtype, key
        np.testing.assert_array_equal(xa[key], xb[key], err_msg=key)


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
        assert s.apply(e) is None
    snap = s.snapshot()
    assert snap.dids == [A, B, C, D], "interned in order of first appearance"
    np.testing.assert_array_equal(snap.x, [2.0, 2.0, 2.0, 0.0])  # follow and profile carry no activity weight
    g = snap.graph
    edges = {(int(a), int(b)): float(w) for a, b, w in zip(g.attender, g.source, g.weight, strict=True)}
    assert edges == {(1, 0): 2.0, (2, 0): 2.0, (2, 1): 3.0, (3, 0): 0.5}
    np.testing.assert_array_equal(snap.visibility, [3.0, 1.0, 0.0, 0.0])  # distinct attenders
    assert s.counters["self_attention"] == 1


def test_window_expires_under_the_watermark_and_refused_events_are_counted() -> None:
    s = _state()
    assert not any(steady(s, 0.0, 0.5))
    assert s.apply(ev(0.5, "like", A, B)) is None
    steady(s, 0.5, 1.5)
    assert s.apply(ev(1.5, "like", C, B)) is None
    steady(s, 1.5, 2.5)
    assert s.apply(ev(2.5, "post", D)) is None
    steady(s, 2.5, 2.6)
    assert s.snapshot().edges == 2 and s.head == 2
    assert not any(steady(s, 2.6, 3.5))  # the watermark (median of the recent stream) reaches bucket 3
    front = s.last_time_us
    assert s.head == 3 and s.counters["buckets_expired"] == 1
    assert s.apply(ev(3.45, "post", A)) is None
    snap = s.snapshot()
    assert snap.edges == 1, "bucket 0 left the 3-bucket window"
    assert snap.window_start_us == 1 * HOUR and snap.window_end_us == 4 * HOUR
    assert snap.dids == [CLOCK, B, C, D, A], "A had nothing left in the window: pruned, then interned anew"
    assert s.counters["agents_pruned"] == 1
    assert snap.x[snap.dids.index(A)] == 1.0
    assert s.apply(ev(0.9, "like", A, B)) == "late", "older than the window"
    assert s.apply(ev(1.9, "like", A, B)) is None, "out of order but inside the window"
    assert s.apply(ev(5.0, "like", A, B)) == "future_time", "far ahead of the stream's front"
    assert (s.counters["late"], s.counters["future_time"]) == (1, 1)
    assert s.snapshot().edges == 2
    assert s.last_time_us == front, "the newest accepted time; refused times do not count"


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
    with pytest.raises(ValueError, match="max_future_skew_s"):
        StateConfig(max_future_skew_s=float("nan"))


def _random_events(n: int, hours: float, agents: int = 200, seed: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    dids = [f"did:plc:{i:024d}" for i in range(agents)]
    kinds = ["post", "like", "like", "repost", "reply", "follow", "quote"]
    return [
        ev(t, kinds[rng.integers(len(kinds))], dids[rng.integers(agents)], dids[rng.integers(agents)], seq=k)
        for k, t in enumerate(np.sort(rng.uniform(0, hours, n)))
    ]


def test_checkpoint_restores_exactly(tmp_path) -> None:
    events = _random_events(3000, 5.0)
    full = _state()
    assert not any(full.apply(e) for e in events), "a well-ordered stream loses nothing"
    half = _state()
    for e in events[:1700]:
        half.apply(e)
    save_checkpoint(tmp_path, half, cursor=1699, extra={"mode": "replay"})
    restored, cursor, _ = load_checkpoint(tmp_path)
    assert cursor == 1699 and restored.dids == half.dids
    for e in events[1700:]:
        restored.apply(e)
    same_arrays(full, restored)
    a, b = full.snapshot(), restored.snapshot()
    assert a.dids == b.dids
    np.testing.assert_array_equal(a.x, b.x)
    for f in ("attender", "source", "weight"):
        np.testing.assert_array_equal(getattr(a.graph, f), getattr(b.graph, f))
    assert full.counters == restored.counters and full.counters["buckets_expired"] == 2
    assert load_checkpoint(tmp_path / "none") is None
    (tmp_path / "state.npz").write_bytes(b"torn")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)


# watermark -----------------------------------------------------------------------------------------------------
def test_one_item_from_2100_neither_expires_the_window_nor_moves_the_head() -> None:
    s = _state()
    steady(s, 0.0, 2.5)
    before = by_did(s.snapshot())
    head, watermark = s.head, s.watermark.watermark_us
    year_2100 = 4_102_444_800 * 1_000_000
    assert s.apply(Event(year_2100, 0, "like", A, B)) == "future_time"
    assert (s.head, s.watermark.watermark_us) == (head, watermark)
    assert by_did(s.snapshot()) == before, "nothing applied, nothing expired"
    assert not any(steady(s, 2.5, 2.6)), "the stream goes on as if nothing happened"
    assert s.counters["future_time"] == 1 and s.counters["buckets_expired"] == 0


def test_a_poisoned_first_event_is_dropped_when_the_watermark_is_established() -> None:
    """Nothing can judge a fresh state's first event; once WATERMARK_WARMUP samples exist, buckets beyond the
    horizon (or before the window) are dropped and their agents pruned: the state equals one that never saw it."""
    for hour, removal in ((24 * 365 * 74, "buckets_dropped"), (0.5, "buckets_expired")):  # 2070, 1970
        poisoned, clean = _state(), _state()
        assert poisoned.apply(ev(hour, "like", A, B)) is None  # warm-up: not judged
        for s in (poisoned, clean):
            steady(s, 1000.0, 1000.2)
            s.apply(ev(1000.3, "like", C, D))
            steady(s, 1000.3, 1000.4)
        assert poisoned.counters[removal] == 1
        assert poisoned.counters["agents_pruned"] == 2
        assert A not in poisoned.index and B not in poisoned.index
        assert poisoned.head == clean.head == 1000
        a, b = poisoned.snapshot(), clean.snapshot()
        assert a.dids == b.dids == [CLOCK, C, D]
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.visibility, b.visibility)
        for f in ("attender", "source", "weight"):
            np.testing.assert_array_equal(getattr(a.graph, f), getattr(b.graph, f))
        assert (a.window_start_us, a.window_end_us) == (b.window_start_us, b.window_end_us)


def test_warm_up_judges_nothing_then_the_watermark_is_established() -> None:
    s = _state()
    reasons = [s.apply(ev(10 + 0.001 * i, "post", A)) for i in range(WATERMARK_WARMUP - 1)]
    assert reasons == [None] * (WATERMARK_WARMUP - 1) and not s.watermark.established
    assert s.apply(ev(10 + 0.001 * WATERMARK_WARMUP, "post", A)) is None and s.watermark.established
    assert s.head == 10


def test_a_genuine_jump_of_the_whole_stream_is_followed_within_a_bounded_number_of_events() -> None:
    """A 3-day outage: the events after it are refused until half of the ring holds the new time (K // 2 + 1
    samples) and the next recompute (at most R - 1 samples later) moves the watermark."""
    bound = WATERMARK_SAMPLES // 2 + WATERMARK_EVERY
    for pre in (3.0, 3.0 + 17 / 2000, 3.0 + 40 / 2000):  # the jump at different phases of the recompute cadence
        s = _state()
        steady(s, 0.0, pre)
        reasons = steady(s, pre + 72, pre + 73)
        refused = reasons.index(None)
        assert WATERMARK_SAMPLES // 2 <= refused <= bound, refused
        assert set(reasons[:refused]) == {"future_time"} and not any(reasons[refused:])
        assert s.head == int(pre + 72.9) and s.counters["buckets_expired"] == math.ceil(pre), "the old window"


def test_backfill_does_not_widen_the_horizon_and_the_watermark_never_goes_back() -> None:
    s = _state()
    steady(s, 0.0, 2.0)
    watermark = s.watermark.watermark_us
    for i in range(3000):  # 40% of the traffic from an hour ago (a backfill), the rest current
        s.apply(ev(2.0 + i / 3000 if i % 5 > 1 else 1.0 + i / 30000, "post", CLOCK))
    assert s.watermark.watermark_us >= watermark
    assert s.apply(ev(4.0, "like", A, B)) == "future_time", "two hours ahead of the front"
    assert s.apply(ev(3.05, "like", A, B)) is None, "just ahead of the front"


def test_the_receive_clock_caps_the_horizon_even_during_warm_up() -> None:
    s = _state(max_future_skew_s=60.0)
    now = int(1000 * HOUR)
    assert s.apply(Event(now + 61_000_000, 0, "post", A), now_us=now) == "future_time"
    assert s.apply(Event(now + 59_000_000, 0, "post", A), now_us=now) is None
    assert s.counters["future_time"] == 1


def test_before_fold_sees_only_accepted_times_and_the_state_without_the_event() -> None:
    from streamer.core.dispatch import SequentialDispatcher
    from streamer.core.seqs import Sequenced
    from streamer.core.source import SourceStats

    s = _state()
    steady(s, 0.0, 1.0)
    seen: list[tuple[int, int]] = []
    dispatcher = SequentialDispatcher(s, SourceStats())
    dispatcher.before_fold = lambda t: seen.append((t, s.events))
    item = Sequenced("#commit", 1, [ev(500.0, "post", A), ev(1.0, "post", A)])
    before = s.events
    dispatcher.add(A, item)
    assert seen == [(HOUR, before)], "the refused time never reaches the hook; the accepted one before its fold"
    assert s.events == before + 1 and dispatcher.stats.skipped["future_time"] == 1


# pruning -------------------------------------------------------------------------------------------------------
def test_agents_absent_from_the_window_are_pruned_and_the_survivors_are_unchanged(tmp_path) -> None:
    """One state sees transient accounts P (active only in the first hours) besides the survivors; another sees
    the survivors' events only. Once the window has passed P's hours, P is gone and the two states agree exactly:
    same DIDs in the same order (first appearance among survivors), same x, visibility and graph."""
    rng = np.random.default_rng(1)
    survivors = [f"did:plc:s{i:023d}" for i in range(40)]
    transient = [f"did:plc:p{i:023d}" for i in range(60)]
    kinds = ["post", "like", "repost", "reply", "follow", "quote"]
    times = np.sort(rng.uniform(0, 8, 6000))
    stream, extra = [], []
    for k, t in enumerate(times):
        actor, subject = rng.choice(survivors, 2, replace=False)
        stream.append(ev(t, kinds[rng.integers(len(kinds))], str(actor), str(subject), seq=k))
        if t < 2.0 and k % 3 == 0:  # P attends to survivors and survivors to P, only in hours 0-1
            p = str(transient[rng.integers(len(transient))])
            pair = (p, str(actor)) if k % 2 else (str(actor), p)
            extra.append((k, ev(t, "like", *pair, seq=k)))
    with_p, without_p = _state(), _state()
    extra_at = dict(extra)
    for k, e in enumerate(stream):
        if k in extra_at:
            assert with_p.apply(extra_at[k]) is None
        assert with_p.apply(e) is None and without_p.apply(e) is None
    assert with_p.head == without_p.head == 7
    assert not set(transient) & set(with_p.dids)
    assert with_p.counters["agents_pruned"] == len({d for _, e in extra for d in (e.actor, e.subject)} & set(transient))
    a, b = with_p.snapshot(), without_p.snapshot()
    assert a.dids == b.dids
    assert by_did(a) == by_did(b)
    np.testing.assert_array_equal(a.x, b.x)
    for f in ("attender", "source", "weight"):
        np.testing.assert_array_equal(getattr(a.graph, f), getattr(b.graph, f))
    assert np.all(np.diff(a.graph.attender.astype(np.int64) << 32 | a.graph.source) > 0), "edges stay sorted"
    for bucket in with_p.buckets.values():
        assert np.all(np.diff(bucket.codes) > 0)
        assert np.all(np.diff(bucket.att.astype(np.int64) << 32 | bucket.src) > 0)
    save_checkpoint(tmp_path, with_p, cursor=0, extra={"mode": "replay"})
    restored, _, _ = load_checkpoint(tmp_path)
    same_arrays(restored, with_p)
    more = _random_events(500, 1.0, seed=5)
    for s in (restored, with_p):
        for e in more:
            s.apply(Event(e.time_us + 8 * HOUR, e.seq, e.kind, e.actor, e.subject))
    same_arrays(restored, with_p)


def test_pruning_keeps_the_followers_visibility_by_did() -> None:
    followers = {A: 10.0, B: 20.0, C: 30.0}
    s = AgentState(StateConfig(bucket_hours=1.0, buckets=2), followers=followers)
    s.apply(ev(0.1, "like", A, B))
    steady(s, 0.1, 1.0)
    s.apply(ev(1.0, "like", C, B))
    steady(s, 1.0, 2.6)  # bucket 0 expires: A goes, B and C stay (renumbered)
    snap = s.snapshot()
    assert A not in snap.dids
    assert dict(zip(snap.dids, snap.visibility.tolist(), strict=True)) == {CLOCK: 0.0, B: 20.0, C: 30.0}


def test_split_anywhere_replays_bit_for_bit() -> None:
    """A state checkpointed at any point (during warm-up, between recomputes, just after a prune) and resumed
    makes exactly the decisions of the uninterrupted one."""
    events = _random_events(4000, 9.0, agents=300, seed=2)
    events.insert(7, Event(4_102_444_800 * 1_000_000, 0, "like", A, B))  # a poisoned item during warm-up
    events.insert(2500, Event(events[2500].time_us + 40 * HOUR, 0, "like", C, D))
    full = _state()
    for e in events:
        full.apply(e)
    assert full.counters["future_time"] >= 1 and full.counters["agents_pruned"] > 0
    for cut in (3, WATERMARK_WARMUP - 1, WATERMARK_WARMUP, 700, WATERMARK_SAMPLES, 1300, 2501, 3999):
        head = _state()
        for e in events[:cut]:
            head.apply(e)
        arrays, meta = head.to_arrays()
        resumed = AgentState.from_arrays({k: np.array(v) for k, v in arrays.items()}, meta)
        for e in events[cut:]:
            resumed.apply(e)
        same_arrays(full, resumed)


def test_bucket_storage_follows_its_own_activity_not_the_dids_ever_seen() -> None:
    s = AgentState(StateConfig(bucket_hours=1.0, buckets=2))
    crowd = [f"did:plc:c{i:023d}" for i in range(5000)]
    for i, d in enumerate(crowd):  # 5000 accounts, hour 0 only
        s.apply(ev(i / 5000, "post", d))
    steady(s, 1.0, 3.5)
    assert len(s.dids) == 1 and s.counters["agents_pruned"] == 5000
    for bucket in s.buckets.values():
        assert len(bucket.codes) == 1, "one (agent, kind) pair was active"
