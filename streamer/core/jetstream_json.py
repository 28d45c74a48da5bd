"""Jetstream v1 JSON events: read them as normalized events, and write normalized events in their shape.

Jetstream (github.com/bluesky-social/jetstream) serves the firehose as JSON: ``{did, time_us, kind, commit |
identity | account}``. skyattr accepts Jetstream archives as input, and ``skyattr events`` prints decoded relay
frames in the same shape (plus our normalized fields under ``"skyattr"``), so users get a firehose-to-Jetstream
converter.

Jetstream's ``time_us`` is its own receive time and also its cursor, so for Jetstream input it serves as both the
event time and the seq. For relay frames the event time is the commit's ``time`` and ``seq`` the relay's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from streamer.core.events import (
    ACCOUNT,
    DELETE,
    IDENTITY,
    Event,
    classify_record,
    is_valid_did,
    is_valid_nsid,
    is_valid_rkey,
    is_valid_time_us,
    parse_time_us,
    rfc3339,
)
from streamer.core.frames import (
    MAX_DEPTH,
    MAX_REV_CHARS,
    Decoded,
    clean_text,
    exception_text,
    nesting_exceeds,
    short_repr,
)

KINDS = ("commit", "identity", "account")
MAX_CID_CHARS = 128


def from_jetstream(obj: Any) -> Decoded:
    """One Jetstream v1 event (parsed JSON) as a :class:`Decoded` with zero or one event; never raises.

    Reasons are those of :func:`streamer.core.frames.decode_frame`, plus ``bad_json`` (not a JSON object) and
    ``bad_string`` (a string that is not valid Unicode, such as a lone surrogate escape ``"\\ud800"``, which no
    UTF-8 file or checkpoint could hold). ``time_us`` must be an int (not a bool or a float) in [2000, 2200)."""
    try:
        return _from_jetstream(obj)
    except Exception as exc:  # a case the checks below miss still must not end the stream
        return Decoded(error="decoder_exception", detail=exception_text(exc))


def _fail(reason: str, detail: str, type_: str = "", seq: int = -1) -> Decoded:
    return Decoded(type_, seq, error=reason, detail=clean_text(detail))


def strings_encode(value: Any) -> bool:
    """Whether every string in ``value`` (keys included) encodes as UTF-8; ``value`` is known not to nest deeper
    than :data:`MAX_DEPTH`."""
    strings: list[str] = []
    level = [value]
    while level:
        nxt: list[Any] = []
        for item in level:
            if type(item) is str:
                strings.append(item)
            elif type(item) is dict:
                strings.extend(item)
                nxt.extend(item.values())
            elif type(item) is list:
                nxt.extend(item)
        level = nxt
    try:
        "".join(strings).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _from_jetstream(obj: Any) -> Decoded:
    if type(obj) is not dict:
        return _fail("bad_json", "event is not a JSON object")
    kind, time_us, did = obj.get("kind"), obj.get("time_us"), obj.get("did")
    if type(kind) is not str:
        return _fail("bad_body", f"kind {short_repr(kind)}")
    if kind not in KINDS:
        return _fail("unknown_type", f"kind {short_repr(kind)}")
    if not is_valid_time_us(time_us):
        return _fail("bad_time", f"time_us {short_repr(time_us)}")
    type_ = "#" + kind
    if not is_valid_did(did):
        if kind == "commit":
            return Decoded(type_, time_us, skipped=Counter(bad_did=1), detail=clean_text(f"did {short_repr(did)}"))
        return _fail("bad_did", f"did {short_repr(did)}", type_, time_us)
    if nesting_exceeds((obj,)):
        return _fail("too_deep", f"nested deeper than {MAX_DEPTH}", type_, time_us)
    if not strings_encode(obj):
        return _fail("bad_string", "a string that is not valid Unicode (lone surrogate)", type_, time_us)
    if kind == "commit":
        return commit_op(obj.get("commit"), did, time_us, time_us)
    body = obj.get(kind)
    if type(body) is not dict:
        return _fail("bad_body", f"{kind} is not an object", type_, time_us)
    seq = body.get("seq", time_us)
    if type(seq) is not int or not 0 <= seq < 1 << 63:
        return _fail("bad_body", f"seq {short_repr(seq)}", type_, time_us)
    if "time" in body:
        try:
            parse_time_us(body["time"])
        except ValueError as exc:
            return _fail("bad_time", str(exc), type_, seq)
    extra = {k: v for k, v in body.items() if k not in ("did", "seq", "time")}
    return Decoded(type_, seq, [Event(time_us, seq, IDENTITY if kind == "identity" else ACCOUNT, did, extra=extra)])


def commit_op(c: Any, did: Any, time_us: int, seq: int) -> Decoded:
    """One repo operation of Jetstream's shape (``operation``, ``collection``, ``rkey``, ``rev``, ``cid``,
    ``record``), v1's ``commit`` object or a v2 ``#commit`` message alike, at ``time_us`` with stream position
    ``seq``; never raises."""
    if type(c) is not dict:
        return _fail("bad_body", "commit is not an object", "#commit", seq)
    op, collection, rkey, rev, cid = (c.get(k) for k in ("operation", "collection", "rkey", "rev", "cid"))
    if op not in ("create", "update", "delete"):
        return _fail("bad_body", f"operation {short_repr(op)}", "#commit", seq)
    if rev is not None and (type(rev) is not str or len(rev) > MAX_REV_CHARS or not is_valid_rkey(rev)):
        return _fail("bad_body", f"rev {short_repr(rev)}", "#commit", seq)
    if cid is not None and (type(cid) is not str or len(cid) > MAX_CID_CHARS or not cid.isalnum() or not cid.isascii()):
        return _fail("bad_body", f"cid {short_repr(cid)}", "#commit", seq)
    out = Decoded("#commit", seq)
    if not is_valid_nsid(collection):
        out.skipped["bad_collection"] += 1
        return out
    if not is_valid_rkey(rkey):
        out.skipped["bad_rkey"] += 1
        return out
    rev = rev or ""
    if op == "delete":
        out.events.append(Event(time_us, seq, DELETE, did, "", collection, rkey, op, rev))
        return out
    record = c.get("record")
    if type(record) is not dict:
        out.skipped["bad_record"] += 1
        return out
    kind, subject, dropped = classify_record(collection, record)
    if dropped:
        out.skipped["bad_subject"] += 1
    event = Event(time_us, seq, kind, did, subject, collection, rkey, op, rev, cid or "")
    event.record = record
    out.events.append(event)
    return out


def to_jetstream(event: Event) -> dict[str, Any]:
    """A normalized event in the Jetstream v1 shape, with ``"skyattr": {seq, event, subject}`` added."""
    out: dict[str, Any] = {"did": event.actor, "time_us": event.time_us}
    if event.kind in (IDENTITY, ACCOUNT):
        body: dict[str, Any] = {"did": event.actor, "seq": event.seq, "time": rfc3339(event.time_us)}
        body.update(event.extra or {})
        out["kind"] = event.kind
        out[event.kind] = body
    else:
        commit: dict[str, Any] = {"rev": event.rev, "operation": event.operation, "collection": event.collection}
        commit["rkey"] = event.rkey
        if event.operation != "delete":
            commit["record"] = event.record
            commit["cid"] = event.cid
        out["kind"] = "commit"
        out["commit"] = commit
    out["skyattr"] = {"seq": event.seq, "event": event.kind, "subject": event.subject}
    return out


__all__ = ["commit_op", "from_jetstream", "parse_time_us", "strings_encode", "to_jetstream"]
