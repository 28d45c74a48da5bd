"""Property tests: real firehose frames and Jetstream lines, mutated, never make the decoders raise, and whatever
they accept is clean (valid DIDs, record keys and collections, sane times, UTF-8 strings, JSON-ready records).

Mutations work at three levels: raw bytes (flips, truncations, insertions, deletions, splices of two frames, length
fields rewritten to lie), CBOR values (a body or operation field replaced by an arbitrary value, then re-encoded),
and the CAR inside a commit (its bytes damaged, or a record field replaced, re-hashed and re-packed), so each layer
of the decoder is reached with input that got past the layers before it. Sized to take well under a minute.
"""

from __future__ import annotations

import json
from typing import Any

import libipld
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.core.events import KINDS, MAX_TIME_US, MIN_TIME_US, is_valid_did, is_valid_nsid, is_valid_rkey
from streamer.core.frames import (
    ERROR_REASONS,
    MAX_DETAIL_CHARS,
    SKIP_REASONS,
    Decoded,
    cbor_nesting_exceeds,
    decode_frame,
    nesting_exceeds,
)
from streamer.core.jetstream_json import from_jetstream
from streamer.testing.encode import car, cid_of

FUZZ = settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

HOSTILE_STRINGS = [
    "did:plc:aaaa\n",
    "did:plc:a\x00a",
    "did:plc:" + "a" * 3000,
    "at://did:plc:b\n/app.bsky.feed.post/3k",
    "at://did:plc:bbbb/app.bsky.feed.post/3k",
    "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb",
    "did:web:example.com",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "2026-07-04T14:38:07.517Z",
    "2026-07-04T14:38:07.517Z\x00",
    "app.bsky.feed.like/3k",
    "app.bsky.feed.like/..",
    "app.bsky.feed.post/a b",
    "create",
    "delete",
    "update",
    ".",
    "",
]
text = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=40))
cbor_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
    st.binary(max_size=40),
)
cbor_value = st.recursive(
    cbor_leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(text, kids, max_size=4), max_leaves=12
)
json_text = st.one_of(
    st.sampled_from(HOSTILE_STRINGS), st.text(st.characters(exclude_categories=()), max_size=40)
)  # lone surrogates included
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),  # NaN and infinities included, as json.loads gives them for NaN / Infinity
    st.sampled_from([1783175887517000, MIN_TIME_US, MAX_TIME_US, True, 1e30, float("inf")]),
    json_text,
)
json_value = st.recursive(
    json_leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(json_text, kids, max_size=4), max_leaves=12
)


def check(d: Decoded) -> None:
    """What every decoder result must satisfy, whatever the input."""
    assert isinstance(d, Decoded)
    assert d.error in ("", *ERROR_REASONS), d.error
    assert set(d.skipped) <= set(SKIP_REASONS) and all(n > 0 for n in d.skipped.values()), d.skipped
    assert len(d.detail) <= MAX_DETAIL_CHARS and d.detail.isprintable(), d.detail
    assert len(d.type) <= 64 and d.type.isprintable()
    assert type(d.seq) is int
    if d.error:
        assert d.events == []
    for e in d.events:
        assert is_valid_did(e.actor), e.actor
        assert e.subject == "" or is_valid_did(e.subject), e.subject
        assert e.kind in KINDS
        assert type(e.time_us) is int and MIN_TIME_US <= e.time_us < MAX_TIME_US
        for s in (e.collection, e.rkey, e.operation, e.rev, e.cid):
            assert type(s) is str
            s.encode("utf-8")
        if e.operation:
            assert is_valid_nsid(e.collection) and is_valid_rkey(e.rkey)
        json.dumps({"record": e.record, "extra": e.extra}, ensure_ascii=False).encode("utf-8")
        assert not nesting_exceeds((e.record, e.extra))


