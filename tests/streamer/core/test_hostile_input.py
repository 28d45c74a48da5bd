"""Hostile input at the decoder's edge: each case is dropped or skipped under its own reason, never raised.

Frames are built in the real wire format (``streamer.testing.encode`` and libipld); values that libipld cannot encode
(nesting thousands deep, lengths that lie) are written as raw CBOR bytes and spliced in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import libipld
import pytest

from streamer.core.events import MAX_TIME_US, MIN_TIME_US, is_valid_did, parse_time_us, rfc3339
from streamer.core.frames import (
    MAX_DEPTH,
    MAX_DETAIL_CHARS,
    TooDeep,
    cbor_nesting_exceeds,
    decode_frame,
    from_json_model,
    to_json_model,
)
from streamer.core.jetstream_json import from_jetstream
from streamer.testing.encode import car, cid_of, commit_frame, identity_frame, tid

ALICE, BOB = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
T0 = 1783175887517000  # 2026-07-04T14:38:07.517Z
MARKER = 0x1234567890ABCDEF  # an int no real field holds; its 9 CBOR bytes are replaced by raw CBOR
MARKER_CBOR = libipld.encode_dag_cbor(MARKER)
HEADER = libipld.encode_dag_cbor({"t": "#commit", "op": 1})


def like(subject: str = BOB) -> dict[str, Any]:
    return {
        "$type": "app.bsky.feed.like",
        "createdAt": "2026-07-04T14:38:07.000Z",
        "subject": {"cid": "bafyreiaxf7tgbfydx3465sckitq6v564thxe2wwydbi7cwxbxvgssje3em", "uri": subject},
    }


def post_uri(did: str = BOB) -> str:
    return f"at://{did}/app.bsky.feed.post/3mmoodizfwc2j"


def spliced(value: Any, raw: bytes) -> bytes:
    """DAG-CBOR of ``value`` with the one MARKER in it replaced by the raw CBOR ``raw``."""
    data = libipld.encode_dag_cbor(value)
    assert data.count(MARKER_CBOR) == 1
    return data.replace(MARKER_CBOR, raw)


def deep_array(depth: int) -> bytes:
    return b"\x81" * depth + b"\x00"  # [[[...[0]...]]]: ``depth`` arrays


def deep_map(depth: int) -> bytes:
    return b"\xa1\x61a" * depth + b"\x00"  # {"a": {"a": ... 0}}


NOW = object()


def commit_body(did: Any = ALICE, time: Any = NOW, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "seq": 7,
        "repo": did,
        "rev": tid(T0),
        "time": rfc3339(T0) if time is NOW else time,
        "ops": [],
        "blocks": b"",
        "blobs": [],
    }
    body.update(fields)
    return body


def raw_commit(records: list[tuple[str, bytes]], did: Any = ALICE, **fields: Any) -> bytes:
    """A #commit whose create ops point at record blocks given as raw bytes ``[(path, block bytes)]``."""
    blocks = [(cid_of(data), data) for _, data in records]
    ops = [{"action": "create", "path": path, "cid": cid} for (path, _), (cid, _) in zip(records, blocks, strict=True)]
    body = commit_body(did, ops=ops, blocks=car([blocks[0][0]], blocks), **fields)
    return HEADER + libipld.encode_dag_cbor(body)


def one_like(subject_uri: str = post_uri(), did: str = ALICE, rkey: str = "3k") -> bytes:
    return commit_frame(7, did, T0, [("create", "app.bsky.feed.like", rkey, like(subject_uri))])


def safe(text: str) -> bool:
    return len(text) <= MAX_DETAIL_CHARS and text.isprintable()


# --- DIDs ------------------------------------------------------------------------------------------------------

BAD_DIDS = [
    "did:plc:aaaa\n",  # "$" in a regex would let this through
    "did:plc:aa\naa",
    "did:plc:aa\x00aa",
    "did:plc:aa aa",
    "did:plc:" + "a" * 2041,  # 2049 characters
    "did:PLC:aaaa",
    "did:plc:",
    "did:plc:aaaa:",
    "did:plc:aaaa%",
    "did:plc:aé",
    "alice.bsky.social",
    "",
]


@pytest.mark.parametrize("did", BAD_DIDS)
def test_a_commit_from_a_bad_did_is_skipped_by_operation(did: str) -> None:
    d = decode_frame(one_like(did=did))
    assert (d.error, d.events, dict(d.skipped)) == ("", [], {"bad_did": 1})
    assert d.seq == 7, "the seq still counts, so the cursor moves past the frame"


