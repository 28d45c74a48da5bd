"""Normalized firehose events: who did what to whom, and when (event time).

Every repo operation, identity and account change becomes one :class:`Event` ``(time_us, seq, kind, actor,
subject)``. The subject is the DID the actor attended to, read from the record itself: a like's or repost's
``subject.uri``, a reply's ``reply.parent.uri``, a quote's embedded record uri, a follow's or block's ``subject``.
``time_us`` is the commit's ``time`` (event time, microseconds since the epoch), so a replay of an archive gives the
same state as the live run that recorded it.

The firehose is public and anyone can write to it, so the identifiers that become keys of the state (actor and
subject DIDs, collections, record keys) are checked here against the atproto syntax before they reach an event:
:func:`is_valid_did`, :func:`is_valid_rkey`, :func:`is_valid_nsid`. A string that passes is printable ASCII of
bounded length, so it can be interned, logged and written to a checkpoint as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard

POST, REPLY, QUOTE, REPOST, LIKE = "post", "reply", "quote", "repost", "like"
FOLLOW, BLOCK, DELETE, PROFILE = "follow", "block", "delete", "profile"
IDENTITY, ACCOUNT, OTHER = "identity", "account", "other"
KINDS = (POST, REPLY, QUOTE, REPOST, LIKE, FOLLOW, BLOCK, DELETE, PROFILE, IDENTITY, ACCOUNT, OTHER)

COLLECTION_KIND = {
    "app.bsky.feed.post": POST,
    "app.bsky.feed.repost": REPOST,
    "app.bsky.feed.like": LIKE,
    "app.bsky.graph.follow": FOLLOW,
    "app.bsky.graph.block": BLOCK,
    "app.bsky.actor.profile": PROFILE,
}
KIND_COLLECTION = {POST: "app.bsky.feed.post", REPLY: "app.bsky.feed.post", QUOTE: "app.bsky.feed.post"}
KIND_COLLECTION.update({v: k for k, v in COLLECTION_KIND.items() if v != POST})

QUOTE_EMBEDS = ("app.bsky.embed.record", "app.bsky.embed.recordWithMedia")

# Event times outside [2000, 2200) are not clock skew but garbage: accepted, one of them would move the event-time
# watermark decades away and expire (or freeze) the whole window.
MIN_TIME_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z
MAX_TIME_US = 7_258_118_400_000_000  # 2200-01-01T00:00:00Z
MAX_TIMESTAMP_CHARS = 64
RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)

# atproto identifier syntax (atproto.com/specs/did, /record-key, /nsid). fullmatch, never match + "$": in Python
# "$" also matches before a trailing newline, which would let "did:plc:x\n" through.
MAX_DID_CHARS = 2048
MAX_RKEY_CHARS = 512
MAX_NSID_CHARS = 317
DID_RE = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
RKEY_RE = re.compile(r"[A-Za-z0-9._:~-]{1,512}")
NSID_RE = re.compile(r"[a-zA-Z0-9-]{1,63}(?:\.[a-zA-Z0-9-]{1,63})+\.[a-zA-Z][a-zA-Z0-9]{0,62}")


def is_valid_did(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a DID in the atproto syntax: ``did:<method>:<identifier>``, method lowercase letters,
    identifier of ``[A-Za-z0-9._:%-]`` not ending in ``:`` or ``%``, at most 2 KiB. So no whitespace, control
    characters, non-ASCII or lone surrogates: a valid DID is safe as a state key, in a log line and in JSON."""
    if type(value) is not str or len(value) > MAX_DID_CHARS:
        return False
    if value.startswith("did:plc:") and len(value) > 8 and value.isascii() and value[8:].isalnum():
        return True  # nearly every DID on the network, without the regex
    return DID_RE.fullmatch(value) is not None


def is_valid_rkey(value: object) -> TypeGuard[str]:
    """Whether ``value`` is an atproto record key: 1-512 characters of ``[A-Za-z0-9._:~-]``, not ``.`` or ``..``."""
    if type(value) is not str or not 0 < len(value) <= MAX_RKEY_CHARS:
        return False
    if value.isascii() and value.isalnum():
        return True  # TIDs and "self", without the regex
    return RKEY_RE.fullmatch(value) is not None and value not in (".", "..")


def is_valid_nsid(value: object) -> TypeGuard[str]:
    """Whether ``value`` looks like an NSID (a collection name such as ``app.bsky.feed.post``): three or more
    dot-separated segments of ASCII letters, digits and hyphens, the last starting with a letter, at most 317
    characters. Looser than the spec on purpose: new collections must not be rejected, garbage must."""
    if type(value) is not str:
        return False
    if value in COLLECTION_KIND:
        return True
    return len(value) <= MAX_NSID_CHARS and NSID_RE.fullmatch(value) is not None


