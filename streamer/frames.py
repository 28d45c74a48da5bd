"""Decode raw ``com.atproto.sync.subscribeRepos`` websocket frames into normalized events.

A frame is two concatenated DAG-CBOR objects: a header ``{op, t}`` and a body. ``#commit`` bodies carry the repo
operations and a CAR file of blocks holding the created records. Decoding uses libipld (the Rust IPLD library the
atproto SDK itself uses) directly on the hot path: header, body and CAR in three calls, no pydantic models, so the
decoder keeps up with a full-speed replay. The SDK's own parser is the reference in the tests.

Nothing here raises on bad input: :func:`decode_frame` returns a :class:`Decoded` whose ``error`` names the
reason (``too_big``, ``bad_cbor``, ``bad_header``, ``error_frame``, ``unknown_type``, ``bad_body``, ``bad_car``) and
whose ``skipped`` counts operations that could not be used (``bad_op``, ``missing_block``, ``bad_path``,
``bad_record``), so
the caller counts and moves on.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import libipld

from streamer.events import ACCOUNT, DELETE, IDENTITY, Event, classify, parse_time_us

MAX_FRAME_BYTES = 5 * 1024 * 1024
HANDLED_TYPES = ("#commit", "#identity", "#account", "#sync", "#info")


@dataclass(slots=True)
class Decoded:
    """What one frame held: its type, seq (-1 if unknown), events, and what had to be skipped."""

    type: str = ""
    seq: int = -1
    events: list[Event] = field(default_factory=list)
    error: str = ""
    detail: str = ""
    skipped: Counter[str] = field(default_factory=Counter)
    info: dict[str, Any] | None = None


def _fail(reason: str, detail: str = "", type_: str = "", seq: int = -1) -> Decoded:
    return Decoded(type=type_, seq=seq, error=reason, detail=detail)


def cid_string(raw: Any) -> str:
    """A CID given as raw bytes (as libipld decodes DAG-CBOR links) in its canonical base32 string form."""
    if isinstance(raw, bytes | bytearray):
        return libipld.encode_cid(bytes(raw))
    return raw if isinstance(raw, str) else ""


def to_json_model(value: Any) -> Any:
    """DAG-CBOR data (as decoded by libipld) to the atproto JSON data model: links become ``{"$link": cid}``,
    other bytes ``{"$bytes": base64}``. libipld gives links as bytes, so bytes that parse as a CIDv1 are links."""
    if isinstance(value, dict):
        return {k: to_json_model(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json_model(v) for v in value]
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        if raw[:1] == b"\x01":
            try:
                return {"$link": libipld.encode_cid(raw)}
            except (ValueError, TypeError):
                pass
        return {"$bytes": base64.b64encode(raw).decode().rstrip("=")}
    return value


def from_json_model(value: Any) -> Any:
    """The atproto JSON data model back to DAG-CBOR data: ``{"$link": cid}`` to CID bytes, ``{"$bytes": b64}`` to
    bytes (the inverse of :func:`to_json_model`; used to turn Jetstream records into relay frames)."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$link"), str):
            return _cid_bytes(value["$link"])
        if len(value) == 1 and isinstance(value.get("$bytes"), str):
            raw = value["$bytes"]
            return base64.b64decode(raw + "=" * (-len(raw) % 4))
        return {k: from_json_model(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_model(v) for v in value]
    return value


def _cid_bytes(text: str) -> bytes:
    """Binary form of a base32 CIDv1 string ("b" multibase prefix)."""
    return bytes(libipld.decode_multibase(text)[1])


def decode_frame(frame: bytes, *, records: bool = False, max_bytes: int = MAX_FRAME_BYTES) -> Decoded:
    """Decode one raw frame. With ``records`` the events keep their record (JSON data model) and CID."""
    if len(frame) > max_bytes:
        return _fail("too_big", f"{len(frame)} bytes > {max_bytes}")
    try:
        parts = libipld.decode_dag_cbor_multi(frame)
    except (ValueError, TypeError, OverflowError) as exc:
        return _fail("bad_cbor", str(exc)[:200])
    if len(parts) != 2 or not isinstance(parts[0], dict) or not isinstance(parts[1], dict):
        return _fail("bad_header", f"expected header and body, got {len(parts)} object(s)")
    header, body = parts
    op, type_ = header.get("op"), header.get("t")
    if op == -1:
        return _fail("error_frame", f"{body.get('error', '')}: {body.get('message', '')}")
    if op != 1 or not isinstance(type_, str):
        return _fail("bad_header", f"op={op!r} t={type_!r}")
    seq = body.get("seq")
    seq = seq if isinstance(seq, int) else -1
    if type_ not in HANDLED_TYPES:
        return _fail("unknown_type", type_, type_, seq)
    try:
        if type_ == "#commit":
            return _commit(body, seq, records)
        if type_ in ("#identity", "#account"):
            kind = IDENTITY if type_ == "#identity" else ACCOUNT
            extra = {k: v for k, v in body.items() if k not in ("did", "seq", "time")}
            event = Event(parse_time_us(body["time"]), seq, kind, str(body["did"]), extra=extra)
            return Decoded(type=type_, seq=seq, events=[event])
        # #sync (repo state reset, no operations) and #info (e.g. OutdatedCursor) carry no events
        return Decoded(type=type_, seq=seq, info={k: to_json_model(v) for k, v in body.items() if k != "blocks"})
    except (KeyError, TypeError, ValueError) as exc:
        return _fail("bad_body", f"{type(exc).__name__}: {exc}"[:200], type_, seq)


def _commit(body: dict[str, Any], seq: int, records: bool) -> Decoded:
    actor, rev = str(body["repo"]), str(body.get("rev", ""))
    time_us = parse_time_us(body["time"])
    ops = body["ops"]
    if not isinstance(ops, list):
        raise TypeError("ops is not a list")
    out = Decoded(type="#commit", seq=seq)
    blocks: dict[bytes, Any] = {}
    if any(isinstance(op, dict) and op.get("action") in ("create", "update") for op in ops):
        try:
            _, blocks = libipld.decode_car(body["blocks"])
        except (ValueError, TypeError, KeyError) as exc:
            return _fail("bad_car", str(exc)[:200], "#commit", seq)
    for op in ops:
        if not isinstance(op, dict):
            out.skipped["bad_op"] += 1
            continue
        action, path = op.get("action"), op.get("path")
        if not isinstance(path, str) or path.count("/") != 1:
            out.skipped["bad_path"] += 1
            continue
        collection, rkey = path.split("/", 1)
        if action == "delete":
            out.events.append(Event(time_us, seq, DELETE, actor, "", collection, rkey, "delete", rev))
            continue
        if action not in ("create", "update"):
            out.skipped["bad_action"] += 1
            continue
        cid = op.get("cid")
        record = blocks.get(cid) if isinstance(cid, bytes) else None
        if record is None:
            out.skipped["missing_block"] += 1
            continue
        if not isinstance(record, dict):
            out.skipped["bad_record"] += 1
            continue
        kind, subject = classify(collection, record)
        event = Event(time_us, seq, kind, actor, subject, collection, rkey, action, rev)
        if records:
            event.cid = cid_string(cid)
            event.record = to_json_model(record)
        out.events.append(event)
    return out
