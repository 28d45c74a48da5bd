"""Normalized events as Kafka records of ``skyattr.events``: key, value and headers, and back.

Key: the actor's DID (UTF-8), so Kafka's default partitioner puts every event of an actor, and with it every
attention edge the actor draws, in one partition. Value: compact JSON, one object per event::

    {"p": 1234, "i": 0, "t": 1783123302145000, "s": 31527015322, "k": "like", "a": "did:plc:…",
     "u": "did:plc:…", "c": "app.bsky.feed.like", "r": "3mprrkg5kdn5c", "o": "create", "v": "3mprrkg5kdn5c"}

``p`` is the source's cursor after the item that held the event (a relay seq, a Jetstream ``time_us``, a position
in an archive) and ``i`` the event's index in that item: ``(source, p, i)`` names an event once, which is what a
consumer deduplicates on should it ever need to. ``t`` event time (µs), ``s`` relay seq (-1 when none), ``k``
kind, ``a`` actor, then, when not empty: ``u`` subject, ``c`` collection, ``r`` record key, ``o`` operation,
``v`` repo rev, ``d`` record CID. The header ``skyattr-schema`` names the layout (``skyattr.event/1``; the JSON
Schema is ``streamer/schemas/event.schema.json``) and ``skyattr-source`` the source.

JSON rather than a binary layout: a record is ~250 bytes, Kafka's compression (zstd) takes most of the field names
back, and any consumer can read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from streamer.core.events import Event

SCHEMA = "skyattr.event/1"
SCHEMA_HEADER = "skyattr-schema"
SOURCE_HEADER = "skyattr-source"
_REQUIRED = ("p", "i", "t", "s", "k", "a")
_OPTIONAL = (("u", "subject"), ("c", "collection"), ("r", "rkey"), ("o", "operation"), ("v", "rev"), ("d", "cid"))


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event as it travels: the event, and where in its source it came from."""

    position: int  # the source's cursor after the item
    index: int  # the event's index in that item
    event: Event


def encode(position: int, index: int, event: Event) -> tuple[bytes, bytes]:
    """``(key, value)`` of one event (see the module doc)."""
    value: dict[str, Any] = {
        "p": position,
        "i": index,
        "t": event.time_us,
        "s": event.seq,
        "k": event.kind,
        "a": event.actor,
    }
    for short, name in _OPTIONAL:
        if field := getattr(event, name):
            value[short] = field
    return event.actor.encode(), json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def headers(source: str) -> list[tuple[str, bytes]]:
    return [(SCHEMA_HEADER, SCHEMA.encode()), (SOURCE_HEADER, source.encode())]


def decode(value: bytes) -> EventRecord:
    """The record of ``value``; ValueError naming what is wrong for anything that is not one."""
    try:
        obj = json.loads(value)
    except ValueError as exc:
        raise ValueError(f"not a {SCHEMA} record: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"not a {SCHEMA} record: a JSON {type(obj).__name__}, not an object")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise ValueError(f"not a {SCHEMA} record: no {missing[0]!r}")
    try:
        optional = {name: str(obj.get(short, "")) for short, name in _OPTIONAL}
        event = Event(int(obj["t"]), int(obj["s"]), str(obj["k"]), str(obj["a"]), **optional)
        return EventRecord(int(obj["p"]), int(obj["i"]), event)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a {SCHEMA} record: {exc}") from None