@dataclass(slots=True)
class Event:
    """One normalized event. ``subject`` is "" when the event attends to nobody. ``collection``, ``rkey``,
    ``operation``, ``rev``, ``cid`` and ``record`` describe the repo operation (empty for identity/account)."""

    time_us: int
    seq: int
    kind: str
    actor: str
    subject: str = ""
    collection: str = ""
    rkey: str = ""
    operation: str = ""
    rev: str = ""
    cid: str = ""
    record: dict[str, Any] | None = field(default=None, compare=False)
    extra: dict[str, Any] | None = field(default=None, compare=False)

    def key(self) -> tuple[int, int, str, str, str]:
        """The normalized tuple (time_us, seq, kind, actor, subject)."""
        return (self.time_us, self.seq, self.kind, self.actor, self.subject)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time_us(value: Any) -> int:
    """RFC 3339 timestamp (as in a commit's ``time``) to integer microseconds since the epoch.

    Raises ``ValueError`` (and nothing else) for anything that is not an RFC 3339 date-time with a timezone in
    [2000, 2200), so a caller can count it as one reason. The syntax is checked first because
    ``datetime.fromisoformat`` accepts far more than RFC 3339 (week dates, a trailing NUL); the arithmetic is exact
    integers, with no float rounding and no overflow."""
    if not isinstance(value, str):
        raise ValueError(f"timestamp is not a string but {type(value).__name__}")
    if len(value) > MAX_TIMESTAMP_CHARS or RFC3339_RE.fullmatch(value) is None:
        raise ValueError(f"not an RFC 3339 timestamp: {value[:MAX_TIMESTAMP_CHARS]!a}")
    text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
    try:
        delta = datetime.fromisoformat(text) - _EPOCH
    except (ValueError, OverflowError, TypeError) as exc:
        raise ValueError(f"not an RFC 3339 timestamp: {value!a} ({exc})") from None
    time_us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not MIN_TIME_US <= time_us < MAX_TIME_US:
        raise ValueError(f"timestamp out of range [2000, 2200): {value!a}")
    return time_us


def is_valid_time_us(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an int (not a bool, not a float) event time in microseconds within [2000, 2200)."""
    return type(value) is int and MIN_TIME_US <= value < MAX_TIME_US


def did_of_uri(uri: Any) -> str:
    """The repository DID of an ``at://DID/collection/rkey`` URI, or "" when there is no valid one (a handle as
    the authority, a malformed DID, not a URI at all)."""
    if not isinstance(uri, str) or not uri.startswith("at://"):
        return ""
    end = uri.find("/", 5, 6 + MAX_DID_CHARS)
    if end < 0:
        end = len(uri) if len(uri) <= 5 + MAX_DID_CHARS else 5
    authority = uri[5:end]
    return authority if is_valid_did(authority) else ""


def _quoted_uri(embed: Any) -> Any:
    if not isinstance(embed, dict) or embed.get("$type") not in QUOTE_EMBEDS:
        return None
    inner = embed.get("record")
    if embed.get("$type") == "app.bsky.embed.recordWithMedia" and isinstance(inner, dict):
        inner = inner.get("record")
    return inner.get("uri") if isinstance(inner, dict) else None


def classify_record(collection: str, record: Any) -> tuple[str, str, bool]:
    """``(kind, subject DID, subject dropped)`` of a created or updated record of ``collection``.

    ``subject dropped`` is true when the kind attends to someone (like, repost, follow, block, reply, quote) but
    the record names no valid subject DID: the activity is real and keeps its kind, only the attention edge is
    lost, and the caller counts that (``bad_subject``). Unknown collections are ``other``."""
    kind = COLLECTION_KIND.get(collection, OTHER)
    if not isinstance(record, dict):
        return kind, "", kind in (LIKE, REPOST, FOLLOW, BLOCK)
    if kind in (LIKE, REPOST):
        ref = record.get("subject")
        subject = did_of_uri(ref.get("uri")) if isinstance(ref, dict) else ""
        return kind, subject, not subject
    if kind in (FOLLOW, BLOCK):
        followed = record.get("subject")
        return (kind, followed, False) if is_valid_did(followed) else (kind, "", True)
    if kind == POST:
        reply = record.get("reply")
        if isinstance(reply, dict) and isinstance(reply.get("parent"), dict):
            subject = did_of_uri(reply["parent"].get("uri"))
            return REPLY, subject, not subject
        quoted = _quoted_uri(record.get("embed"))
        if quoted is not None:
            subject = did_of_uri(quoted)
            return QUOTE, subject, not subject
    return kind, "", False


def classify(collection: str, record: Any) -> tuple[str, str]:
    """(kind, subject DID) of a created or updated record of ``collection``; the subject is "" when the record
    attends to nobody or names no valid DID. Unknown collections are ``other``."""
    kind, subject, _ = classify_record(collection, record)
    return kind, subject


def rfc3339(time_us: int, digits: int = 3) -> str:
    """``2026-07-04T14:38:07.517Z``: UTC with milliseconds and "Z", as relays write a commit's ``time`` (``digits=6``:
    microseconds, as Jetstream v2 writes its ``time``); the one formatter for every time skyattr writes (integer
    arithmetic, so no float rounding moves a millisecond)."""
    dt = datetime.fromtimestamp(time_us // 1_000_000, UTC).replace(microsecond=time_us % 1_000_000)
    fraction = dt.microsecond // 1000 if digits == 3 else dt.microsecond
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{fraction:0{digits}d}Z"
