"""Decode raw ``com.atproto.sync.subscribeRepos`` websocket frames into normalized events.

A frame is two concatenated DAG-CBOR objects: a header ``{op, t}`` and a body. ``#commit`` bodies carry the repo
operations and a CAR file of blocks holding the created records. Decoding uses libipld (the Rust IPLD library the
atproto SDK itself uses) directly on the hot path, with no pydantic models, so the decoder keeps up with a
full-speed replay: one call for header and body, then the CAR is split into blocks here (varint lengths and CIDs)
and only the record blocks that operations point at are decoded. The MST nodes and the signed commit block, most
of a commit's bytes, are never decoded: nothing here reads them. The SDK's own parser is the reference in the tests.

The firehose is public, so every frame is treated as hostile. :func:`decode_frame` never raises: it returns a
:class:`Decoded` whose ``error`` names why the whole frame was dropped, and whose ``skipped`` counts the
operations (or parts of them) that could not be used while the rest of the frame was. Reasons are short
lowercase names, so they can be metric labels.

Frame errors (``Decoded.error``):

- ``too_big``: the frame is larger than ``max_bytes``.
- ``bad_cbor``: not valid DAG-CBOR.
- ``too_deep``: header or body nests deeper than :data:`MAX_DEPTH` containers.
- ``bad_header``: not a header and a body, or a header with an unknown ``op``.
- ``error_frame``: the relay sent an error frame (``op: -1``), such as ``FutureCursor``.
- ``unknown_type``: a message type not in :data:`HANDLED_TYPES`.
- ``bad_time``: the ``time`` is missing, not an RFC 3339 timestamp, or outside [2000, 2200).
- ``bad_did``: an ``#identity`` or ``#account`` whose ``did`` is not a valid DID.
- ``bad_body``: a body field has the wrong type (``ops`` not a list, a malformed ``rev``).
- ``bad_car``: the commit's ``blocks`` is not a readable CAR v1 file.
- ``decoder_exception``: anything else that went wrong in the decoder; the frame is dropped, the stream goes on.
- Jetstream lines (:func:`streamer.core.jetstream_json.from_jetstream`) add ``bad_json`` (not a JSON object) and
  ``bad_string`` (a string that is not valid Unicode, such as a lone surrogate).

Skipped operations (``Decoded.skipped``; the frame's other operations are kept):

- ``bad_did``: the commit's ``repo`` is not a valid DID; every operation of the commit is counted.
- ``bad_op``: an operation that is not a map.
- ``bad_path``: a path that is not ``collection/rkey``.
- ``bad_collection``: a collection that is not an NSID.
- ``bad_rkey``: a record key outside the atproto record-key syntax.
- ``bad_action``: an action other than create, update or delete.
- ``missing_block``: the record's CID is not among the CAR's blocks.
- ``bad_record``: the record block is not DAG-CBOR, or not a map.
- ``too_deep``: the record nests deeper than :data:`MAX_DEPTH`.
- ``bad_subject``: the event is kept with its kind, but the record names no valid subject DID, so it carries no
  attention edge (subject ""). Counted, not dropped: the activity itself is real.
- ``too_big``: a create or update of a ``tooBig`` commit, whose relay left the records out (``blocks`` empty);
  the commit's deletes, which need no block, are kept.
- ``naive_time``: the frame's ``time`` had no timezone; it is read as UTC (what relays write) and counted, the
  frame is kept.
"""

from __future__ import annotations

import base64
import builtins
import re
import reprlib
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cbor2
import libipld

from streamer.core.events import (
    ACCOUNT,
    DELETE,
    IDENTITY,
    RKEY_RE,
    Event,
    classify_record,
    is_valid_did,
    is_valid_nsid,
    is_valid_rkey,
    parse_time_us,
)

