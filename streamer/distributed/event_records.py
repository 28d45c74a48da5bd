"""Normalized events as Kafka records of ``skyattr.events``: key, value and headers, and back.

Key: the actor's DID (UTF-8), so Kafka's default partitioner puts every event of an actor, and with it every
attention edge the actor draws, in one partition. Value: compact JSON, one object per event::

    {"p": 1234, "i": 0, "t": 1783123302145000, "s": 31527015322, "k": "like", "a": "did:plc:…",
     "u": "did:plc:…", "c": "app.bsky.feed.like", "r": "3mprrkg5kdn5c", "o": "create", "v": "3mprrkg5kdn5c"}

``p`` is the source's cursor after the item that held the event (a relay seq, a Jetstream ``time_us``, a position
in an archive) and ``i`` the event's index in that item: ``(source, p, i)`` names an event once, which is what a
consumer deduplicates on should it ever need to. ``t`` event time (µs), ``s`` relay seq (-1 when none), ``k``
kind, ``a`` actor, then, when not empty: ``u`` subject, ``c`` collection, ``r`` record key, ``o`` operation,
``v`` repo rev, ``d`` record CID; and the sequencer's verdict (:mod:`streamer.distributed.sequencer`): ``n`` the
event's ordinal among accepted events, or ``x`` why it was refused. The header ``skyattr-schema`` names the layout
(``skyattr.event/1``; the JSON Schema is ``streamer/schemas/event.schema.json``) and ``skyattr-source`` the source.
``skyattr-seq`` is the record's number among the records its source wrote to its partition (1, 2, ...; control
records included): a worker folds a partition's records in that order and no other (:class:`Numbering`).

The same topic carries the sequencer's control records (``skyattr.control/1`` in the schema header, no key,
written to every partition): ``config``, ``window``, ``tick`` and ``deactivate`` (see :func:`encode_control`). A
consumer that wants events only skips them by the header.

JSON rather than a binary layout: a record is ~250 bytes, Kafka's compression (zstd) takes most of the field names
back, and any consumer can read it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamer.core.events import Event

SCHEMA = "skyattr.event/1"
SCHEMA_HEADER = "skyattr-schema"
SOURCE_HEADER = "skyattr-source"
SEQ_HEADER = "skyattr-seq"
_REQUIRED = ("p", "i", "t", "s", "k", "a")
_OPTIONAL = (("u", "subject"), ("c", "collection"), ("r", "rkey"), ("o", "operation"), ("v", "rev"), ("d", "cid"))


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event as it travels: the event, and where in its source it came from."""

    position: int  # the source's cursor after the item
    index: int  # the event's index in that item
    event: Event
    ordinal: int = -1  # the sequencer's ordinal among accepted events (-1: refused, or not sequenced)
    refused: str = ""  # why the sequencer refused it ("" when accepted, or not sequenced)


def encode(position: int, index: int, event: Event, *, ordinal: int = -1, refused: str = "") -> tuple[bytes, bytes]:
    """``(key, value)`` of one event (see the module doc)."""
    value: dict[str, Any] = {
        "p": position,
        "i": index,
        "t": event.time_us,
        "s": event.seq,
        "k": event.kind,
        "a": event.actor,
    }
    if ordinal >= 0:
        value["n"] = ordinal
    if refused:
        value["x"] = refused
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
        return EventRecord(int(obj["p"]), int(obj["i"]), event, int(obj.get("n", -1)), str(obj.get("x", "")))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a {SCHEMA} record: {exc}") from None


# control records: the sequencer's decisions, written to every partition (see streamer.distributed.sequencer) -------
CONTROL_SCHEMA = "skyattr.control/1"