@pytest.mark.parametrize("repo", [17, b"did:plc:aaaa", None, ["did:plc:aaaa"], True])
def test_a_repo_that_is_not_a_string_is_a_bad_did(repo: Any) -> None:
    d = decode_frame(HEADER + libipld.encode_dag_cbor(commit_body(repo, ops=[{"action": "delete", "path": "a.b.c/k"}])))
    assert (d.error, dict(d.skipped)) == ("", {"bad_did": 1})


def test_identity_and_account_with_a_bad_did_are_frame_errors() -> None:
    assert decode_frame(identity_frame(3, "did:plc:aaaa\n", T0)).error == "bad_did"
    account = libipld.encode_dag_cbor({"t": "#account", "op": 1}) + libipld.encode_dag_cbor(
        {"did": "did:plc:a a", "seq": 4, "time": rfc3339(T0), "active": True}
    )
    d = decode_frame(account)
    assert (d.error, d.seq, d.events) == ("bad_did", 4, [])
    assert decode_frame(identity_frame(3, ALICE, T0)).events[0].actor == ALICE


def test_the_subject_of_a_like_with_a_newline_did_is_dropped_not_the_like() -> None:
    d = decode_frame(one_like(post_uri("did:plc:bbbb\n")))
    assert d.error == "" and dict(d.skipped) == {"bad_subject": 1}
    assert [(e.kind, e.actor, e.subject) for e in d.events] == [("like", ALICE, "")]
    assert decode_frame(one_like(post_uri())).events[0].subject == BOB


@pytest.mark.parametrize(
    ("collection", "record", "kind"),
    [
        ("app.bsky.feed.repost", like(post_uri("did:plc:b\x00b")), "repost"),
        ("app.bsky.feed.like", like("at://bob.bsky.social/app.bsky.feed.post/3k"), "like"),  # a handle, not a DID
        ("app.bsky.feed.like", {"$type": "app.bsky.feed.like", "subject": "at://x"}, "like"),
        ("app.bsky.graph.follow", {"subject": "did:plc:bb bb", "createdAt": "x"}, "follow"),
        ("app.bsky.graph.block", {"subject": "did:plc:" + "b" * 3000, "createdAt": "x"}, "block"),
        ("app.bsky.feed.post", {"text": "hi", "reply": {"parent": {"uri": post_uri("did:plc:b\n")}}}, "reply"),
        (
            "app.bsky.feed.post",
            {"text": "hi", "embed": {"$type": "app.bsky.embed.record", "record": {"uri": post_uri("did:x:\n")}}},
            "quote",
        ),
    ],
)
def test_every_bad_subject_keeps_the_event_and_drops_the_edge(collection: str, record: dict, kind: str) -> None:
    d = decode_frame(commit_frame(7, ALICE, T0, [("create", collection, "3k", record)]))
    assert dict(d.skipped) == {"bad_subject": 1}
    assert [(e.kind, e.subject) for e in d.events] == [(kind, "")]


# --- record keys and collections ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rkey", [".", "..", "a b", "a\nb", "é", "x" * 513, "a#b"])
def test_bad_record_keys_are_skipped(rkey: str) -> None:
    d = decode_frame(commit_frame(7, ALICE, T0, [("delete", "app.bsky.feed.like", rkey, None)]))
    assert (d.events, dict(d.skipped)) == ([], {"bad_rkey": 1})


def test_an_empty_record_key_and_bad_collections_are_skipped() -> None:
    ops = [
        ("delete", "app.bsky.feed.like", "", None),
        ("delete", "app bsky.feed.like", "3k", None),
        ("delete", "app.bsky.feed.like\n", "3k", None),
        ("delete", "nodots", "3k", None),
        ("delete", "app.bsky.feed.like", "3k", None),
    ]
    d = decode_frame(commit_frame(7, ALICE, T0, ops))
    assert dict(d.skipped) == {"bad_rkey": 1, "bad_collection": 3}
    assert [(e.kind, e.rkey) for e in d.events] == [("delete", "3k")]


# --- time ------------------------------------------------------------------------------------------------------

BAD_TIMES = [
    "9999-12-31T23:59:59.999Z",
    "2200-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-23:59",
    "1999-12-31T23:59:59.999Z",
    "1970-01-01T00:00:00Z",
    "yesterday",
    "",
    "2026-07-04T14:38:07+25:00",
    "2026-13-04T14:38:07Z",
    "2026-07-04T14:38:07Z" + " " * 100,
    "2026-07-04T14:38:07.517Z\x00",
]


