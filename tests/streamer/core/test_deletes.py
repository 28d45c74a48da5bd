"""A delete takes back what its create added: the activity of its kind and the weight of its edge, in the bucket the
create landed in, so an unfollow is not attention for the rest of the window.

The oracle is the same stream with every deleted record written out by hand: the create dropped (its DIDs still
announced by an edit, which adds nothing) and the delete kept. The state that saw the deletes must equal it, DID for
DID, whether the create was still pending, already flushed into its bucket, or carried through a checkpoint."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from streamer.core.checkpoint import load_checkpoint, save_checkpoint
from streamer.core.events import COLLECTION_KIND, DELETE, KIND_COLLECTION, Event
from streamer.core.state import RECORD_BYTES, AgentState, StateConfig
from tests.streamer.core.test_deactivation import _account
from tests.streamer.core.test_state import HOUR, _state, by_did, same_arrays

KINDS = ("post", "like", "like", "repost", "reply", "follow", "quote")


def _create(t: float, kind: str, actor: str, subject: str, rkey: str) -> Event:
    return Event(int(t * HOUR), 0, kind, actor, subject, KIND_COLLECTION[kind], rkey, "create")


def _delete(t: float, actor: str, collection: str, rkey: str) -> Event:
    return Event(int(t * HOUR), 0, DELETE, actor, "", collection, rkey, "delete")


def _stream(n: int, hours: float, agents: int = 50, seed: int = 0) -> tuple[list[Event], set[int]]:
    """Creates, and deletes of about a fifth of them (some twice), of records never made, and of records made by
    someone else under the same key; returns the events and the positions of the creates a delete takes back."""
    rng = np.random.default_rng(seed)
    dids = [f"did:plc:{i:024d}" for i in range(agents)]
    times = np.sort(rng.uniform(0, hours, n))
    events: list[Event] = []
    live: dict[tuple[str, str, str], int] = {}
    deleted: set[int] = set()
    for k, t in enumerate(times):
        roll = rng.uniform()
        if roll < 0.2 and live:
            path = list(live)[rng.integers(len(live))]
            deleted.add(live.pop(path))
            events.append(_delete(t, *path))
        elif roll < 0.23:  # a record that was never created, or another account's key
            actor = dids[rng.integers(agents)]
            events.append(_delete(t, actor, "app.bsky.feed.like", f"never{k}"))
        else:
            kind = KINDS[rng.integers(len(KINDS))]
            actor, subject = dids[rng.integers(agents)], dids[rng.integers(agents)]
            rkey = f"r{k}"
            events.append(_create(t, kind, actor, subject if kind != "post" else "", rkey))
            live[(actor, KIND_COLLECTION[kind], rkey)] = len(events) - 1
    return events, deleted


def _adds_nothing(e: Event) -> bool:
    """A follow of oneself: a follow's activity weight is 0 and a self-edge is none, so a delete has nothing to take
    back and the index holds no entry for it."""
    return e.kind == "follow" and e.actor == e.subject


def _oracle(events: list[Event], deleted: set[int]) -> AgentState:
    """The stream with each deleted record's create written out (an edit in its place keeps its DIDs' order)."""
    state = _state()
    for i, e in enumerate(events):
        state.apply(replace(e, operation="update") if i in deleted else e)
    return state


def _nonzero(snap) -> tuple[dict, dict, dict]:
    x, visibility, edges = by_did(snap)
    return (
        {d: v for d, v in x.items() if v},
        {d: v for d, v in visibility.items() if v},
        {p: w for p, w in edges.items() if w},
    )


@pytest.mark.parametrize("flush_every", [0, 7, 200])
def test_deletes_equal_the_stream_without_the_deleted_records(flush_every: int) -> None:
    """Pending (never flushed), flushed between create and delete now and then, and flushed often."""
    events, deleted = _stream(3000, 2.5, seed=flush_every)
    seen = _state()
    for i, e in enumerate(events):
        assert seen.apply(e) is None
        if flush_every and i % flush_every == 0:
            seen.flush()
    added = {i for i in deleted if not _adds_nothing(events[i])}
    assert seen.counters["delete_applied"] == len(added) > 300
    assert seen.counters["delete_unmatched"] == sum(e.kind == DELETE for e in events) - len(added) > 50
    oracle = _oracle(events, deleted)
    assert _nonzero(seen.snapshot()) == _nonzero(oracle.snapshot())
    assert seen.records_indexed == oracle.records_indexed  # every used entry left the index


def test_an_unfollow_is_no_longer_attention_and_its_subject_loses_the_visibility() -> None:
    a, b = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24
    s = _state()
    s.apply(_create(0.1, "follow", a, b, "f1"))
    s.apply(_create(0.2, "like", a, b, "l1"))
    _, visibility, edges = by_did(s.snapshot())
    assert edges == {(a, b): 1.5} and visibility[b] == 1.0
    s.apply(_delete(0.3, a, "app.bsky.feed.like", "l1"))
    x, visibility, edges = by_did(s.snapshot())  # flushed now: the like goes from its bucket
    assert edges == {(a, b): 0.5} and x[a] == 0.0
    s.apply(_delete(0.4, a, "app.bsky.graph.follow", "f1"))
    _, visibility, edges = by_did(s.snapshot())
    assert edges == {} and visibility[b] == 0.0
    s.apply(_delete(0.5, a, "app.bsky.graph.follow", "f1"))  # deleted twice: nothing more to take back
    assert s.counters["delete_applied"] == 2 and s.counters["delete_unmatched"] == 1
    # a key of another account (or another collection) is not the record
    s.apply(_create(0.6, "like", a, b, "l2"))
    s.apply(_delete(0.7, b, "app.bsky.feed.like", "l2"))
    s.apply(_delete(0.7, a, "app.bsky.feed.repost", "l2"))
    assert by_did(s.snapshot())[2] == {(a, b): 1.0} and s.counters["delete_unmatched"] == 3


def test_a_delete_reaches_the_bucket_of_its_create_and_nothing_after_the_window() -> None:
    """A like from the first hour deleted in the third subtracts from the first bucket; once that bucket has
    expired the delete finds nothing (the like left with its bucket)."""
    a, b = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24
    clock = "did:plc:" + "k" * 24
    s = _state()
    for i in range(400):  # a background stream that establishes the watermark
        s.apply(Event(int((0.05 + i * 0.005) * HOUR), 0, "post", clock))
    s.apply(_create(0.5, "like", a, b, "old"))
    s.apply(_create(2.1, "like", a, b, "new"))
    s.flush()
    assert by_did(s.snapshot())[2] == {(a, b): 2.0}
    s.apply(_delete(2.2, a, "app.bsky.feed.like", "old"))
    assert by_did(s.snapshot())[2] == {(a, b): 1.0}
    assert s.counters["delete_applied"] == 1


def test_deletes_survive_a_checkpoint(tmp_path) -> None:
    events, deleted = _stream(2000, 2.0, seed=3)
    cut = 1100
    whole, first = _state(), _state()
    for e in events:
        whole.apply(e)
    for e in events[:cut]:
        first.apply(e)
    save_checkpoint(tmp_path, first, cursor=cut, extra={"mode": "replay"})
    resumed, _, _ = load_checkpoint(tmp_path)
    same_arrays(first, resumed)
    for e in events[cut:]:
        resumed.apply(e)
    same_arrays(whole, resumed)
    later = sum(i in deleted for i in range(cut))  # creates before the cut, some deleted after it
    assert later and resumed.counters["delete_applied"] == whole.counters["delete_applied"] > 200


def test_the_record_index_is_held_to_its_budget() -> None:
    """Beyond ``record_budget`` the oldest bucket's entries go (counted); their deletes are then unmatched and take
    nothing back, so memory is bounded whatever the stream."""
    events, deleted = _stream(3000, 2.5, seed=5)
    creates = sum(e.kind != DELETE and not _adds_nothing(e) for e in events)
    s = AgentState(StateConfig(bucket_hours=1.0, buckets=3, record_budget=100))
    for i, e in enumerate(events):
        s.apply(e)
        if i % 50 == 0:
            s.flush()
        assert sum(len(b.rkeys) for b in s.buckets.values()) <= 100
    s.flush()
    assert s.records_indexed <= 100 and s.counters["records_unindexed"] > 0
    assert s.counters["delete_applied"] < len(deleted)
    unbounded = _state()
    for e in events:
        unbounded.apply(e)
    assert unbounded.records_indexed == creates - sum(not _adds_nothing(events[i]) for i in deleted)
    assert RECORD_BYTES == 17
    b = next(iter(unbounded.buckets.values()))
    per_entry = sum(a.itemsize for a in (b.rkeys, b.ragent, b.rsubject, b.rkind))
    assert per_entry == RECORD_BYTES


def test_a_deactivated_accounts_records_leave_the_index() -> None:
    """Deactivation removed what its records added; deleting one after reactivation takes back nothing more, and a
    record towards it keeps only its author's activity."""
    a, b = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24
    s = _state()
    s.apply(_create(0.1, "like", a, b, "l1"))
    s.apply(_create(0.1, "like", b, a, "l2"))
    s.flush()
    s.apply(_account(0.2, a, active=False))
    s.apply(_account(0.3, a, active=True))
    s.apply(_delete(0.4, a, "app.bsky.feed.like", "l1"))
    assert s.counters["delete_unmatched"] == 1
    s.apply(_delete(0.4, b, "app.bsky.feed.like", "l2"))
    x, _, edges = by_did(s.snapshot())
    assert s.counters["delete_applied"] == 1 and edges == {} and x[b] == 0.0 and x.get(a, 0.0) == 0.0


