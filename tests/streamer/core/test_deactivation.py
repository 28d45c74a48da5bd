"""Deactivated accounts are honoured: an ``#account`` event with ``active: false`` removes the account from the
state at once (its activity, the edges it draws and receives), its events are refused until it is reactivated,
events towards it keep their author's activity without the edge, and no result published after it holds its DID.

The oracle is the same stream with the account written out by hand: its events dropped, the subject of every event
towards it stripped; the state built from that must equal the state that saw the deactivation, DID for DID."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from streamer.core.attribution import AttributionConfig, attribute_snapshot
from streamer.core.checkpoint import load_checkpoint, save_checkpoint
from streamer.core.decisions import DEACTIVATED
from streamer.core.events import ACCOUNT, Event
from streamer.core.state import AgentState
from tests.streamer.core.test_state import HOUR, _random_events, _state, by_did, same_arrays


def _account(hour: float, did: str, active: bool) -> Event:
    extra = {"active": active} if active else {"active": False, "status": "deleted"}
    return Event(int(hour * HOUR), 0, ACCOUNT, did, extra=extra)


def _without(events: list[Event], did: str) -> list[Event]:
    """The oracle's stream: ``did``'s events gone, events towards it without their subject."""
    return [replace(e, subject="") if e.subject == did else e for e in events if e.actor != did]


def _busiest(events: list[Event]) -> str:
    """The account with the most events by or towards it: the one whose removal changes most."""
    counts: dict[str, int] = {}
    for e in events:
        for d in (e.actor, e.subject):
            if d:
                counts[d] = counts.get(d, 0) + 1
    return max(counts, key=lambda d: (counts[d], d))


def test_deactivation_equals_the_stream_without_the_account_until_it_is_reactivated(tmp_path) -> None:
    events = _random_events(3000, 2.5, agents=60, seed=4)
    gone = _busiest(events)
    cut = next(i for i, e in enumerate(events) if e.time_us > 1.2 * HOUR)
    before, during = events[:cut], events[cut:]
    seen = _state()
    for e in before:
        seen.apply(e)
    assert gone in seen.dids
    seen.apply(_account(1.2, gone, active=False))
    assert gone in seen.decider.deactivated and seen.counters["accounts_deactivated"] == 1
    verdicts = [seen.apply(e) for e in during]
    by_it = sum(e.actor == gone for e in during)
    assert verdicts.count(DEACTIVATED) == by_it > 0 and seen.counters[DEACTIVATED] == by_it
    towards = sum(e.subject == gone and e.actor != gone and e.kind != "post" for e in during)  # a post attends no one
    assert seen.counters["deactivated_subject"] == towards > 0
    oracle = _state()
    for e in _without(events, gone):
        oracle.apply(e)
    snap = seen.snapshot()
    assert gone not in snap.dids
    assert by_did(snap) == by_did(oracle.snapshot())
    # a checkpoint keeps the deactivation: the restored state refuses the account as the running one does
    save_checkpoint(tmp_path, seen, cursor=len(events), extra={"mode": "replay"})
    restored, _, _ = load_checkpoint(tmp_path)
    assert restored.decider.deactivated == seen.decider.deactivated
    same_arrays(seen, restored)
    later = Event(int(2.6 * HOUR), 0, "post", gone)
    assert restored.apply(later) == DEACTIVATED
    # reactivated, it comes back with its new activity only
    for state in (seen, restored):
        state.apply(_account(2.61, gone, active=True))
        assert state.apply(replace(later, time_us=int(2.62 * HOUR))) is None
        assert state.counters["accounts_reactivated"] == 1 and gone not in state.decider.deactivated
    x, _, _ = by_did(seen.snapshot())
    assert x[gone] == 1.0, "one post since its reactivation, nothing from before"
    assert by_did(seen.snapshot()) == by_did(restored.snapshot())


def test_a_deactivated_accounts_did_never_appears_in_a_result_after_it() -> None:
    events = _random_events(4000, 2.0, agents=80, seed=7)
    state = _state()
    for e in events:
        state.apply(e)
    config = AttributionConfig(nodes=8, top_k=80, panel_size=10)  # every account listed: none can hide
    first = attribute_snapshot(state.snapshot(), config, run=1, as_of_us=2 * HOUR, alert_active=False).result
    assert first is not None
    top = first.top[0].did
    state.apply(_account(2.0, top, active=False))
    for e in _random_events(500, 0.5, agents=80, seed=8):  # the stream goes on, some of it by and towards it
        state.apply(replace(e, time_us=e.time_us + 2 * HOUR))
    snap = state.snapshot()
    after = attribute_snapshot(snap, config, run=2, as_of_us=int(2.5 * HOUR), alert_active=False).result
    assert after is not None and top in {a.did for a in first.top}
    assert top not in snap.dids and top not in {a.did for a in after.top}
    assert top not in str(after.to_message())
    assert not np.any(np.isnan(snap.x))


def test_deactivating_an_unknown_account_refuses_its_later_events() -> None:
    state = AgentState()
    did = "did:plc:" + "z" * 24
    state.apply(_account(1.0, did, active=False))
    assert did in state.decider.deactivated and did not in state.dids
    assert state.apply(Event(int(1.1 * HOUR), 0, "post", did)) == DEACTIVATED


def test_a_jetstream_account_event_deactivates_and_reactivates() -> None:
    """Jetstream v1 JSON: ``kind: account`` with ``active: false`` removes the account as a relay's ``#account``
    does; ``active: true`` brings it back."""
    from streamer.core.jetstream_json import from_jetstream
    from tests.streamer.core.test_state import by_did

    a, b = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24
    t0 = 1_780_000_000_000_000
    like = {"$type": "app.bsky.feed.like", "subject": {"uri": f"at://{b}/app.bsky.feed.post/3l", "cid": "bafy"}}

    def commit(t: int, actor: str, rkey: str) -> dict:
        body = {"rev": "3lrev", "operation": "create", "collection": "app.bsky.feed.like", "rkey": rkey}
        return {"did": actor, "time_us": t, "kind": "commit", "commit": body | {"record": like, "cid": "bafyrei"}}

    def account(t: int, did: str, active: bool) -> dict:
        body = {"active": active, "did": did, "seq": 1, "time": "2026-05-28T20:26:40.000Z"}
        if not active:
            body["status"] = "deleted"
        return {"did": did, "time_us": t, "kind": "account", "account": body}

    s = AgentState()
    for line in (commit(t0, a, "l1"), account(t0 + 1, a, False), commit(t0 + 2, a, "l2")):
        decoded = from_jetstream(line)
        assert not decoded.error, decoded
        s.apply(decoded.events[0])
    assert a in s.decider.deactivated and s.counters[DEACTIVATED] == 1
    x, _, edges = by_did(s.snapshot())
    assert a not in x and edges == {}
    s.apply(from_jetstream(account(t0 + 3, a, True)).events[0])
    s.apply(from_jetstream(commit(t0 + 4, a, "l3")).events[0])
    x, _, edges = by_did(s.snapshot())
    assert x[a] == 1.0 and edges == {(a, b): 1.0}