@pytest.mark.parametrize("time", [*BAD_TIMES, 1783175887, None, 1.5, ["2026-07-04T14:38:07Z"]])
def test_far_future_far_past_and_garbage_times_are_bad_time(time: Any) -> None:
    body = commit_body(time=time, ops=[{"action": "delete", "path": "app.bsky.feed.like/3k"}])
    d = decode_frame(HEADER + libipld.encode_dag_cbor(body))
    assert (d.error, d.seq) == ("bad_time", 7)
    identity = libipld.encode_dag_cbor({"t": "#identity", "op": 1}) + libipld.encode_dag_cbor(
        {"did": ALICE, "seq": 8, "time": time}
    )
    assert decode_frame(identity).error == "bad_time"


def test_a_commit_without_a_time_is_bad_time() -> None:
    body = commit_body(ops=[])
    del body["time"]
    assert decode_frame(HEADER + libipld.encode_dag_cbor(body)).error == "bad_time"


@pytest.mark.parametrize("text", BAD_TIMES)
def test_parse_time_us_raises_value_error_only(text: str) -> None:
    with pytest.raises(ValueError):  # not OverflowError, whatever the year or offset
        parse_time_us(text)


def test_the_time_range_is_2000_to_2200() -> None:
    assert parse_time_us("2000-01-01T00:00:00Z") == MIN_TIME_US
    assert parse_time_us("2199-12-31T23:59:59.999999Z") == MAX_TIME_US - 1
    assert parse_time_us("2026-07-04T16:38:07.517+02:00") == T0


# --- nesting -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deep", [deep_array(5000), deep_map(5000), deep_array(100_000)])
def test_5000_deep_cbor_in_the_body_is_too_deep(deep: bytes) -> None:
    frame = HEADER + spliced(commit_body(ops=[], extra=MARKER), deep)
    assert len(frame) < 600_000
    d = decode_frame(frame)
    assert d.error == "too_deep" and safe(d.detail)


def test_deep_cbor_in_the_header_and_in_identity_bodies_is_too_deep() -> None:
    header = spliced({"t": "#commit", "op": 1, "x": MARKER}, deep_array(5000))
    assert decode_frame(header + libipld.encode_dag_cbor(commit_body())).error == "too_deep"
    identity = libipld.encode_dag_cbor({"t": "#identity", "op": 1}) + spliced(
        {"did": ALICE, "seq": 1, "time": rfc3339(T0), "handle": MARKER}, deep_map(5000)
    )
    assert decode_frame(identity).error == "too_deep"


def test_the_nesting_bound_is_exact() -> None:
    """The body is at depth 1, so a field holding k nested arrays reaches depth k + 1."""
    ok = decode_frame(HEADER + spliced(commit_body(x=MARKER), deep_array(MAX_DEPTH - 1)))
    assert ok.error == "" and ok.type == "#commit"
    assert decode_frame(HEADER + spliced(commit_body(x=MARKER), deep_array(MAX_DEPTH))).error == "too_deep"


def test_5000_deep_cbor_in_a_record_block_skips_that_operation_only() -> None:
    deep_record = spliced({"$type": "app.bsky.feed.like", "deep": MARKER}, deep_array(5000))
    good = libipld.encode_dag_cbor(like(post_uri()))
    frame = raw_commit([("app.bsky.feed.like/3a", deep_record), ("app.bsky.feed.like/3b", good)])
    for records in (False, True):
        d = decode_frame(frame, records=records)
        assert d.error == "" and dict(d.skipped) == {"too_deep": 1}
        assert [(e.rkey, e.subject) for e in d.events] == [("3b", BOB)]
    mapped = spliced({"$type": "app.bsky.feed.like", "deep": MARKER}, deep_map(5000))
    assert dict(decode_frame(raw_commit([("app.bsky.feed.like/3a", mapped)])).skipped) == {"too_deep": 1}


def test_a_record_nested_just_within_the_bound_keeps_its_record() -> None:
    record = spliced({"$type": "com.example.deep", "x": MARKER}, deep_array(MAX_DEPTH - 1))
    d = decode_frame(raw_commit([("com.example.deep/3k", record)]), records=True)
    assert not d.skipped and d.events[0].kind == "other"
    json.dumps(d.events[0].record)  # what a sink or a checkpoint does with it


