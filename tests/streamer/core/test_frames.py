"""The frame decoder on the real relay sample, cross-checked against the atproto SDK, and on damaged frames."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import libipld
import pytest
from atproto import CAR, firehose_models, parse_subscribe_repos_message

from streamer.core.events import classify, did_of_uri, parse_time_us
from streamer.core.frames import decode_frame
from streamer.core.jetstream_json import from_jetstream, to_jetstream


def test_every_real_frame_is_accounted_for(sample_frames: list[bytes], sample_manifest: dict) -> None:
    decoded = [decode_frame(f) for f in sample_frames]
    assert [d.error for d in decoded] == [""] * len(sample_frames)
    assert [dict(d.skipped) for d in decoded] == [{}] * len(sample_frames), "real data passes every edge check"
    types = Counter(d.type for d in decoded)
    assert types == {"#commit": sample_manifest["commit_frames"], "#identity": 1, "#account": 1}
    ops = Counter(e.operation for d in decoded for e in d.events if d.type == "#commit")
    assert ops == {
        "create": sample_manifest["creates"],
        "update": sample_manifest["updates"],
        "delete": sample_manifest["deletes"],
    }
    assert sum(len(d.events) for d in decoded) == sample_manifest["v1_events"]
    seqs = [d.seq for d in decoded]
    assert seqs == list(range(sample_manifest["seq_first"], sample_manifest["seq_last"] + 1))
    actors = {e.actor for d in decoded if d.type == "#commit" for e in d.events}
    assert actors == set(sample_manifest["commit_dids"])
    kinds = Counter(e.kind for d in decoded for e in d.events)
    assert kinds["like"] == 105 and kinds["repost"] == 15 and kinds["follow"] == 6 and kinds["block"] == 1
    assert kinds["post"] + kinds["reply"] + kinds["quote"] == 17
    assert kinds["other"] == 2  # two status records of collections we do not model: counted, not errors


def test_decoder_agrees_with_the_atproto_sdk(sample_frames: list[bytes]) -> None:
    """The SDK's own parser (pydantic models + its CAR reader) sees the same ops, records and subjects."""
    checked = 0
    for frame in sample_frames:
        ours = decode_frame(frame, records=True)
        msg = parse_subscribe_repos_message(firehose_models.Frame.from_bytes(frame))
        if ours.type != "#commit":
            assert msg.did == ours.events[0].actor
            continue
        assert msg.seq == ours.seq and msg.repo == ours.events[0].actor
        car = CAR.from_bytes(msg.blocks)
        creates = [op for op in msg.ops if op.action != "delete"]
        mine = [e for e in ours.events if e.operation != "delete"]
        assert len(creates) == len(mine)
        for op, ev in zip(creates, mine, strict=True):
            record = car.blocks.get(op.cid)
            assert str(op.cid) == ev.cid
            assert op.path == f"{ev.collection}/{ev.rkey}"
            assert classify(ev.collection, record) == (ev.kind, ev.subject)
            checked += 1
        assert parse_time_us(msg.time) == ours.events[0].time_us
    assert checked == 146


def test_record_kinds_and_subjects() -> None:
    alice, bob = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
    post_uri = f"at://{bob}/app.bsky.feed.post/3k"
    ref = {"uri": post_uri, "cid": "bafy"}
    assert classify("app.bsky.feed.like", {"subject": ref}) == ("like", bob)
    assert classify("app.bsky.feed.repost", {"subject": ref}) == ("repost", bob)
    assert classify("app.bsky.feed.post", {"text": "hi"}) == ("post", "")
    assert classify("app.bsky.feed.post", {"reply": {"root": ref, "parent": ref}}) == ("reply", bob)
    assert classify("app.bsky.feed.post", {"embed": {"$type": "app.bsky.embed.record", "record": ref}}) == (
        "quote",
        bob,
    )
    media = {"$type": "app.bsky.embed.recordWithMedia", "record": {"record": ref}, "media": {}}
    assert classify("app.bsky.feed.post", {"embed": media}) == ("quote", bob)
    assert classify("app.bsky.feed.post", {"embed": {"$type": "app.bsky.embed.images"}}) == ("post", "")
    assert classify("app.bsky.graph.follow", {"subject": alice}) == ("follow", alice)
    assert classify("app.bsky.graph.block", {"subject": alice}) == ("block", alice)
    assert classify("app.bsky.actor.profile", {"displayName": "x"}) == ("profile", "")
    assert classify("com.example.unknown", {"subject": alice}) == ("other", "")
    assert classify("app.bsky.feed.like", {"subject": "not a ref"}) == ("like", "")
    assert did_of_uri("at://alice.bsky.social/app.bsky.feed.post/1") == ""  # handle, not a DID
    assert parse_time_us("2026-07-04T14:38:07.517Z") == 1783175887517000
    with pytest.raises(ValueError):
        parse_time_us("2026-07-04T14:38:07")


def _reencode(frame: bytes, edit) -> bytes:
    header, body = libipld.decode_dag_cbor_multi(frame)
    header, body = edit(header, body)
    return libipld.encode_dag_cbor(header) + libipld.encode_dag_cbor(body)