def headers(data: bytes) -> list[int]:
    """Offsets of the CBOR item headers of ``data`` (strings, arrays and maps), for length-field corruption."""
    out, pos, end = [], 0, len(data)
    while pos < end:
        initial = data[pos]
        major, info = initial >> 5, initial & 0x1F
        size = 0 if info < 24 else (1 << (info - 24) if info < 28 else -1)
        if size < 0:
            break
        arg = info if info < 24 else int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
        if major in (2, 3, 4, 5):
            out.append(pos)
        pos += 1 + size + (arg if major in (2, 3) else 0)
    return out


@st.composite
def byte_mutations(draw: st.DrawFn, frames: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(frames)))
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        pos = draw(st.integers(0, max(n - 1, 0)))
        how = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "length", "overwrite"]))
        if how == "flip" and n:
            data[pos] ^= draw(st.integers(1, 255))
        elif how == "truncate":
            del data[pos:]
        elif how == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif how == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif how == "splice":
            other = draw(st.sampled_from(frames))
            data = data[:pos] + other[draw(st.integers(0, len(other))) :]
        elif how == "length":
            offsets = headers(bytes(data)) or [pos]
            at = draw(st.sampled_from(offsets))
            major = data[at] >> 5 if at < n else 2
            width = draw(st.sampled_from([0, 1, 2, 3]))
            arg = draw(st.integers(0, (1 << (8 << width)) - 1))
            old = data[at] & 0x1F if at < n else 0
            old_size = 0 if old < 24 else (1 << (old - 24) if old < 28 else 0)
            data[at : at + 1 + old_size] = bytes([major << 5 | (24 + width)]) + arg.to_bytes(1 << width, "big")
        elif how == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


def parts(frame: bytes) -> tuple[dict, dict]:
    header, body = libipld.decode_dag_cbor_multi(frame)
    return header, body


def encode(header: dict, body: dict) -> bytes | None:
    try:
        return libipld.encode_dag_cbor(header) + libipld.encode_dag_cbor(body)
    except (ValueError, TypeError, OverflowError):  # a value DAG-CBOR cannot hold (key order is libipld's job)
        return None


@st.composite
def value_mutations(draw: st.DrawFn, frames: list[bytes]) -> bytes | None:
    header, body = parts(draw(st.sampled_from(frames)))
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["body", "op", "header"]))
        if target == "op" and isinstance(body.get("ops"), list) and body["ops"]:
            i = draw(st.integers(0, len(body["ops"]) - 1))
            op = body["ops"][i] if isinstance(body["ops"][i], dict) else {}
            key = draw(st.sampled_from(["action", "path", "cid", "prev", "extra"]))
            body["ops"][i] = {**op, key: draw(cbor_value)}
        elif target == "header":
            header = {**header, draw(st.sampled_from(["t", "op"])): draw(cbor_value)}
        else:
            keys = [*body, "extra"]
            body = {**body, draw(st.sampled_from(keys)): draw(cbor_value)}
    return encode(header, body)


@st.composite
def car_mutations(draw: st.DrawFn, frames: list[bytes]) -> bytes | None:
    commits = [f for f in frames if parts(f)[0].get("t") == "#commit"]
    header, body = parts(draw(st.sampled_from(commits)))
    blocks_bytes: bytes = body["blocks"]
    if draw(st.booleans()):  # damage the CAR's bytes
        data = bytearray(blocks_bytes)
        pos = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "truncate", "insert", "varint"]))
        if how == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif how == "truncate":
            del data[pos:]
        elif how == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        else:
            data[pos:pos] = bytes([0x80 | draw(st.integers(0, 127)) for _ in range(draw(st.integers(1, 11)))])
        return encode(header, {**body, "blocks": bytes(data)})
    # replace a field of a record an operation points at, re-hash it, re-pack the CAR
    roots, blocks = libipld.decode_car(blocks_bytes)
    ops = [op for op in body["ops"] if op.get("cid") in blocks]
    if not ops:
        return encode(header, body)
    op = draw(st.sampled_from(ops))
    record = dict(blocks[op["cid"]])
    key = draw(st.sampled_from([*record, "subject", "reply", "embed", "x"]))
    record[key] = draw(cbor_value)
    try:
        data = libipld.encode_dag_cbor(record)
    except (ValueError, TypeError, OverflowError):
        return None
    cid = cid_of(data)
    packed = [(c, libipld.encode_dag_cbor(b)) for c, b in blocks.items() if c != op["cid"]] + [(cid, data)]
    new_ops = [{**o, "cid": cid} if o is op else o for o in body["ops"]]
    root = roots["roots"][0] if isinstance(roots, dict) else cid
    return encode(header, {**body, "ops": new_ops, "blocks": car([root], packed)})


