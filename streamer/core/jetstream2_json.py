"""Jetstream v2 messages (``network.bsky.jetstream.subscribeEvents``) read as normalized events.

Jetstream v2 speaks the ``xrpc.v1.json`` subprotocol: every websocket message is a JSON frame, either
``{"$type": "message", "payload": {...}}`` or ``{"$type": "error", "error": ..., "message": ...}`` (terminal). A
payload is ``$type``-discriminated: ``...#commit`` (one repo operation, with the record decoded to JSON),
``...#identity``, ``...#account`` and ``...#sync`` (the upstream firehose event wrapped verbatim) and ``...#info``
(an advisory: no seq, no event). Every message but ``#info`` carries Jetstream's ``seq`` (monotonic, instance-local,
the stream's cursor) and ``time`` (RFC 3339, microseconds: when Jetstream witnessed it, the event time here).

A commit's operation is read by the same function as a v1 commit (:func:`streamer.core.jetstream_json.commit_op`),
so both versions classify records, refuse bad fields and count skips alike; only the envelope differs. The reasons
are those of v1 (``bad_json``, ``bad_body``, ``bad_time``, ``bad_did``, ``too_deep``, ``bad_string``,
``unknown_type``) and :func:`from_jetstream2` never raises.
"""

from __future__ import annotations

from typing import Any

from streamer.core.events import ACCOUNT, IDENTITY, Event, is_valid_did, is_valid_time_us, parse_time_us, rfc3339
from streamer.core.frames import MAX_DEPTH, Decoded, clean_text, exception_text, nesting_exceeds, short_repr
from streamer.core.jetstream_json import commit_op, strings_encode

NSID = "network.bsky.jetstream.subscribeEvents"
PREFIX = NSID + "#"
KINDS = ("commit", "identity", "account", "sync", "info")
MAX_SEQ = 1 << 63


def _fail(reason: str, detail: str, type_: str = "", seq: int = -1) -> Decoded:
    return Decoded(type_, seq, error=reason, detail=clean_text(detail))


def from_jetstream2(payload: Any) -> Decoded:
    """One v2 message payload (the ``payload`` of a ``message`` frame, parsed) as a :class:`Decoded` with zero or
    one event; never raises. ``#info`` and ``#sync`` hold no event; their fields are in ``info``."""
    try:
        return _from(payload)
    except Exception as exc:  # a case the checks below miss still must not end the stream
        return Decoded(error="decoder_exception", detail=exception_text(exc))


def _from(obj: Any) -> Decoded:
    if type(obj) is not dict:
        return _fail("bad_json", "payload is not a JSON object")
    name = obj.get("$type")
    if type(name) is not str:
        return _fail("bad_body", f"$type {short_repr(name)}")
    kind = name.removeprefix(PREFIX) if name.startswith(PREFIX) else ""
    if kind not in KINDS:
        return _fail("unknown_type", f"$type {short_repr(name)}")
    type_ = "#" + kind
    if nesting_exceeds((obj,)):
        return _fail("too_deep", f"nested deeper than {MAX_DEPTH}", type_)
    if not strings_encode(obj):
        return _fail("bad_string", "a string that is not valid Unicode (lone surrogate)", type_)
    if kind == "info":
        return Decoded(type_, -1, info={k: v for k, v in obj.items() if k != "$type"})
    return message(kind, obj.get("seq"), obj.get("time"), obj.get("did"), obj)


def message(kind: str, seq: Any, time: Any, did: Any, obj: dict[str, Any]) -> Decoded:
    """A v2 message of ``kind`` (not ``info``) past its envelope's parsing: the checks of its ``seq``, ``time``
    (RFC 3339, or unix microseconds already) and DID, then its commit operation (``obj`` holds the commit's fields)
    or its marker's body (``obj[kind]``). What a live payload and an archived row
    (:mod:`streamer.sources.jetstream2_backfill`, whose record is DAG-CBOR data, not its JSON model) both go
    through; never raises on bad values."""
    type_ = "#" + kind
    if type(seq) is not int or not 0 <= seq < MAX_SEQ:
        return _fail("bad_body", f"seq {short_repr(seq)}", type_)
    try:
        time_us = time if type(time) is int else parse_time_us(time)
    except ValueError as exc:
        return _fail("bad_time", str(exc), type_, seq)
    if not is_valid_time_us(time_us):
        return _fail("bad_time", f"time {short_repr(time)}", type_, seq)
    if not is_valid_did(did):
        if kind == "commit":  # as v1: a commit by no valid account is a counted skip, not an error
            out = Decoded(type_, seq, detail=clean_text(f"did {short_repr(did)}"))
            out.skipped["bad_did"] += 1
            return out
        return _fail("bad_did", f"did {short_repr(did)}", type_, seq)
    if kind == "commit":
        return commit_op(obj, did, time_us, seq)
    body = obj.get(kind)
    if type(body) is not dict:
        return _fail("bad_body", f"{kind} is not an object", type_, seq)
    if kind == "sync":  # a broken commit chain upstream: no operations, as the relay source reads it
        return Decoded(type_, seq, info={k: v for k, v in body.items() if k != "blocks"})
    extra = {k: v for k, v in body.items() if k not in ("did", "seq", "time")}
    return Decoded(type_, seq, [Event(time_us, seq, IDENTITY if kind == "identity" else ACCOUNT, did, extra=extra)])


def to_jetstream2(event: Event, seq: int) -> dict[str, Any]:
    """A normalized event as a Jetstream v2 message payload at ``seq`` (what a local v2 serves: the inverse of
    :func:`from_jetstream2` for the fields skyattr reads)."""
    out: dict[str, Any] = {"seq": seq, "did": event.actor, "time": rfc3339(event.time_us, 6)}
    if event.kind in (IDENTITY, ACCOUNT):
        body: dict[str, Any] = {"did": event.actor, "seq": event.seq, "time": rfc3339(event.time_us)}
        body.update(event.extra or {})
        return {"$type": PREFIX + event.kind, **out, event.kind: body}
    commit: dict[str, Any] = {"rev": event.rev, "operation": event.operation, "collection": event.collection}
    commit["rkey"] = event.rkey
    if event.operation != "delete":
        commit["record"] = event.record
        commit["cid"] = event.cid or None
    return {"$type": PREFIX + "commit", **out, **{k: v for k, v in commit.items() if v is not None}}


__all__ = ["KINDS", "NSID", "PREFIX", "from_jetstream2", "message", "to_jetstream2"]
