"""Ingest edge cases real relays produce: edits, ``tooBig`` commits, commit times without a timezone."""

from __future__ import annotations

import libipld

from streamer.core.events import rfc3339
from streamer.core.frames import SKIP_REASONS, decode_frame
from streamer.core.state import AgentState
from streamer.testing.encode import commit_frame

T0 = 1_783_000_000_000_000
ALICE, BOB = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
POST = "app.bsky.feed.post"


def _reply(text: str) -> dict:
    parent = {"uri": f"at://{BOB}/{POST}/3kparent", "cid": "bafyreib"}
    return {"$type": POST, "text": text, "createdAt": rfc3339(T0), "reply": {"root": parent, "parent": parent}}


def _rewrite(frame: bytes, **changes: object) -> bytes:
    """The frame with body fields replaced (a relay's variant of the same commit)."""
    header, body = libipld.decode_dag_cbor_multi(frame)
    header_len = len(libipld.encode_dag_cbor(header))
    body.update(changes)
    return frame[:header_len] + libipld.encode_dag_cbor(body)


def test_an_edit_is_neither_a_new_post_nor_a_second_attention_edge() -> None:
    state = AgentState()
    create = commit_frame(1, ALICE, T0, [("create", POST, "3kreply", _reply("hi"))])
    edit = commit_frame(2, ALICE, T0 + 1_000_000, [("update", POST, "3kreply", _reply("hi, edited"))])
    for frame in (create, edit):
        for event in decode_frame(frame).events:
            assert state.apply(event) is None
    snap = state.snapshot()
    alice, bob = state.index[ALICE], state.index[BOB]
    assert snap.x[alice] == 1.0, "one reply, however often it is edited"
    assert snap.edges == 1 and float(snap.graph.weight[0]) == 3.0, "the reply's attention once (weight 3)"
    assert (int(snap.graph.attender[0]), int(snap.graph.source[0])) == (alice, bob), "alice attends to bob"
    assert state.counters["update"] == 1 and state.counters["reply"] == 1 and state.events == 2


def test_a_too_big_commit_keeps_its_deletes() -> None:
    frame = commit_frame(
        7, ALICE, T0, [("create", POST, "3knew", _reply("big")), ("delete", "app.bsky.feed.like", "3kold", None)]
    )
    decoded = decode_frame(_rewrite(frame, tooBig=True, blocks=b""))
    assert decoded.error == "", decoded.detail
    assert [(e.kind, e.rkey) for e in decoded.events] == [("delete", "3kold")]
    assert decoded.skipped == {"too_big": 1}
    # not tooBig, empty blocks: still a broken CAR
    assert decode_frame(_rewrite(frame, blocks=b"")).error == "bad_car"


def test_a_commit_time_without_a_timezone_is_read_as_utc_and_counted() -> None:
    frame = commit_frame(9, ALICE, T0, [("create", POST, "3kn", _reply("naive"))])
    naive = rfc3339(T0)[:-1]  # "2026-...T...:...:....sss" without the Z
    decoded = decode_frame(_rewrite(frame, time=naive))
    assert decoded.error == ""
    assert [e.time_us for e in decoded.events] == [T0 // 1000 * 1000]
    assert decoded.skipped["naive_time"] == 1
    assert decode_frame(_rewrite(frame, time="yesterday")).error == "bad_time", "anything else is still refused"
    assert {"too_big", "naive_time"} <= set(SKIP_REASONS), "registered, so the metrics know them"


def test_bytes_that_parse_as_a_cid_stay_bytes_and_links_stay_links() -> None:
    from streamer.core.frames import record_json

    cid = bytes.fromhex("01711220") + bytes(range(32))
    # {"ref": <link>, "digest": <the same 36 bytes as a byte string>}, written out (libipld's encoder would turn
    # CID-shaped bytes into a link itself): keys in DAG-CBOR order, shorter first
    linked = (
        bytes.fromhex("a2" + "63" + b"ref".hex() + "d82a5825" + "00")
        + cid
        + bytes.fromhex("66" + b"digest".hex() + "5824")
        + cid
    )
    decoded = libipld.decode_dag_cbor(linked)
    assert decoded["digest"] == decoded["ref"], "libipld alone cannot tell them apart"
    out = record_json(linked, decoded)
    assert out["ref"] == {"$link": libipld.encode_cid(cid)}
    assert set(out["digest"]) == {"$bytes"}, out["digest"]