@pytest.fixture(scope="module")
def frames(sample_frames: list[bytes]) -> list[bytes]:
    return sample_frames


@pytest.fixture(scope="module")
def golden(sample_dir: Any) -> list[dict]:
    lines = (sample_dir / "golden_v1.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def test_mutated_frame_bytes_never_raise(frames: list[bytes]) -> None:
    @FUZZ
    @given(byte_mutations(frames), st.booleans())
    def run(frame: bytes, records: bool) -> None:
        check(decode_frame(frame, records=records))

    run()


def test_mutated_frame_values_never_raise(frames: list[bytes]) -> None:
    @FUZZ
    @given(value_mutations(frames), st.booleans())
    def run(frame: bytes | None, records: bool) -> None:
        if frame is not None:
            check(decode_frame(frame, records=records))

    run()


def test_mutated_cars_and_records_never_raise(frames: list[bytes]) -> None:
    @FUZZ
    @given(car_mutations(frames), st.booleans())
    def run(frame: bytes | None, records: bool) -> None:
        if frame is not None:
            check(decode_frame(frame, records=records))

    run()


def set_path(obj: Any, path: list[Any], value: Any) -> Any:
    """``obj`` with the value at ``path`` (keys chosen among those present, or new) replaced."""
    if not path or not isinstance(obj, dict):
        return value
    key = path[0]
    return {**obj, key: set_path(obj.get(key), path[1:], value)}


@st.composite
def jetstream_lines(draw: st.DrawFn, golden: list[dict]) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_value)  # anything at all
    line = draw(st.sampled_from(golden))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(
            st.sampled_from(
                [
                    ["did"],
                    ["time_us"],
                    ["kind"],
                    ["commit"],
                    ["commit", "operation"],
                    ["commit", "collection"],
                    ["commit", "rkey"],
                    ["commit", "rev"],
                    ["commit", "cid"],
                    ["commit", "record"],
                    ["commit", "record", "subject"],
                    ["commit", "record", "subject", "uri"],
                    ["commit", "record", "reply", "parent", "uri"],
                    ["commit", "record", "text"],
                    ["identity", "seq"],
                    ["account", "time"],
                    ["extra"],
                ]
            )
        )
        line = set_path(line, path, draw(json_value))
    return line


def test_mutated_jetstream_lines_never_raise(golden: list[dict]) -> None:
    @settings(FUZZ, max_examples=1500)
    @given(jetstream_lines(golden))
    def run(line: Any) -> None:
        check(from_jetstream(line))

    run()


def test_the_byte_scan_agrees_with_the_decoded_depth() -> None:
    """The pre-scan (used where libipld's own guard is not enough) and the pass over decoded values must give the
    same verdict, so a frame's fate does not depend on which one ran."""

    @settings(FUZZ, max_examples=400)
    @given(cbor_value, st.integers(0, 5))
    def run(value: Any, limit: int) -> None:
        try:
            data = libipld.encode_dag_cbor(value)
        except (ValueError, TypeError, OverflowError):
            return
        decoded = libipld.decode_dag_cbor(data)
        assert cbor_nesting_exceeds(data, limit) == nesting_exceeds((decoded,), limit)

    run()
