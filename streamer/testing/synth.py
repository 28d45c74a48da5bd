"""``skyattr synth``: realistic synthetic firehose archives in the real wire format.

The real sample holds 150 frames; tests, demos and benchmarks need days of traffic from thousands of accounts, with
the structure that makes attribution interesting, and byte-for-byte the frames a relay sends so every decoding path
is exercised. The model (shaped after DESIGN §7 and :mod:`kernels.synthetic`):

* followers are Pareto-distributed; an account's *popularity* is ``(1 + followers) ** ATTENTION_EXPONENT``. Half
  of all engagement (likes, reposts, replies, quotes) goes to an author drawn by popularity (preferential
  attachment: a small head gets it), the other half to an author drawn uniformly among those who posted (one's
  follows and threads), so the top 1% receives roughly 30% of likes and reposts while the tail beyond the top 10%
  still receives about a quarter;
* activity is heavy-tailed too (Pareto propensity, mildly correlated with followers), about a third of accounts are
  silent, and posting is spread more evenly than liking (many accounts post a little), skewed mildly towards
  visible accounts;
* the event mix follows the real sample: likes 70%, posts 11% (of which replies and quotes), reposts 10%, follows
  4%, deletes 3%, rare blocks, profile updates and identity/account changes; times follow a mild daily cycle;
* every like, repost, reply and quote points at a post created earlier in the archive (and not deleted since), and
  every follow or block at an account seen earlier, so each subject is an agent present in the archive; deletes
  remove records their actor created earlier.

Everything is drawn from Python's :class:`random.Random` seeded by ``seed`` (stable across Python versions, unlike
numpy's Generator streams), and all times derive from ``start_time_us``: the same arguments give byte-identical
archives, the bundled default included.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from base64 import b32encode
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import libipld

from streamer.core.events import rfc3339
from streamer.sources.archive import ArchiveWriter
from streamer.testing.encode import account_frame, block, encode_commit, identity_frame, tid

DEFAULT_START_US = int(datetime(2026, 7, 4, tzinfo=UTC).timestamp()) * 1_000_000
EVENTS_PER_AGENT_HOUR = 0.25  # chosen so that 2000 agents × 24 h is a few MiB (the bundled default archive)
FLUSH_EVERY = 1000  # frames per zstd frame, as ArchiveWriter's default
ZSTD_LEVEL = 3
PROGRESS_EVERY = 1000  # events between two progress calls: cheap next to generating them, often enough for a bar
DEFAULT_ARCHIVE = "default.skyarch.zst"

FOLLOWER_EXPONENT = 1.1  # Pareto tail of follower counts
ATTENTION_EXPONENT = 1.0  # popularity = (1 + followers) ** this: preferential attachment
ACTIVITY_EXPONENT = 1.6  # Pareto tail of activity propensity
INACTIVE_FRACTION = 0.3
POST_VISIBILITY_EXPONENT = 0.3  # posting skews towards visible accounts
POST_ACTIVITY_EXPONENT = 0.3  # ... and less towards active ones than liking does: many post a little
DAILY_AMPLITUDE = 0.4  # activity swings ±40% over the day, peaking at PEAK_HOUR UTC
PEAK_HOUR = 20.0

# Shares of generated events (commit operations, plus identity changes that emit an #identity and an #account frame).
MIX: dict[str, float] = {
    "like": 0.705,
    "post": 0.062,
    "reply": 0.04,
    "quote": 0.01,
    "repost": 0.10,
    "follow": 0.04,
    "delete": 0.03,
    "block": 0.005,
    "profile": 0.005,
    "identity": 0.003,
}

_WORDS_TEXT = (
    "the a to and of is in it you that i for on this with be are was have not just my so but what at like they all "
    "we about your can if one people time out more get when do how me now new good think today here there really "
    "day know who want see going first some great love still back make thanks work year need never much world "
    "post read thread news art music game book photo city night morning coffee dog cat team vote story data science "
    "open source paper bluesky sky feed week weekend summer rain sun friends family free live watch listen"
)
WORDS = _WORDS_TEXT.split()
LANGS = (("en", 0.72), ("ja", 0.08), ("pt", 0.07), ("de", 0.04), ("es", 0.04), ("fr", 0.03), ("ko", 0.02))
DELETE_RECORD_KEEP = 16  # per-actor recent records a delete may remove
POSTS_KEEP = 8  # per-author recent posts engagement may point at
PREFERENTIAL_SHARE = 0.5  # share of engagement drawn by popularity; the rest goes to any account that posted


@dataclass(frozen=True, slots=True)
class Post:
    author: int
    uri: str
    cid: str
    root_uri: str
    root_cid: str


def did_plc(seed: int, index: int) -> str:
    """A did:plc-shaped DID (24 lowercase base32 characters), deterministic in ``seed`` and ``index``."""
    digest = hashlib.sha256(f"skyattr-synth:{seed}:{index}".encode()).digest()
    return "did:plc:" + b32encode(digest).decode().lower()[:24]


def _handle(rng: random.Random, index: int) -> str:
    return f"{rng.choice(WORDS)}{rng.choice(WORDS)}{index}.bsky.social"


def _text(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=min(60, 3 + int(rng.paretovariate(1.5) * 4)))
    return " ".join(words)[:300]


class _Model:
    """The agents and the state the generator keeps while emitting events (what exists, who has been seen)."""

    def __init__(self, agents: int, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.n = agents
        self.dids = [did_plc(seed, i) for i in range(agents)]
        if len(set(self.dids)) != agents:
            raise ValueError("DID collision: choose another seed")
        self.handles = [_handle(rng, i) for i in range(agents)]
        followers = [math.floor((rng.paretovariate(FOLLOWER_EXPONENT) - 1.0) * 20.0) for _ in range(agents)]
        head_cut = sorted(followers)[int(0.95 * (agents - 1))]
        activity = []
        for f in followers:
            propensity = (rng.paretovariate(ACTIVITY_EXPONENT) - 0.8) * (1.0 + f) ** 0.3
            silent = rng.random() < INACTIVE_FRACTION and f < head_cut
            activity.append(0.0 if silent else propensity)
        top_two = sorted(range(agents), key=lambda i: -followers[i])[:2]
        for i in top_two:  # at least two accounts act, so engagement always has a subject other than its actor
            activity[i] = max(activity[i], 1.0)
        self.followers = followers
        self.popularity_cdf = list(itertools.accumulate((1.0 + f) ** ATTENTION_EXPONENT for f in followers))
        self.actor_cdf = list(itertools.accumulate(activity))
        posting = [
            a**POST_ACTIVITY_EXPONENT * (1.0 + f) ** POST_VISIBILITY_EXPONENT if a > 0 else 0.0
            for a, f in zip(activity, followers, strict=True)
        ]
        self.poster_cdf = list(itertools.accumulate(posting))
        self.seen = [False] * agents
        self.seen_list: list[int] = []
        self.posts: list[deque[Post]] = [deque(maxlen=POSTS_KEEP) for _ in range(agents)]
        self.posters: list[int] = []  # agents with at least one live post
        self.records: list[deque[tuple[str, str, bytes, Post | None]]] = [
            deque(maxlen=DELETE_RECORD_KEEP) for _ in range(agents)
        ]
        self.rev: list[str | None] = [None] * agents
        self.data: list[bytes | None] = [None] * agents

    def draw(self, cdf: list[float]) -> int:
        return min(bisect.bisect_right(cdf, self.rng.random() * cdf[-1]), self.n - 1)

    def popular(self, actor: int, ok: list[bool] | list[deque[Post]], fallback: list[int]) -> int | None:
        """An agent other than ``actor`` drawn by popularity among those with ``ok[i]``; after a few misses, one
        drawn uniformly from ``fallback`` (early in an archive, when few accounts have posted yet)."""
        for _ in range(64):
            i = self.draw(self.popularity_cdf)
            if i != actor and ok[i]:
                return i
        candidates = [i for i in fallback[-64:] if i != actor and ok[i]]
        return self.rng.choice(candidates) if candidates else None

    def add_post(self, post: Post) -> None:
        if not self.posts[post.author]:
            self.posters.append(post.author)
        self.posts[post.author].append(post)

    def target_post(self, actor: int) -> Post | None:
        """The post ``actor`` engages with: a recent post of an author drawn by popularity with probability
        :data:`PREFERENTIAL_SHARE` (the head: what everyone sees), otherwise of an author drawn uniformly among those
        who posted (the people one follows and the threads one is in: where the tail's attention comes from).
        Popularity alone would leave the tail next to nothing, which the real network does not."""
        author: int | None = None
        if self.posters and self.rng.random() >= PREFERENTIAL_SHARE:
            for _ in range(8):
                i = self.posters[self.rng.randrange(len(self.posters))]
                if i != actor and self.posts[i]:
                    author = i
                    break
        if author is None:
            author = self.popular(actor, self.posts, self.posters)
        if author is None:
            return None
        posts = self.posts[author]
        back = min(int(self.rng.expovariate(0.7)), len(posts) - 1)  # mostly the newest posts
        return posts[-1 - back]


def _times(rng: random.Random, count: int, start_us: int, duration_us: int) -> list[int]:
    """``count`` strictly increasing event times in ``[start, start + duration)`` with a mild daily cycle
    (thinning of uniform draws)."""
    out: list[int] = []
    top = 1.0 + DAILY_AMPLITUDE
    while len(out) < count:
        t = start_us + int(rng.random() * duration_us)
        hour = (t / 3.6e9) % 24.0
        if rng.random() * top < 1.0 + DAILY_AMPLITUDE * math.cos(2 * math.pi * (hour - PEAK_HOUR) / 24.0):
            out.append(t)
    out.sort()
    for k in range(1, count):  # strictly increasing, so record keys (TIDs of the time) never collide
        if out[k] <= out[k - 1]:
            out[k] = out[k - 1] + 1
    return out


def synth_frames(
    agents: int,
    hours: float,
    seed: int,
    start_time_us: int = DEFAULT_START_US,
    first_seq: int = 1,
    *,
    counts: Counter[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """``(seq, raw frame)`` of a synthetic firehose of ``agents`` accounts over ``hours``, seq and time monotone.

    ``counts``, when given, is updated with the events emitted by kind (the kinds of :mod:`streamer.core.events`).
    ``progress(done, total)``, when given, is called every :data:`PROGRESS_EVERY` events and after the last, with
    the events generated so far and the total this archive will have (drawn before the first one)."""
    if agents < 2:
        raise ValueError(f"synth needs at least 2 agents, got {agents}")
    if not (hours > 0 and math.isfinite(hours)):
        raise ValueError(f"synth needs a positive duration, got {hours} hours")
    model = _Model(agents, seed)
    rng = model.rng
    duration_us = max(1, round(hours * 3.6e9))
    expected = EVENTS_PER_AGENT_HOUR * agents * hours
    total = max(1, round(rng.gauss(expected, math.sqrt(expected))))
    kinds = list(MIX)
    kind_cdf = list(itertools.accumulate(MIX.values()))
    counts = counts if counts is not None else Counter()
    seq = first_seq
    for done, t in enumerate(_times(rng, total, start_time_us, duration_us)):
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress(done, total)
        kind = kinds[min(bisect.bisect_right(kind_cdf, rng.random() * kind_cdf[-1]), len(kinds) - 1)]
        if kind == "identity":
            actor = rng.randrange(agents)
            model.handles[actor] = _handle(rng, actor)
            did = model.dids[actor]
            yield seq, identity_frame(seq, did, t, model.handles[actor])
            yield seq + 1, account_frame(seq + 1, did, t, True)
            counts["identity"] += 1
            counts["account"] += 1
            seq += 2
            _mark_seen(model, actor)
            continue
        actor = model.draw(model.poster_cdf if kind in ("post", "reply", "quote") else model.actor_cdf)
        frame, kind = _commit(model, rng, kind, actor, seq, t)
        counts[kind] += 1
        yield seq, frame
        seq += 1
        _mark_seen(model, actor)
    if progress is not None:
        progress(total, total)


def _mark_seen(model: _Model, actor: int) -> None:
    if not model.seen[actor]:
        model.seen[actor] = True
        model.seen_list.append(actor)


def _commit(model: _Model, rng: random.Random, kind: str, actor: int, seq: int, t: int) -> tuple[bytes, str]:
    """Encode one commit of ``kind`` by ``actor``; a kind with nothing to act on yet (a delete with no earlier
    record, a like before any post exists) falls back to a like, then to an original post."""
    did = model.dids[actor]
    created_at = rfc3339(t - int(rng.random() * 2_000_000))
    rkey = tid(t, seq)
    deleted: dict[str, bytes] = {}
    record: dict[str, Any] | None = None
    new_post: Post | None = None
    action, collection = "create", ""

    if kind == "delete":
        records = model.records[actor]
        if records:
            collection, rkey, cid, post = records.pop() if rng.random() < 0.5 else _pop_random(rng, records)
            action = "delete"
            deleted[f"{collection}/{rkey}"] = cid
            if post is not None:
                _forget_post(model, actor, post)
        else:
            kind = "like"
    if kind == "profile":
        action, collection, rkey = "update", "app.bsky.actor.profile", "self"
        record = {
            "$type": "app.bsky.actor.profile",
            "displayName": " ".join(rng.choices(WORDS, k=2)).title(),
            "description": _text(rng),
            "createdAt": created_at,
        }
    if kind in ("follow", "block"):
        subject = model.popular(actor, model.seen, model.seen_list)
        if subject is None:
            kind = "post"
        else:
            collection = f"app.bsky.graph.{kind}"
            record = {"$type": collection, "subject": model.dids[subject], "createdAt": created_at}
    if kind in ("like", "repost", "reply", "quote"):
        target = model.target_post(actor)
        if target is None:
            kind = "post"
        elif kind in ("like", "repost"):
            collection = f"app.bsky.feed.{kind}"
            record = {"$type": collection, "subject": {"uri": target.uri, "cid": target.cid}, "createdAt": created_at}
        else:
            record = _post_record(rng, created_at)
            if kind == "reply":
                record["reply"] = {
                    "root": {"uri": target.root_uri, "cid": target.root_cid},
                    "parent": {"uri": target.uri, "cid": target.cid},
                }
            else:
                record["embed"] = {"$type": "app.bsky.embed.record", "record": {"uri": target.uri, "cid": target.cid}}
    if kind == "post":
        record = _post_record(rng, created_at)
        if rng.random() < 0.15:
            record["embed"] = _images(rng, seq)
    if kind in ("post", "reply", "quote"):
        collection = "app.bsky.feed.post"

    ops = [(action, collection, rkey, record)]
    frame, data = encode_commit(
        seq, did, t, ops, since=model.rev[actor], prev_data=model.data[actor], deleted=deleted or None
    )
    model.rev[actor], model.data[actor] = tid(t, seq), data
    if record is not None and action == "create":
        cid, _ = block(record)
        if collection == "app.bsky.feed.post":
            uri = f"at://{did}/{collection}/{rkey}"
            cid_str = libipld.encode_cid(cid)
            reply = record.get("reply")
            if reply:
                new_post = Post(actor, uri, cid_str, reply["root"]["uri"], reply["root"]["cid"])
            else:
                new_post = Post(actor, uri, cid_str, uri, cid_str)
            model.add_post(new_post)
        model.records[actor].append((collection, rkey, cid, new_post))
    return frame, kind


def _pop_random(rng: random.Random, records: deque[Any]) -> Any:
    k = rng.randrange(len(records))
    item = records[k]
    del records[k]
    return item


def _forget_post(model: _Model, author: int, post: Post) -> None:
    posts = model.posts[author]
    if post in posts:
        posts.remove(post)
    # an author whose posts are all gone stays in ``posters``; draws check ``posts[i]`` before using it


def _post_record(rng: random.Random, created_at: str) -> dict[str, Any]:
    lang = rng.choices([code for code, _ in LANGS], weights=[w for _, w in LANGS])[0]
    return {"$type": "app.bsky.feed.post", "text": _text(rng), "langs": [lang], "createdAt": created_at}


def _images(rng: random.Random, seq: int) -> dict[str, Any]:
    blob = b"\x01\x55\x12\x20" + hashlib.sha256(f"blob:{seq}".encode()).digest()  # CIDv1 raw codec: an image blob
    width, height = rng.choice([(1200, 800), (1080, 1350), (2000, 1500), (800, 800)])
    image = {"$type": "blob", "ref": blob, "mimeType": "image/jpeg", "size": rng.randrange(40_000, 900_000)}
    return {
        "$type": "app.bsky.embed.images",
        "images": [{"alt": "", "image": image, "aspectRatio": {"width": width, "height": height}}],
    }


@dataclass
class SynthResult:
    path: Path
    frames: int
    bytes: int
    raw_bytes: int
    first_seq: int
    last_seq: int
    counts: Counter[str]


def source_name(agents: int, hours: float, seed: int) -> str:
    return f"synth:agents={agents},hours={hours:g},seed={seed}"


def write_synth_archive(
    path: Path,
    agents: int,
    hours: float,
    seed: int,
    *,
    start_time_us: int = DEFAULT_START_US,
    first_seq: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write one ``.skyarch.zst`` file with the layout of :class:`streamer.sources.archive.ArchiveWriter` (JSON header,
    zstd frames of ``[u32 len][frame]`` every :data:`FLUSH_EVERY` frames, JSON trailer).

    The header's ``created`` is the archive's start time, not the wall clock, so the file is byte-identical on
    every run; :class:`~streamer.sources.archive.ArchiveWriter` writes it under a temporary name and renames it,
    so an interrupted run leaves neither a half file under ``path`` nor a temporary one. ``progress``: as for
    :func:`synth_frames`."""
    counts: Counter[str] = Counter()
    created = datetime.fromtimestamp(start_time_us // 1_000_000, UTC).isoformat(timespec="seconds")
    with ArchiveWriter(
        None, source_name(agents, hours, seed), file=path, created=created, flush_every=FLUSH_EVERY, level=ZSTD_LEVEL
    ) as writer:
        for seq, frame in synth_frames(agents, hours, seed, start_time_us, first_seq, counts=counts, progress=progress):
            writer.write(frame, seq)
    frames, raw, last_seq = writer.total_frames, writer.raw_bytes, writer.last_seq
    return SynthResult(path, frames, path.stat().st_size, raw, first_seq, last_seq, counts)


def default_archive() -> Path:
    """The bundled synthetic archive (2000 agents, 24 h, seed 0): a realistic input available without network."""
    return Path(str(resources.files("streamer") / "data" / DEFAULT_ARCHIVE))