MAX_FRAME_BYTES = 5 * 1024 * 1024
# an RFC 3339 date-time without its timezone (some PDS implementations have written these): read as UTC
NAIVE_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?")
HANDLED_TYPES = ("#commit", "#identity", "#account", "#sync", "#info")
# every reason a Decoded can carry (module docstring; bad_json and bad_string come from Jetstream lines), so metrics
# can be registered up front and tests can check nothing else appears
ERROR_REASONS = (
    "too_big", "bad_cbor", "too_deep", "bad_header", "error_frame", "unknown_type", "bad_time", "bad_did",
    "bad_body", "bad_car", "decoder_exception", "bad_json", "bad_string",
)  # fmt: skip
SKIP_REASONS = (
    "bad_did", "bad_op", "bad_path", "bad_collection", "bad_rkey", "bad_action", "missing_block", "bad_record",
    "too_deep", "bad_subject", "too_big", "naive_time",
)  # fmt: skip

# Nesting bound for anything decoded from the wire. Real records nest 5 containers deep at most (the relay sample),
# bodies 3; 64 leaves room for any lexicon while keeping every recursive step downstream (JSON encoding of records,
# checkpoints) far from the interpreter's recursion limit.
MAX_DEPTH = 64

# libipld recurses once per nesting level on the C stack and stops at the interpreter's recursion limit with a
# RecursionError. Under the default limit (1000) that is well inside an 8 MiB stack (measured: 10,000 levels pass,
# 20,000 overflow and kill the process). Where a program raised the limit above this, libipld's own guard no longer
# protects the stack, so the bytes are pre-scanned (a value cannot nest deeper than its length in bytes, so short
# inputs need no scan).
LIBIPLD_SAFE_NESTING = 4000

MAX_DETAIL_CHARS = 200
MAX_REV_CHARS = 64
DAG_CBOR_SHA256_CID = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32-byte digest: every atproto block
_CONTAINERS = (dict, list)
_CONTAINER_BYTES = bytes(range(0x80, 0xC0))  # initial bytes of CBOR arrays (major type 4) and maps (5)


class TooDeep(ValueError):
    """A value nests deeper than :data:`MAX_DEPTH`."""


class BadCar(ValueError):
    """A commit's ``blocks`` is not a readable CAR v1 file."""


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


class _ShortRepr(reprlib.Repr):
    """reprlib with bytes cut before they are formatted, so a 5 MB byte string costs nothing to describe."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 2, 60, 60, 40
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = 4

    def repr_bytes(self, x: bytes, level: int) -> str:
        return builtins.repr(x[: self.maxstring]) + ("..." if len(x) > self.maxstring else "")


_SHORT = _ShortRepr()


def clean_text(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``text`` cut to ``limit`` characters with anything unprintable (newlines, NUL, lone surrogates) escaped, so
    a detail taken from hostile input is safe in a log line, a metric and a UTF-8 file."""
    text = text[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)[:limit]


def short_repr(value: Any) -> str:
    """A bounded, printable description of any decoded value (deep, huge or hostile), for error details."""
    try:
        return clean_text(_SHORT.repr(value))
    except Exception:  # a value whose repr fails is described by its type
        return f"<{type(value).__name__}>"