def encode_control(control: Any) -> bytes:
    """The value of a control record: ``{"tick": as_of_us, "final": bool}``, ``{"window": {...}}``,
    ``{"deactivate": did}`` or ``{"config": {...}}`` (a dict given as it is)."""
    from streamer.distributed.sequencer import Deactivate, Tick, WindowMove

    if isinstance(control, Deactivate):
        obj: dict[str, Any] = {"deactivate": control.did}
    elif isinstance(control, Tick):
        obj = {"tick": control.as_of_us, "final": control.final}
    elif isinstance(control, WindowMove):
        obj = {
            "window": {
                "head": control.head,
                "oldest": control.oldest,
                "drop_beyond": control.drop_beyond,
                "prune": control.prune,
            }
        }
    elif isinstance(control, dict):
        obj = {"config": control}
    else:
        raise TypeError(f"not a control: {control!r}")
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def control_headers(source: str) -> list[tuple[str, bytes]]:
    return [(SCHEMA_HEADER, CONTROL_SCHEMA.encode()), (SOURCE_HEADER, source.encode())]


def decode_control(value: bytes) -> Any:
    """The :class:`~streamer.distributed.sequencer.Tick`, :class:`~streamer.distributed.sequencer.WindowMove` or
    config dict of a control record; ValueError naming what is wrong for anything else."""
    from streamer.distributed.sequencer import Deactivate, Tick, WindowMove

    try:
        obj = json.loads(value)
        if "deactivate" in obj and isinstance(obj["deactivate"], str):
            return Deactivate(obj["deactivate"])
        if "tick" in obj:
            return Tick(int(obj["tick"]), bool(obj.get("final", False)))
        if "window" in obj:
            w = obj["window"]
            beyond = w.get("drop_beyond")
            beyond = None if beyond is None else int(beyond)
            return WindowMove(int(w["head"]), int(w["oldest"]), beyond, bool(w["prune"]))
        if "config" in obj and isinstance(obj["config"], dict):
            return obj["config"]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a {CONTROL_SCHEMA} record: {exc}") from None
    raise ValueError(f"not a {CONTROL_SCHEMA} record: no tick, window, deactivate or config")


class Numbering:
    """The ``skyattr-seq`` of each record an ingest writes: its number among the records this source wrote to
    its partition. The fold's exactness rests on folding a partition in the order it was written (each key keeps
    the offset of the last record folded into it; the event counter is moved by every event), and the order a
    consumer is handed records in is not always that: after a rebalance faust-streaming can deliver a record
    fetched before it ahead of the seek to the committed offset (its issue #221; seen here, four events missing
    from every later run). Kafka offsets cannot say whether a record is the next one (transaction markers and
    aborted batches leave gaps); these numbers can. ``partitions``: the topic's; ``written``: the counts an
    earlier run of the ingest committed (its cursor), per partition in ``partitions``' sorted order. A record's
    partition is the one Kafka's default partitioner gives its key (murmur2), so placement is unchanged."""

    def __init__(self, partitions: Sequence[int], written: Sequence[int] = ()) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        self.partitions = sorted(partitions)
        self.written = [*written[: len(self.partitions)], *[0] * (len(self.partitions) - len(written))]
        self._index = {p: i for i, p in enumerate(self.partitions)}
        self._partitioner = DefaultPartitioner()

    def partition(self, key: bytes) -> int:
        return int(self._partitioner(key, self.partitions, self.partitions))

    def headers(self, partition: int, base: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """``base`` and the next ``skyattr-seq`` of ``partition``."""
        i = self._index[partition]
        self.written[i] += 1
        return [*base, (SEQ_HEADER, str(self.written[i]).encode())]


def turn_of(headers: Any) -> tuple[str, int] | None:
    """``(source, skyattr-seq)`` of a record, or None when it has no number (written before records had one)."""
    seq = header(headers, SEQ_HEADER)
    if not seq:
        return None
    try:
        return header(headers, SOURCE_HEADER), int(seq)
    except ValueError:
        raise ValueError(f"{SEQ_HEADER} header is not a number: {seq!r}") from None


def header(headers: Any, name: str) -> str:
    """The header ``name`` of a record as text ("" when it has none); ``headers`` as pairs or a mapping."""
    pairs = headers.items() if hasattr(headers, "items") else headers or ()
    for k, v in pairs:
        if k == name:
            return v.decode(errors="replace") if isinstance(v, bytes) else str(v)
    return ""


def schema_of(headers: Any) -> str:
    """The ``skyattr-schema`` header of a record ("" when it has none)."""
    return header(headers, SCHEMA_HEADER)
