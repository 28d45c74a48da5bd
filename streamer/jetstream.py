"""Jetstream v1 JSON events: read them as normalized events, and write normalized events in their shape.

Jetstream (github.com/bluesky-social/jetstream) serves the firehose as JSON: ``{did, time_us, kind, commit |
identity | account}``. skyattr accepts Jetstream archives as input, and ``skyattr events`` prints decoded relay
frames in the same shape (plus our normalized fields under ``"skyattr"``), so users get a firehose-to-Jetstream
converter.

Jetstream's ``time_us`` is its own receive time and also its cursor, so for Jetstream input it serves as both the
event time and the seq. For relay frames the event time is the commit's ``time`` and ``seq`` the relay's.
"""

from __future__ import annotations

from typing import Any

from streamer.events import ACCOUNT, DELETE, IDENTITY, Event, classify, parse_time_us
from streamer.frames import Decoded


def from_jetstream(obj: Any) -> Decoded:
    """One Jetstream v1 event (parsed JSON) as a :class:`Decoded` with zero or one event; never raises."""
    if not isinstance(obj, dict):
        return Decoded(error="bad_json", detail="event is not a JSON object")
    try:
        did, time_us, kind = str(obj["did"]), int(obj["time_us"]), obj["kind"]
        if kind == "commit":
            c = obj["commit"]
            op, collection, rkey = c["operation"], c["collection"], c["rkey"]
            rev = str(c.get("rev", ""))
            if op == "delete":
                return Decoded(
                    "#commit", time_us, [Event(time_us, time_us, DELETE, did, "", collection, rkey, op, rev)]
                )
            if op not in ("create", "update"):
                return Decoded("#commit", time_us, error="bad_body", detail=f"operation {op!r}")
            record = c.get("record")
            ev_kind, subject = classify(collection, record)
            event = Event(time_us, time_us, ev_kind, did, subject, collection, rkey, op, rev, str(c.get("cid", "")))
            event.record = record if isinstance(record, dict) else None
            return Decoded("#commit", time_us, [event])
        if kind in ("identity", "account"):
            body = obj[kind]
            seq = int(body.get("seq", time_us))
            extra = {k: v for k, v in body.items() if k not in ("did", "seq", "time")}
            ev = Event(time_us, seq, IDENTITY if kind == "identity" else ACCOUNT, did, extra=extra)
            return Decoded("#" + kind, seq, [ev])
        return Decoded(error="unknown_type", detail=f"kind {kind!r}")
    except (KeyError, TypeError, ValueError) as exc:
        return Decoded(error="bad_body", detail=f"{type(exc).__name__}: {exc}"[:200])


def to_jetstream(event: Event) -> dict[str, Any]:
    """A normalized event in the Jetstream v1 shape, with ``"skyattr": {seq, event, subject}`` added."""
    out: dict[str, Any] = {"did": event.actor, "time_us": event.time_us}
    if event.kind in (IDENTITY, ACCOUNT):
        body: dict[str, Any] = {"did": event.actor, "seq": event.seq, "time": iso_time(event.time_us)}
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


def iso_time(time_us: int) -> str:
    """Microseconds since the epoch as an RFC 3339 UTC timestamp with millisecond precision."""
    from datetime import UTC, datetime

    dt = datetime.fromtimestamp(time_us / 1e6, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


__all__ = ["from_jetstream", "iso_time", "parse_time_us", "to_jetstream"]