def exception_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, bounded and printable, even when formatting the message itself fails."""
    try:
        message = str(exc)
    except Exception:
        message = ""
    return clean_text(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def _fail(reason: str, detail: str = "", type_: str = "", seq: int = -1) -> Decoded:
    return Decoded(type=type_, seq=seq, error=reason, detail=clean_text(detail))


def nesting_exceeds(values: Iterable[Any], limit: int = MAX_DEPTH) -> bool:
    """Whether any of ``values`` nests more than ``limit`` dicts/lists deep (a dict or list among ``values`` is at
    depth 1). Iterative, one level at a time, so it costs a few passes on real data and cannot hit the recursion
    limit however deep the input."""
    level = [v for v in values if type(v) in _CONTAINERS]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            for child in container.values() if type(container) is dict else container:
                if type(child) in _CONTAINERS:
                    below.append(child)
        level = below
    return False


def _few_containers(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """A cheap proof that ``data`` cannot nest more than ``limit`` deep: every array or map starts with a byte in
    0x80-0xbf, so nesting is at most the count of such bytes. Proves it for most small records (ASCII text, one
    or two CIDs), in C, without a pass over the decoded value; for longer data counting costs more than the pass."""
    if len(data) <= limit:
        return True
    return len(data) <= 512 and len(data) - len(data.translate(None, _CONTAINER_BYTES)) <= limit


def cbor_nesting_exceeds(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the CBOR items in ``data`` nest more than ``limit`` arrays/maps deep, found from the item headers
    alone (strings are skipped by their length), without building any value and without recursion.

    Same depth as :func:`nesting_exceeds` on the decoded value. Where the bytes stop making sense (truncated,
    indefinite length, a length past the end) the scan stops and answers False: libipld, reading the same bytes,
    fails at the same place, no deeper than the scan got."""
    end = len(data)
    pos = 0
    stack: list[int] = []
    remaining = -1  # items left in the innermost open container; negative at the top level (any number of items)
    while pos < end:
        initial = data[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            arg = info
        elif info < 28:
            size = 1 << (info - 24)
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        else:
            return False  # indefinite length or reserved: not DAG-CBOR
        if major == 2 or major == 3:
            pos += arg
        elif major == 4 or major == 5:
            if len(stack) >= limit:
                return True
            if arg:
                stack.append(remaining)
                remaining = arg if major == 4 else 2 * arg
                continue
        elif major == 6:
            continue  # a tag prefixes the next item, which completes it
        remaining -= 1
        while remaining == 0 and stack:
            remaining = stack.pop() - 1
    return False


def _needs_prescan(data: bytes) -> bool:
    return len(data) > LIBIPLD_SAFE_NESTING and sys.getrecursionlimit() > LIBIPLD_SAFE_NESTING


def decode_cbor(data: bytes, *, multi: bool = False) -> Any:
    """DAG-CBOR ``data`` (with ``multi``, a sequence of objects, as a list) decoded by libipld with the nesting
    bound: raises :class:`TooDeep` beyond :data:`MAX_DEPTH`, ``ValueError`` for anything that is not DAG-CBOR."""
    value = _libipld_decode(data, multi)
    deep = nesting_exceeds(value) if multi else not _few_containers(data) and nesting_exceeds((value,))
    if deep:
        raise TooDeep(f"nested deeper than {MAX_DEPTH}")
    return value


def _libipld_decode(data: bytes, multi: bool = False) -> Any:
    """libipld's decode, with its stack kept safe: a RecursionError (libipld's own guard) is :class:`TooDeep`, and
    where that guard is not enough (:data:`LIBIPLD_SAFE_NESTING`) the bytes are pre-scanned first. The nesting of a
    value is checked by :func:`decode_cbor`."""
    if _needs_prescan(data) and cbor_nesting_exceeds(data):
        raise TooDeep(f"nested deeper than {MAX_DEPTH}")
    try:
        return libipld.decode_dag_cbor_multi(data) if multi else libipld.decode_dag_cbor(data)
    except RecursionError:
        raise TooDeep(f"nested deeper than {MAX_DEPTH}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(exception_text(exc)) from None


def cid_string(raw: Any) -> str:
    """A CID given as raw bytes (as libipld decodes DAG-CBOR links) in its canonical base32 string form."""
    if isinstance(raw, bytes | bytearray):
        return libipld.encode_cid(bytes(raw))
    return raw if isinstance(raw, str) else ""


def to_json_model(value: Any, max_depth: int = MAX_DEPTH) -> Any:
    """DAG-CBOR data (as decoded by libipld) to the atproto JSON data model: links become ``{"$link": cid}``,
    other bytes ``{"$bytes": base64}``. libipld gives links as bytes, so bytes that parse as a CIDv1 are links.
    Raises :class:`TooDeep` past ``max_depth`` nested containers instead of exhausting the stack."""
    return _to_json(value, max_depth, guess_links=True)


def _to_json(value: Any, depth: int, *, guess_links: bool) -> Any:
    """The walk of :func:`to_json_model` (``guess_links``: bytes that parse as a CID are links) and of
    :func:`record_json` (links arrive marked as :class:`_Link`, every other byte string is bytes)."""
    if isinstance(value, dict | list):
        if depth <= 0:
            raise TooDeep(f"nested deeper than {MAX_DEPTH}")
        if isinstance(value, dict):
            return {k: _to_json(v, depth - 1, guess_links=guess_links) for k, v in value.items()}
        return [_to_json(v, depth - 1, guess_links=guess_links) for v in value]
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        if isinstance(value, _Link) or (guess_links and raw[:1] == b"\x01"):
            try:
                return {"$link": libipld.encode_cid(raw)}
            except (ValueError, TypeError):
                pass
        return {"$bytes": base64.b64encode(raw).decode().rstrip("=")}
    return value


class _Link(bytes):
    """The bytes of a CID that the CBOR marked as a link (tag 42), as opposed to a byte string."""


def _link_hook(*args: Any) -> Any:
    tag = next(a for a in args if isinstance(a, cbor2.CBORTag))  # the hook's signature differs across versions
    if tag.tag == 42 and isinstance(tag.value, bytes) and tag.value[:1] == b"\x00":
        return _Link(tag.value[1:])
    return tag


def record_json(block: bytes, decoded: Any) -> Any:
    """A record block in the atproto JSON data model, links and byte strings told apart by their CBOR tags.

    libipld gives a link (tag 42) and a byte string holding the same bytes as the same Python ``bytes``, so
    :func:`to_json_model` has to guess from the bytes; here the block, already checked and decoded by libipld
    (``decoded``, depth-bounded), is read once more with cbor2 keeping the tags, so a byte string that happens to
    parse as a CID stays ``{"$bytes": ...}``. Only where records are shown (``skyattr events``, the Jetstream
    output), never on the ingest path."""
    try:
        value = cbor2.loads(block, tag_hook=_link_hook)
    except Exception:  # any failure of the second reader: fall back to libipld's reading
        return to_json_model(decoded)
    return _to_json(value, MAX_DEPTH, guess_links=False)


def from_json_model(value: Any, max_depth: int = MAX_DEPTH) -> Any:
    """The atproto JSON data model back to DAG-CBOR data: ``{"$link": cid}`` to CID bytes, ``{"$bytes": b64}`` to
    bytes (the inverse of :func:`to_json_model`; used to turn Jetstream records into relay frames). Raises
    :class:`TooDeep` past ``max_depth`` nested containers."""
    return _from_json(value, max_depth)


def _from_json(value: Any, depth: int) -> Any:
    if isinstance(value, dict | list):
        if depth <= 0:
            raise TooDeep(f"nested deeper than {MAX_DEPTH}")
        if isinstance(value, list):
            return [_from_json(v, depth - 1) for v in value]
        if len(value) == 1 and isinstance(value.get("$link"), str):
            return _cid_bytes(value["$link"])
        if len(value) == 1 and isinstance(value.get("$bytes"), str):
            raw = value["$bytes"]
            return base64.b64decode(raw + "=" * (-len(raw) % 4))
        return {k: _from_json(v, depth - 1) for k, v in value.items()}
    return value


def _cid_bytes(text: str) -> bytes:
    """Binary form of a base32 CIDv1 string ("b" multibase prefix)."""
    return bytes(libipld.decode_multibase(text)[1])


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the unsigned LEB128 varint at ``pos`` (at most 9 bytes, so below 2^63)."""
    value = shift = 0
    for i in range(pos, min(pos + 9, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise BadCar(f"bad varint at byte {pos}")


def _cid_end(data: bytes, pos: int, end: int) -> int:
    """End of the binary CIDv1 starting at ``pos``; only DAG-CBOR blocks are records."""
    if data.startswith(DAG_CBOR_SHA256_CID, pos):
        return pos + 36
    version, p = _varint(data, pos)
    codec, p = _varint(data, p) if version == 1 else (-1, p)
    if version != 1 or codec != 0x71:
        raise BadCar(f"block at byte {pos} is not a DAG-CBOR CIDv1 (version {version}, codec {codec})")
    _, p = _varint(data, p)  # multihash function
    size, p = _varint(data, p)
    if p + size > end:
        raise BadCar(f"CID at byte {pos} runs past its block")
    return p + size


def car_blocks(car: Any) -> dict[bytes, tuple[int, int]]:
    """``{CID bytes: (start, end)}`` of the data of each block in a CAR v1 file, without decoding any block.

    The header must be a DAG-CBOR map ``{version: 1, roots: [...]}``; each section must be a varint length, a
    DAG-CBOR CIDv1 and data, and end inside the file. Raises :class:`BadCar` otherwise. A block's data is decoded
    only when an operation needs it (:func:`decode_cbor` on ``car[start:end]``)."""
    if type(car) is not bytes:
        raise BadCar(f"blocks is {type(car).__name__}, not bytes")
    n = len(car)
    size, pos = _varint(car, 0)
    if size == 0 or pos + size > n:
        raise BadCar(f"CAR header of {size} bytes in {n}")
    try:
        header = decode_cbor(car[pos : pos + size])
    except ValueError as exc:
        raise BadCar(f"CAR header: {exc}") from None
    if type(header) is not dict or header.get("version") != 1 or not isinstance(header.get("roots"), list):
        raise BadCar("CAR header is not {version: 1, roots: [...]}")
    if not header["roots"]:
        raise BadCar("CAR header has no roots")
    pos += size
    blocks: dict[bytes, tuple[int, int]] = {}
    while pos < n:
        initial = car[pos]
        if initial < 0x80:
            size, pos = initial, pos + 1
        elif pos + 1 < n and car[pos + 1] < 0x80:  # blocks of 128 bytes to 16 KiB: nearly all of them
            size, pos = (initial & 0x7F) | car[pos + 1] << 7, pos + 2
        else:
            size, pos = _varint(car, pos)
        end = pos + size
        if size == 0 or end > n:
            raise BadCar(f"block of {size} bytes at byte {pos} runs past the end ({n})")
        data_start = pos + 36 if car.startswith(DAG_CBOR_SHA256_CID, pos) else _cid_end(car, pos, end)
        blocks[car[pos:data_start]] = (data_start, end)
        pos = end
    return blocks


def _seq(value: Any) -> int:
    return value if type(value) is int and 0 <= value < 1 << 63 else -1


def decode_frame(frame: bytes, *, records: bool = False, max_bytes: int = MAX_FRAME_BYTES) -> Decoded:
    """Decode one raw frame. With ``records`` the events keep their record (JSON data model) and CID.

    Never raises on any input: every failure is a :class:`Decoded` with a reason (see the module docstring)."""
    try:
        return _decode_frame(frame, records, max_bytes)
    except Exception as exc:  # a case the checks below miss still must not end the stream
        return _fail("decoder_exception", exception_text(exc))


def _decode_frame(frame: bytes, records: bool, max_bytes: int) -> Decoded:
    if not isinstance(frame, bytes | bytearray | memoryview):
        return _fail("bad_cbor", f"a frame is bytes, not {type(frame).__name__}")
    if len(frame) > max_bytes:
        return _fail("too_big", f"{len(frame)} bytes > {max_bytes}")
    try:
        parts = decode_cbor(bytes(frame), multi=True)
    except TooDeep as exc:
        return _fail("too_deep", str(exc))
    except ValueError as exc:
        return _fail("bad_cbor", str(exc))
    if len(parts) != 2 or type(parts[0]) is not dict or type(parts[1]) is not dict:
        return _fail("bad_header", f"expected header and body, got {len(parts)} object(s)")
    header, body = parts
    op, type_ = header.get("op"), header.get("t")
    if op == -1 and type(op) is int:
        return _fail("error_frame", f"{short_repr(body.get('error', ''))}: {short_repr(body.get('message', ''))}")
    if op != 1 or type(op) is not int or type(type_) is not str:
        return _fail("bad_header", f"op={short_repr(op)} t={short_repr(type_)}")
    seq = _seq(body.get("seq"))
    if type_ not in HANDLED_TYPES:
        return _fail("unknown_type", short_repr(type_), clean_text(type_, 64), seq)
    try:
        if type_ == "#commit":
            return _commit(body, seq, records)
        if type_ in ("#identity", "#account"):
            try:
                time_us, naive = _event_time(body.get("time"))
            except ValueError as exc:
                return _fail("bad_time", str(exc), type_, seq)
            did = body.get("did")
            if not is_valid_did(did):
                return _fail("bad_did", f"did {short_repr(did)}", type_, seq)
            kind = IDENTITY if type_ == "#identity" else ACCOUNT
            extra = {k: to_json_model(v) for k, v in body.items() if k not in ("did", "seq", "time")}
            out = Decoded(type=type_, seq=seq, events=[Event(time_us, seq, kind, did, extra=extra)])
            if naive:
                out.skipped["naive_time"] += 1
            return out
        # #sync (repo state reset, no operations) and #info (e.g. OutdatedCursor) carry no events
        return Decoded(type=type_, seq=seq, info={k: to_json_model(v) for k, v in body.items() if k != "blocks"})
    except (KeyError, TypeError, ValueError) as exc:
        return _fail("bad_body", exception_text(exc), type_, seq)


def _valid_rev(rev: Any) -> bool:
    """None, or a TID-like string (record-key characters, at most 64)."""
    if rev is None:
        return True
    if type(rev) is not str or not 0 < len(rev) <= MAX_REV_CHARS:
        return False
    return (rev.isascii() and rev.isalnum()) or RKEY_RE.fullmatch(rev) is not None


def _event_time(value: Any) -> tuple[int, bool]:
    """(time_us, naive): an RFC 3339 time, or one without a timezone read as UTC (naive True). ``ValueError`` else."""
    try:
        return parse_time_us(value), False
    except ValueError:
        if isinstance(value, str) and NAIVE_TIME_RE.fullmatch(value) is not None:
            return parse_time_us(value + "Z"), True
        raise


def _commit(body: dict[str, Any], seq: int, records: bool) -> Decoded:
    try:
        time_us, naive = _event_time(body.get("time"))
    except ValueError as exc:
        return _fail("bad_time", str(exc), "#commit", seq)
    ops, rev = body.get("ops"), body.get("rev")
    if type(ops) is not list:
        return _fail("bad_body", f"ops is {type(ops).__name__}, not a list", "#commit", seq)
    if not _valid_rev(rev):
        return _fail("bad_body", f"rev {short_repr(rev)}", "#commit", seq)
    rev = rev or ""
    out = Decoded(type="#commit", seq=seq)
    if naive:
        out.skipped["naive_time"] += 1
    actor = body.get("repo")
    if not is_valid_did(actor):
        if ops:
            out.skipped["bad_did"] += len(ops)
        out.detail = clean_text(f"repo {short_repr(actor)}")
        return out
    car: Any = body.get("blocks")  # bytes when there are records (checked by car_blocks), else anything
    blocks: dict[bytes, tuple[int, int]] | None = None  # read at the first create or update
    if body.get("tooBig") is True and not car:
        blocks = {}  # the relay left the records out: creates and updates are counted, deletes kept
    for op in ops:
        if type(op) is not dict:
            out.skipped["bad_op"] += 1
            continue
        action, path = op.get("action"), op.get("path")
        if type(path) is not str or path.count("/") != 1:
            out.skipped["bad_path"] += 1
            continue
        collection, rkey = path.split("/", 1)
        if not is_valid_nsid(collection):
            out.skipped["bad_collection"] += 1
            continue
        if not is_valid_rkey(rkey):
            out.skipped["bad_rkey"] += 1
            continue
        if action == "delete":
            out.events.append(Event(time_us, seq, DELETE, actor, "", collection, rkey, "delete", rev))
            continue
        if action not in ("create", "update"):
            out.skipped["bad_action"] += 1
            continue
        if blocks is None:
            try:
                blocks = car_blocks(car)
            except BadCar as exc:
                return _fail("bad_car", str(exc), "#commit", seq)
        cid = op.get("cid")
        span = blocks.get(cid) if type(cid) is bytes else None
        if span is None:
            out.skipped["too_big" if not blocks and body.get("tooBig") is True else "missing_block"] += 1
            continue
        try:
            record = decode_cbor(car[span[0] : span[1]])
        except TooDeep:
            out.skipped["too_deep"] += 1
            continue
        except ValueError:
            out.skipped["bad_record"] += 1
            continue
        if type(record) is not dict:
            out.skipped["bad_record"] += 1
            continue
        kind, subject, dropped = classify_record(collection, record)
        if dropped:
            out.skipped["bad_subject"] += 1
        event = Event(time_us, seq, kind, actor, subject, collection, rkey, action, rev)
        if records:
            event.cid = cid_string(cid)
            event.record = record_json(car[span[0] : span[1]], record)
        out.events.append(event)
    return out
