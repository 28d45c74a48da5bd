"""The stream's decisions (streamer.core.decisions): exact answers on small streams, and one decider for both modes.

The single process (AgentState.apply) and the distributed ingest (the sequencer) must refuse, accept and strip the
same events. They used to be two copies of the same steps; now both call Decider.decide, and these tests check
that they do (a copy written again in either would not be called) and that the answers are the documented ones.
"""

from __future__ import annotations

import pytest

from streamer.core.decisions import ACCEPTED, BAD_DID, DEACTIVATED, Decider, Decision
from streamer.core.events import Event
from streamer.core.state import AgentState, StateConfig
from streamer.core.watermark import FUTURE_TIME, LATE, MAX_TIME_US, Watermark
from streamer.distributed.sequencer import Deactivate, Sequencer
from tests.streamer.distributed.test_partitioned_equality import hostile_stream

HOUR = 3_600_000_000
A, B, C = (f"did:plc:{c * 24}" for c in "abc")


def decider() -> Decider:
    return Decider(Watermark(HOUR, 3, 600_000_000), frozenset({"like", "follow", "reply", "repost", "quote"}))


def like(t: int, actor: str = A, subject: str = B) -> Event:
    return Event(t, 0, "like", actor, subject)


def account(t: int, who: str, active: bool) -> Event:
    return Event(t, 0, "account", who, extra={"active": active})


def test_refusals_before_the_window_in_the_documented_order() -> None:
    d = decider()
    assert d.decide(like(HOUR, actor="did:plc:x\x00")) == Decision(BAD_DID)
    assert d.decide(like(HOUR, subject="")) is ACCEPTED, "no subject: nothing to check"
    assert d.decide(like(HOUR, subject="did:\n")) == Decision(BAD_DID), "a like's subject is an edge end"
    assert d.decide(Event(HOUR, 0, "post", A, "did:\n")) is ACCEPTED, "a post's subject is not an edge: not checked"
    assert d.decide(like(-1)) == Decision(LATE) and d.decide(like(MAX_TIME_US)) == Decision(FUTURE_TIME)
    assert d.watermark.seen == 2, "a bad DID or a time that is no time never reaches the watermark"
    assert d.decide(like(HOUR), now_us=HOUR - 700_000_000) == Decision(FUTURE_TIME), "ahead of the receive clock"


def test_the_window_moves_before_the_event_is_judged() -> None:
    d = decider()
    answers = [d.decide(like(1000 * HOUR + k * 1_000_000)) for k in range(5000)]  # warm-up, then established
    moves = [a.moved for a in answers if a.moved is not None]
    assert moves and moves[0].head == 1000 and moves[0].oldest == 998 and all(a.reason is None for a in answers)
    oldest = d.watermark.oldest
    assert oldest == moves[-1].oldest >= 998
    assert d.decide(like(oldest * HOUR - 1)) == Decision(LATE), "before the oldest bucket of the window"
    assert d.decide(like(oldest * HOUR)).reason is None, "in the oldest bucket"


def test_deactivation_refuses_the_account_strips_edges_towards_it_and_reactivation_ends_it() -> None:
    d = decider()
    assert d.decide(account(HOUR, B, False)) == Decision(account="deactivated")
    assert d.deactivated == {B: HOUR}
    assert d.decide(like(HOUR + 1, actor=B, subject=A)) == Decision(DEACTIVATED)
    assert d.decide(like(HOUR + 2, actor=A, subject=B)) == Decision(no_subject=True)
    assert d.decide(Event(HOUR + 3, 0, "post", A, B)) is ACCEPTED, "not an edge: nothing to strip"
    assert d.decide(account(HOUR + 4, C, True)) is ACCEPTED, "reactivating an active account changes nothing"
    assert d.decide(account(HOUR + 5, B, True)) == Decision(account="reactivated") and not d.deactivated
    assert d.decide(like(HOUR + 6, actor=B, subject=A)) is ACCEPTED


@pytest.mark.parametrize("seed", [0, 1])
def test_both_modes_call_the_one_decider_and_agree_event_by_event(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = Decider.decide

    def counted(self: Decider, *args: object, **kwargs: object) -> Decision:
        calls["n"] += 1
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Decider, "decide", counted)
    events = hostile_stream(seed)
    config = StateConfig(bucket_hours=1.0, buckets=3)
    state, seq = AgentState(config), Sequencer(config, 600.0)
    single = [state.apply(e) for e in events]
    assert calls["n"] == len(events), "AgentState.apply decides through Decider.decide, once an event"
    verdicts = [seq.decide(e) for e in events]
    assert calls["n"] == 2 * len(events), "so does the sequencer"
    assert single == [v.reason for v in verdicts]
    assert {r for r in single if r} >= {BAD_DID, LATE, FUTURE_TIME, DEACTIVATED}, "the stream exercises every refusal"
    deactivations = sum(isinstance(c, Deactivate) for v in verdicts for c in v.after)
    assert deactivations == state.counters["accounts_deactivated"] > 0
    assert sum(v.no_subject for v in verdicts) == state.counters["deactivated_subject"] > 0
    assert seq.decider.deactivated == state.decider.deactivated


def test_what_leaves_a_trace_in_its_bucket() -> None:
    from streamer.core.decisions import leaves_trace

    activity, attention = frozenset({"post", "like"}), frozenset({"like", "follow"})

    def trace(event: Event, decision: Decision = ACCEPTED) -> bool:
        return leaves_trace(event, decision, activity, attention)

    assert trace(Event(HOUR, 0, "post", A, operation="create"))
    assert not trace(Event(HOUR, 0, "post", A, operation="update")), "an edit"
    assert not trace(Event(HOUR, 0, "delete", A, operation="delete")), "a delete takes back from its create's bucket"
    assert trace(Event(HOUR, 0, "follow", A, B)), "an edge, though follows count no activity here"
    assert not trace(Event(HOUR, 0, "follow", A, A)), "self-attention of an uncounted kind"
    assert trace(Event(HOUR, 0, "like", A, A)), "a like counts as activity even towards oneself"
    assert not trace(Event(HOUR, 0, "follow", A, B), Decision(no_subject=True)), "the edge to an inactive account"
    assert not trace(account(HOUR, A, False), Decision(account="deactivated"))
    assert not trace(account(HOUR, A, True), Decision(account="reactivated")), "an #account event counts nothing"