def test_damaged_frames_get_a_reason_not_an_exception(sample_frames: list[bytes]) -> None:
    good = sample_frames[0]
    assert decode_frame(b"\x00\x01garbage").error == "bad_cbor"
    assert decode_frame(libipld.encode_dag_cbor({"op": 1, "t": "#commit"})).error == "bad_header"
    err = libipld.encode_dag_cbor({"op": -1}) + libipld.encode_dag_cbor({"error": "FutureCursor", "message": "no"})
    assert decode_frame(err).error == "error_frame"
    unknown = _reencode(good, lambda h, b: ({**h, "t": "#labels"}, b))
    assert decode_frame(unknown).error == "unknown_type"
    bad_car = _reencode(good, lambda h, b: (h, {**b, "blocks": b"\x0a\xff\xff not a car"}))
    assert decode_frame(bad_car).error == "bad_car"
    bad_time = _reencode(good, lambda h, b: (h, {**b, "time": "yesterday"}))
    assert decode_frame(bad_time).error == "bad_time"
    not_a_list = _reencode(good, lambda h, b: (h, {**b, "ops": {"a": 1}}))
    assert decode_frame(not_a_list).error == "bad_body"
    missing = _reencode(good, lambda h, b: (h, {**b, "ops": [{**b["ops"][0], "cid": b"\x01\x71\x12\x20" + bytes(32)}]}))
    d = decode_frame(missing)
    assert d.error == "" and d.events == [] and d.skipped == {"missing_block": 1}
    not_a_map = decode_frame(_reencode(good, lambda h, b: (h, {**b, "ops": [1, *b["ops"]]})))
    assert not_a_map.error == "" and not_a_map.skipped == {"bad_op": 1} and len(not_a_map.events) == 1
    huge = decode_frame(good + bytes(5 * 1024 * 1024))
    assert huge.error == "too_big"
    assert decode_frame(good).events  # and the original still decodes


def test_golden_jetstream_events_normalize(sample_dir: Path) -> None:
    lines = [json.loads(x) for x in (sample_dir / "golden_v1.jsonl").read_text().splitlines() if x.strip()]
    decoded = [from_jetstream(obj) for obj in lines]
    assert all(not d.error for d in decoded)
    kinds = Counter(e.kind for d in decoded for e in d.events)
    assert kinds == {
        "like": 1, "reply": 1, "repost": 1, "follow": 1, "profile": 1, "delete": 1,
        "other": 1, "identity": 1, "account": 1, "block": 1,
    }  # fmt: skip
    like = next(e for d in decoded for e in d.events if e.kind == "like")
    assert like.subject == did_of_uri(lines[0]["commit"]["record"]["subject"]["uri"])
    # converting back gives the original Jetstream object plus our fields
    for obj, d in zip(lines, decoded, strict=True):
        back = to_jetstream(d.events[0])
        extra = back.pop("skyattr")
        assert extra["event"] == d.events[0].kind
        if obj["kind"] == "commit":
            assert (
                back["commit"]["record" if "record" in obj["commit"] else "rkey"]
                == obj["commit"]["record" if "record" in obj["commit"] else "rkey"]
            )
            assert {k: back["commit"][k] for k in ("operation", "collection", "rkey")} == {
                k: obj["commit"][k] for k in ("operation", "collection", "rkey")
            }
        else:
            assert back[obj["kind"]]["did"] == obj[obj["kind"]]["did"]
    assert from_jetstream({"did": "x"}).error == "bad_body"
    assert from_jetstream({"did": "x", "time_us": 1, "kind": "labels"}).error == "unknown_type"
    assert from_jetstream([1, 2]).error == "bad_json"


def test_golden_jetstream_events_equal_the_equivalent_relay_frames(sample_dir: Path) -> None:
    """Each real Jetstream event, re-encoded as the relay frame that carried it, decodes to the same event."""
    from streamer.core.frames import from_json_model, to_json_model
    from streamer.testing.encode import account_frame, commit_frame, identity_frame

    lines = [json.loads(x) for x in (sample_dir / "golden_v1.jsonl").read_text().splitlines() if x.strip()]
    for seq, obj in enumerate(lines, start=1):
        expected = from_jetstream(obj).events[0]
        t = obj["time_us"]
        if obj["kind"] == "commit":
            c = obj["commit"]
            record = from_json_model(c["record"]) if "record" in c else None
            frame = commit_frame(
                seq, obj["did"], t, [(c["operation"], c["collection"], c["rkey"], record)], rev=c["rev"]
            )
        elif obj["kind"] == "identity":
            frame = identity_frame(seq, obj["did"], t, obj["identity"].get("handle"))
        else:
            frame = account_frame(seq, obj["did"], t, obj["account"]["active"], obj["account"].get("status"))
        got = decode_frame(frame, records=True).events
        assert len(got) == 1
        ev = got[0]
        assert (ev.kind, ev.actor, ev.subject, ev.collection, ev.rkey, ev.operation, ev.rev) == (
            expected.kind, expected.actor, expected.subject, expected.collection,
            expected.rkey, expected.operation, expected.rev,
        )  # fmt: skip
        assert ev.time_us // 1000 == t // 1000  # relay time has millisecond precision
        if expected.record is not None:
            assert ev.record == to_json_model(from_json_model(expected.record)) == expected.record
            assert ev.cid == obj["commit"]["cid"], "same record bytes, same CID"