def test_the_collections_a_delete_names_are_those_of_the_creates() -> None:
    """The index keys a record by the collection its create names, which is what a delete names."""
    for kind in ("post", "reply", "quote", "like", "repost", "follow"):
        assert COLLECTION_KIND[KIND_COLLECTION[kind]] in (kind, "post")


def test_the_bundled_archives_deletes_are_taken_back_through_the_real_decoder() -> None:
    """Real frames (CAR blocks, Sync 1.1 ops) decoded as ``replay`` decodes them: every delete of a record the
    archive created is applied, and the state equals the archive's events with those creates written out."""
    from tests.streamer.distributed.test_partitioned_equality import ARCHIVE, _items

    events = [e for item in _items(ARCHIVE) for e in item.events]
    made: dict[tuple[str, str, str], int] = {}
    deleted: set[int] = set()
    for i, e in enumerate(events):
        path = (e.actor, e.collection, e.rkey)
        if e.kind == DELETE:
            if path in made:
                deleted.add(made.pop(path))
        elif e.operation == "create":
            made[path] = i
    seen, oracle = AgentState(), AgentState()
    for i, e in enumerate(events):
        seen.apply(e)
        oracle.apply(replace(e, operation="update") if i in deleted else e)
    added = {i for i in deleted if events[i].kind in KINDS and not _adds_nothing(events[i])}
    assert seen.counters["delete_applied"] == len(added) > 100
    assert _nonzero(seen.snapshot()) == _nonzero(oracle.snapshot())