def test_deep_blocks_no_operation_points_at_are_never_decoded() -> None:
    """An MST node or commit block is read by nobody here, so its content cannot matter."""
    good = libipld.encode_dag_cbor(like(post_uri()))
    junk = deep_array(50_000)
    blocks = [(cid_of(good), good), (cid_of(junk), junk)]
    ops = [{"action": "create", "path": "app.bsky.feed.like/3k", "cid": cid_of(good)}]
    frame = HEADER + libipld.encode_dag_cbor(commit_body(ops=ops, blocks=car([cid_of(good)], blocks)))
    d = decode_frame(frame)
    assert d.error == "" and [e.subject for e in d.events] == [BOB]


def test_a_deep_car_header_is_bad_car() -> None:
    header = deep_array(5000)
    body = commit_body(ops=[{"action": "create", "path": "a.b.c/k", "cid": cid_of(b"x")}])
    body["blocks"] = len(header).to_bytes(2, "little") + header  # not a varint: still no crash
    assert decode_frame(HEADER + libipld.encode_dag_cbor(body)).error == "bad_car"
    from streamer.testing.encode import varint

    body["blocks"] = varint(len(header)) + header
    assert decode_frame(HEADER + libipld.encode_dag_cbor(body)).error == "bad_car"


def test_to_and_from_json_model_stop_at_the_bound_instead_of_the_stack() -> None:
    value: Any = 0
    for _ in range(5000):
        value = [value]
    with pytest.raises(TooDeep):
        to_json_model(value)
    with pytest.raises(TooDeep):
        from_json_model(value)
    assert to_json_model([[1]], max_depth=2) == [[1]]


def test_the_byte_scan_measures_depth_like_the_decoded_value() -> None:
    assert not cbor_nesting_exceeds(deep_array(MAX_DEPTH - 1) + deep_array(MAX_DEPTH))
    assert cbor_nesting_exceeds(deep_array(MAX_DEPTH + 1))
    assert cbor_nesting_exceeds(b"\x80" * 0 + b"\x81" * MAX_DEPTH + b"\x80")  # the innermost, empty, counts
    assert not cbor_nesting_exceeds(libipld.encode_dag_cbor({"a": b"\x81" * 500, "b": "\x81" * 100}))


