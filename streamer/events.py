"""Normalized firehose events: who did what to whom, and when (event time).

Every repo operation, identity and account change becomes one :class:`Event` ``(time_us, seq, kind, actor,
subject)``. The subject is the DID the actor attended to, read from the record itself: a like's or repost's
``subject.uri``, a reply's ``reply.parent.uri``, a quote's embedded record uri, a follow's or block's ``subject``.
``time_us`` is the commit's ``time`` (event time, microseconds since the epoch), so a replay of an archive gives the
same state as the live run that recorded it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

POST, REPLY, QUOTE, REPOST, LIKE = "post", "reply", "quote", "repost", "like"
FOLLOW, BLOCK, DELETE, PROFILE = "follow", "block", "delete", "profile"
IDENTITY, ACCOUNT, OTHER = "identity", "account", "other"
KINDS = (POST, REPLY, QUOTE, REPOST, LIKE, FOLLOW, BLOCK, DELETE, PROFILE, IDENTITY, ACCOUNT, OTHER)
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}

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


def parse_time_us(value: Any) -> int:
    """RFC 3339 timestamp (as in a commit's ``time``) to integer microseconds since the epoch."""
    if not isinstance(value, str):
        raise ValueError(f"timestamp is not a string: {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp has no timezone: {value!r}")
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def did_of_uri(uri: Any) -> str:
    """The repository DID of an ``at://DID/collection/rkey`` URI, or "" when there is none."""
    if not isinstance(uri, str) or not uri.startswith("at://"):
        return ""
    authority = uri[5:].split("/", 1)[0]
    return authority if authority.startswith("did:") else ""


def _quoted_uri(embed: Any) -> Any:
    if not isinstance(embed, dict) or embed.get("$type") not in QUOTE_EMBEDS:
        return None
    inner = embed.get("record")
    if embed.get("$type") == "app.bsky.embed.recordWithMedia" and isinstance(inner, dict):
        inner = inner.get("record")
    return inner.get("uri") if isinstance(inner, dict) else None


def classify(collection: str, record: Any) -> tuple[str, str]:
    """(kind, subject DID) of a created or updated record of ``collection``. Unknown collections are ``other``."""
    kind = COLLECTION_KIND.get(collection, OTHER)
    if not isinstance(record, dict):
        return kind, ""
    if kind in (LIKE, REPOST):
        subject = record.get("subject")
        return kind, did_of_uri(subject.get("uri")) if isinstance(subject, dict) else ""
    if kind in (FOLLOW, BLOCK):
        subject = record.get("subject")
        return kind, subject if isinstance(subject, str) and subject.startswith("did:") else ""
    if kind == POST:
        reply = record.get("reply")
        if isinstance(reply, dict) and isinstance(reply.get("parent"), dict):
            return REPLY, did_of_uri(reply["parent"].get("uri"))
        quoted = _quoted_uri(record.get("embed"))
        if quoted is not None:
            return QUOTE, did_of_uri(quoted)
    return kind, ""