def test_jetstream_deletes_are_taken_back() -> None:
    """Jetstream v1 JSON (a create, then its delete, as a Jetstream sends them)."""
    from streamer.core.jetstream_json import from_jetstream

    a, b = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24
    t0 = 1_780_000_000_000_000
    like = {"$type": "app.bsky.feed.like", "subject": {"uri": f"at://{b}/app.bsky.feed.post/3l", "cid": "bafy"}}
    follow = {"$type": "app.bsky.graph.follow", "subject": b}

    def commit(t: int, op: str, collection: str, rkey: str, record: dict | None = None) -> dict:
        body = {"rev": "3lrev", "operation": op, "collection": collection, "rkey": rkey}
        if record is not None:
            body |= {"record": record, "cid": "bafyrei"}
        return {"did": a, "time_us": t, "kind": "commit", "commit": body}

    lines = [
        commit(t0, "create", "app.bsky.feed.like", "3lk1", like),
        commit(t0 + 1, "create", "app.bsky.graph.follow", "3lf1", follow),
        commit(t0 + 2, "delete", "app.bsky.feed.like", "3lk1"),
        commit(t0 + 3, "delete", "app.bsky.graph.follow", "3lf1"),
    ]
    s = AgentState()
    states = []
    for line in lines:
        decoded = from_jetstream(line)
        assert not decoded.error and len(decoded.events) == 1
        assert s.apply(decoded.events[0]) is None
        states.append(by_did(s.snapshot()))
    assert states[1][2] == {(a, b): 1.5}
    assert states[2][2] == {(a, b): 0.5} and states[2][0][a] == 0.0
    assert states[3][2] == {} and states[3][1][b] == 0.0
    assert s.counters["delete_applied"] == 2


def test_a_record_budget_of_zero_keeps_no_index_and_takes_nothing_back() -> None:
    events, _ = _stream(1000, 1.0, seed=9)
    s = AgentState(StateConfig(bucket_hours=1.0, buckets=3, record_budget=0))
    for e in events:
        s.apply(e)
    s.flush()
    assert s.records_indexed == 0 and s.counters["delete_applied"] == 0
    assert s.counters["delete_unmatched"] == sum(e.kind == DELETE for e in events)
    ignored = _state()  # the oracle: the same stream with its deletes left out
    for e in events:
        if e.kind != DELETE:
            ignored.apply(e)
    assert _nonzero(s.snapshot()) == _nonzero(ignored.snapshot())