def test_a_raised_recursion_limit_cannot_crash_the_decoder(tmp_path: Path) -> None:
    """With the recursion limit raised, libipld's own guard allows nesting that overflows the C stack (a
    segfault, measured at 20,000 levels): the byte pre-scan must catch it before libipld sees it."""
    deep_body = HEADER + spliced(commit_body(x=MARKER), deep_array(300_000))
    deep_record = raw_commit([("app.bsky.feed.like/3k", spliced({"x": MARKER}, deep_map(300_000)))])
    (tmp_path / "body").write_bytes(deep_body)
    (tmp_path / "record").write_bytes(deep_record)
    script = textwrap.dedent(
        f"""
        import sys
        sys.setrecursionlimit(10_000_000)
        from streamer.core.frames import decode_frame
        body = decode_frame(open({str(tmp_path / "body")!r}, "rb").read())
        record = decode_frame(open({str(tmp_path / "record")!r}, "rb").read())
        print(body.error, dict(record.skipped))
        """
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, f"decoder process died: {out.returncode} {out.stderr[-500:]}"
    assert out.stdout.split("\n")[0] == "too_deep {'too_deep': 1}"


# --- lengths that lie ------------------------------------------------------------------------------------------

LYING_LENGTHS = [
    b"\x5b" + (1 << 60).to_bytes(8, "big"),  # a byte string of 2^60 bytes
    b"\x7b" + (1 << 60).to_bytes(8, "big"),  # a text string of 2^60 bytes
    b"\x9b" + (1 << 60).to_bytes(8, "big"),  # an array of 2^60 items
    b"\xbb" + (1 << 60).to_bytes(8, "big"),  # a map of 2^60 entries
    b"\x9a\xff\xff\xff\xff",  # 2^32 - 1 items
    b"\x5f\x41a\xff",  # indefinite length (not DAG-CBOR)
]


@pytest.mark.parametrize("raw", LYING_LENGTHS)
def test_oversized_length_prefixes_in_the_body_are_bad_cbor(raw: bytes) -> None:
    d = decode_frame(HEADER + spliced(commit_body(x=MARKER), raw))
    assert d.error == "bad_cbor" and safe(d.detail)


@pytest.mark.parametrize("raw", LYING_LENGTHS)
def test_oversized_length_prefixes_in_the_header_are_bad_cbor(raw: bytes) -> None:
    header = spliced({"t": "#commit", "op": 1, "x": MARKER}, raw)
    assert decode_frame(header + libipld.encode_dag_cbor(commit_body())).error == "bad_cbor"


@pytest.mark.parametrize("raw", LYING_LENGTHS)
def test_oversized_length_prefixes_in_a_record_are_bad_record(raw: bytes) -> None:
    good = libipld.encode_dag_cbor(like(post_uri()))
    lying = spliced({"$type": "app.bsky.feed.like", "x": MARKER}, raw)
    d = decode_frame(raw_commit([("app.bsky.feed.like/3a", lying), ("app.bsky.feed.like/3b", good)]))
    assert dict(d.skipped) == {"bad_record": 1} and [e.rkey for e in d.events] == ["3b"]


def test_oversized_lengths_in_the_car_are_bad_car() -> None:
    from streamer.testing.encode import varint

    good = libipld.encode_dag_cbor(like(post_uri()))
    cid = cid_of(good)
    head = car([cid], [])
    for blocks in (
        varint(1 << 60) + b"\xa0",  # a CAR header of 2^60 bytes
        b"\xff" * 12,  # a varint that never ends
        head + varint(1 << 60) + cid + good,  # a block of 2^60 bytes
        head + varint(1 << 31) + cid + good,
        head + varint(40) + b"\x01\x71\x12\xff\xff\xff\xff\xff\x0f" + bytes(31),  # a digest of 2^36 bytes
        head + varint(len(good) + 34) + b"\x12\x20" + bytes(32) + good,  # CIDv0 (dag-pb), not a record
        head + varint(0),
        b"\x0a\xff\xff not a car",
        b"",
    ):
        body = commit_body(ops=[{"action": "create", "path": "app.bsky.feed.like/3k", "cid": cid}], blocks=blocks)
        d = decode_frame(HEADER + libipld.encode_dag_cbor(body))
        assert d.error == "bad_car", blocks[:20]
        assert safe(d.detail)
    body = commit_body(ops=[{"action": "create", "path": "app.bsky.feed.like/3k", "cid": cid}], blocks=[1])
    assert decode_frame(HEADER + libipld.encode_dag_cbor(body)).error == "bad_car"


def test_invalid_utf8_and_surrogates_in_cbor_text_are_bad_cbor() -> None:
    for raw in (b"\x63\xed\xa0\x80", b"\x62\xff\xfe"):  # a UTF-8-encoded lone surrogate, invalid bytes
        assert decode_frame(HEADER + spliced(commit_body(x=MARKER), raw)).error == "bad_cbor"


# --- details stay small and printable ----------------------------------------------------------------------------


def test_details_of_huge_and_hostile_values_are_bounded() -> None:
    err = libipld.encode_dag_cbor({"op": -1}) + libipld.encode_dag_cbor(
        {"error": "X\n" * 100_000, "message": ["m" * 10_000] * 100}
    )
    cases = {
        "error_frame": err,
        "bad_header": libipld.encode_dag_cbor({"op": b"\x00" * 1_000_000, "t": 1}) + b"\xa0",
        "unknown_type": libipld.encode_dag_cbor({"op": 1, "t": "#x\n" * 100_000}) + b"\xa0",
    }
    for reason, frame in cases.items():
        d = decode_frame(frame)
        assert d.error == reason and safe(d.detail) and len(d.type) <= 64


class _Treacherous(bytes):
    """Bytes whose length cannot be read: a way into the decoder's last line of defence without any mock."""

    def __len__(self) -> int:
        raise RuntimeError("line one\nline two " + "x" * 10_000)


def test_anything_unforeseen_is_a_decoder_exception_with_a_safe_detail() -> None:
    d = decode_frame(_Treacherous(b"\xa0"))
    assert d.error == "decoder_exception" and d.detail.startswith("RuntimeError: line one\\nline two")
    assert safe(d.detail)
    assert decode_frame("not bytes").error == "bad_cbor"  # type: ignore[arg-type]


# --- Jetstream -------------------------------------------------------------------------------------------------


def jet(**over: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "did": ALICE,
        "time_us": T0,
        "kind": "commit",
        "commit": {
            "rev": "3mmoojp7vgo2g",
            "operation": "create",
            "collection": "app.bsky.feed.like",
            "rkey": "3mmoojp7etg2g",
            "record": like(post_uri()),
            "cid": "bafyreidqpc7si3dbimffi64lz3xsx2qt45ip7rpna2qpslcddp23itjjzm",
        },
    }
    line.update(over)
    return line


@pytest.mark.parametrize(
    "text", ["Infinity", "-Infinity", "NaN", "1e30", "true", "false", "null", '"1783175887517000"']
)
def test_jetstream_time_us_that_is_not_a_sane_int_is_bad_time(text: str) -> None:
    line = json.loads(json.dumps(jet()).replace(str(T0), text))
    d = from_jetstream(line)
    assert (d.error, d.events) == ("bad_time", [])


@pytest.mark.parametrize("value", [0, -1, 1, MIN_TIME_US - 1, MAX_TIME_US, 1 << 70, 1783175887517000.0])
def test_jetstream_time_us_out_of_range_or_float_is_bad_time(value: Any) -> None:
    assert from_jetstream(jet(time_us=value)).error == "bad_time"
    assert from_jetstream(jet(time_us=MIN_TIME_US)).error == ""


def test_a_lone_surrogate_in_a_jetstream_did_is_bad_did() -> None:
    line = json.loads(json.dumps(jet()).replace(ALICE, "did:plc:\\ud800aaaa"))
    assert not is_valid_did(line["did"])
    d = from_jetstream(line)
    assert (d.error, d.events, dict(d.skipped)) == ("", [], {"bad_did": 1})
    identity = json.loads(f'{{"did": "did:plc:\\udfff", "time_us": {T0}, "kind": "identity", "identity": {{}}}}')
    assert from_jetstream(identity).error == "bad_did"


def test_a_lone_surrogate_anywhere_else_in_a_jetstream_line_is_bad_string() -> None:
    line = jet()
    line["commit"]["record"]["text"] = json.loads('"hi \\ud83d"')
    d = from_jetstream(line)
    assert (d.error, d.events) == ("bad_string", []) and safe(d.detail)
    line = jet()
    line["commit"]["record"][json.loads('"\\udc00"')] = 1  # in a key
    assert from_jetstream(line).error == "bad_string"


def test_jetstream_bad_fields_are_counted_by_reason() -> None:
    def skipped(**commit: Any) -> dict[str, int]:
        line = jet()
        line["commit"].update(commit)
        d = from_jetstream(line)
        assert d.error == ""
        return dict(d.skipped)

    assert skipped(rkey="..") == {"bad_rkey": 1}
    assert skipped(rkey=["3k"]) == {"bad_rkey": 1}
    assert skipped(collection="app.bsky.feed.like\n") == {"bad_collection": 1}
    assert skipped(collection={"a": 1}) == {"bad_collection": 1}
    assert skipped(record=like(post_uri("did:plc:b\nb"))) == {"bad_subject": 1}
    assert skipped(record="not a record") == {"bad_record": 1}
    assert from_jetstream(jet(did="did:plc:a\n")).skipped == {"bad_did": 1}
    assert from_jetstream(jet(did=None)).skipped == {"bad_did": 1}
    for bad in ({"rev": "a\nb"}, {"cid": "x" * 1000}, {"cid": 5}, {"operation": ["create"]}):
        line = jet()
        line["commit"].update(bad)
        assert from_jetstream(line).error == "bad_body", bad
    assert from_jetstream(jet(commit=[1])).error == "bad_body"
    assert from_jetstream(jet(kind=["commit"])).error == "bad_body"
    assert from_jetstream(jet(kind="labels")).error == "unknown_type"


def test_deep_jetstream_lines_are_too_deep() -> None:
    deep: Any = 0
    for _ in range(500):
        deep = {"a": deep}
    line = jet()
    line["commit"]["record"]["x"] = deep
    assert from_jetstream(line).error == "too_deep"
    assert from_jetstream(jet(extra=[[[[[[]]]]]])).error == ""


def test_jetstream_identity_and_account_lines_check_seq_and_time() -> None:
    base = {"did": ALICE, "time_us": T0, "kind": "account", "account": {"active": True, "seq": 5}}
    assert from_jetstream(base).events[0].seq == 5
    for seq in (True, 1.5, -1, 1 << 64, float("inf")):
        assert from_jetstream({**base, "account": {"seq": seq}}).error == "bad_body"
    assert from_jetstream({**base, "account": {"time": "9999-01-01T00:00:00Z"}}).error == "bad_time"
    assert from_jetstream({**base, "account": "x"}).error == "bad_body"
