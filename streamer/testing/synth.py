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
import functools
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
from streamer.sources import did_documents
from streamer.sources.archive import ArchiveWriter
from streamer.testing import identity, mst
from streamer.testing.encode import Op, account_frame, block, encode_commit, identity_frame, tid

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

# Record details, in the shares of the real sample (148 commits, 2026-07-04): 18 of 105 likes and 6 of 15 reposts
# carry `via` (here: of a post that was reposted), 5 of 17 posts have facets, 4 of 17 a link card; posts come with
# a threadgate in the same commit now and then (the sample's one multi-op commit was a thread of 3 posts).
VIA_SHARE = {"like": 0.5, "repost": 0.6}  # of engagement with a reposted post: ~17% / ~40% of all once warm
FACET_SHARE = 0.3
EXTERNAL_SHARE = 0.24
GATE_SHARE = 0.05
PROFILE_PATH = "app.bsky.actor.profile/self"
# Records a repo holds from before the archive, by decade of followers (0-9, 10-99, ...): the MST a commit proves
# against is then as deep as a real account's. Real frames are ~5.5 KB mostly of such proof nodes.
HISTORY_SIZES = (2000, 6000, 20000, 60000, 120000)
HISTORY_MIX = (("app.bsky.feed.like", 0.7), ("app.bsky.feed.post", 0.12), ("app.bsky.feed.repost", 0.1))
HISTORY_MIX += (("app.bsky.graph.follow", 0.08),)
SITES = ("example.com", "news.example.org", "blog.example.net", "video.example.com", "papers.example.edu")


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

    def __init__(self, agents: int, seed: int, start_us: int = DEFAULT_START_US) -> None:
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
        # Each repo's MST (commits carry its proofs); None until the account's first commit, when it starts as the
        # repo of an existing account: its profile record (so a profile change is an update, as on the network).
        self.trees: list[mst.Node | None] = [None] * agents
        self.seed = seed
        self.start_us = start_us
        # Record details that change no event (via, facets, embeds, gates) come from their own stream, so the events
        # of an archive (kinds, actors, subjects, times) do not depend on how records are dressed.
        self.style = random.Random(f"skyattr-synth-records:{seed}")
        self.reposted: dict[str, tuple[str, str]] = {}  # post URI -> its latest repost (URI, CID), for likes' `via`

    def tree(self, actor: int) -> mst.Node:
        """The repo of ``actor``, made at its first commit: the history of an existing account (see
        :func:`_history`), sized by its followers, plus its profile record."""
        tree = self.trees[actor]
        if tree is None:
            size = HISTORY_SIZES[min(len(HISTORY_SIZES) - 1, int(math.log10(1 + self.followers[actor])))]
            profile = {
                "$type": "app.bsky.actor.profile",
                "displayName": self.handles[actor].split(".")[0].title(),
                "createdAt": rfc3339(self.start_us),
            }
            history = _history(self.seed, size, self.start_us)
            tree = self.trees[actor] = mst.insert(history, PROFILE_PATH.encode(), block(profile)[0])
        return tree

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


@functools.lru_cache(maxsize=16)
def _history(seed: int, size: int, start_us: int) -> mst.Node:
    """The records an account wrote before the archive: ``size`` keys of the usual collections with TIDs of the two
    years before ``start_us``, each with a CID of its own.

    One tree per size, shared by every repo of that size (immutable trees share it for free), so a commit's proof
    is as deep as on a real account with that many records, at no cost per account. A consumer never sees these
    records, only the MST nodes a commit carries (what real frames' size is mostly made of)."""
    rng = random.Random(f"skyattr-synth-history:{seed}:{size}")
    span = 2 * 365 * 86_400 * 1_000_000
    collections = [c for c, _ in HISTORY_MIX]
    weights = [w for _, w in HISTORY_MIX]
    items = []
    for k in range(size):
        collection = rng.choices(collections, weights)[0]
        key = f"{collection}/{tid(start_us - span + rng.randrange(span), k)}".encode()
        items.append((key, mst.cid_of(b"history:" + key)))
    return mst.from_items(items)


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
    accounts: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """``(seq, raw frame)`` of a synthetic firehose of ``agents`` accounts over ``hours``, seq and time monotone.

    ``counts``, when given, is updated with the events emitted by kind (the kinds of :mod:`streamer.core.events`);
    ``accounts``, when given, receives the DID and latest handle of every account that acted or was followed, once
    the last frame is out (the accounts whose DID documents an archive needs).
    ``progress(done, total)``, when given, is called every :data:`PROGRESS_EVERY` events and after the last, with
    the events generated so far and the total this archive will have (drawn before the first one)."""
    if agents < 2:
        raise ValueError(f"synth needs at least 2 agents, got {agents}")
    if not (hours > 0 and math.isfinite(hours)):
        raise ValueError(f"synth needs a positive duration, got {hours} hours")
    model = _Model(agents, seed, start_time_us)
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
    if accounts is not None:
        accounts.update((model.dids[i], model.handles[i]) for i in sorted(model.seen_list))


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
    record: dict[str, Any] | None = None
    new_post: Post | None = None
    target: Post | None = None
    action, collection = "create", ""

    if kind == "delete":
        records = model.records[actor]
        if records:
            collection, rkey, _, post = records.pop() if rng.random() < 0.5 else _pop_random(rng, records)
            action = "delete"
            if post is not None:
                _forget_post(model, actor, post)
        else:
            kind = "like"
    if kind == "profile":
        collection, rkey = PROFILE_PATH.split("/")
        action = "update" if mst.get(model.tree(actor), PROFILE_PATH.encode()) is not None else "create"
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
            _add_via(model, record, target, VIA_SHARE[kind])
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
        assert record is not None
        _dress_post(model, record, seq)

    ops: list[Op] = [(action, collection, rkey, record)]
    if kind in ("post", "quote") and model.style.random() < GATE_SHARE:  # the composer writes a gate beside the post
        ops.append(("create", "app.bsky.feed.threadgate", rkey, _threadgate(model, did, rkey, created_at)))
    frame, model.trees[actor] = encode_commit(seq, did, t, ops, tree=model.tree(actor), since=model.rev[actor])
    model.rev[actor] = tid(t, seq)
    if record is not None and action == "create" and kind != "profile":  # a profile is updated, never deleted
        cid, _ = block(record)
        uri = f"at://{did}/{collection}/{rkey}"
        cid_str = libipld.encode_cid(cid)
        if collection == "app.bsky.feed.post":
            reply = record.get("reply")
            if reply:
                new_post = Post(actor, uri, cid_str, reply["root"]["uri"], reply["root"]["cid"])
            else:
                new_post = Post(actor, uri, cid_str, uri, cid_str)
            model.add_post(new_post)
        elif kind == "repost" and target is not None:
            model.reposted[target.uri] = (uri, cid_str)
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


def _add_via(model: _Model, record: dict[str, Any], target: Post, share: float) -> None:
    """``via``: the repost through which the actor saw ``target``, when it was reposted (clients add it)."""
    via = model.reposted.get(target.uri)
    if via is not None and model.style.random() < share:
        record["via"] = {"uri": via[0], "cid": via[1]}


def _dress_post(model: _Model, record: dict[str, Any], seq: int) -> None:
    """Facets (links, tags, mentions with their UTF-8 byte ranges) and link cards, in the real sample's shares."""
    style = model.style
    if style.random() < FACET_SHARE:
        text = record["text"]
        facets = []
        for _ in range(1 + int(style.expovariate(1.5))):
            feature_kind = style.choices(("link", "tag", "mention"), weights=(0.5, 0.3, 0.2))[0]
            if feature_kind == "mention" and model.seen_list:
                who = model.seen_list[style.randrange(len(model.seen_list))]
                piece, feature = "@" + model.handles[who], {"did": model.dids[who]}
            elif feature_kind == "tag":
                word = style.choice(WORDS)
                piece, feature = "#" + word, {"tag": word}
            else:
                url = f"https://{style.choice(SITES)}/{style.choice(WORDS)}/{style.randrange(10**6)}"
                piece, feature = url, {"uri": url}
                feature_kind = "link"
            start = len(text.encode()) + 1
            text = f"{text} {piece}"
            facets.append(
                {
                    "$type": "app.bsky.richtext.facet",
                    "index": {"byteStart": start, "byteEnd": start + len(piece.encode())},
                    "features": [{"$type": f"app.bsky.richtext.facet#{feature_kind}", **feature}],
                }
            )
        record["text"] = text
        record["facets"] = facets
    if "embed" not in record and style.random() < EXTERNAL_SHARE:
        site = style.choice(SITES)
        external: dict[str, Any] = {
            "uri": f"https://{site}/{style.choice(WORDS)}-{style.choice(WORDS)}-{style.randrange(10**5)}",
            "title": " ".join(style.choices(WORDS, k=3 + style.randrange(8))).capitalize(),
            "description": " ".join(style.choices(WORDS, k=8 + style.randrange(24))).capitalize(),
        }
        if style.random() < 0.7:
            external["thumb"] = _blob(f"thumb:{seq}", "image/jpeg", style.randrange(20_000, 400_000))
        record["embed"] = {"$type": "app.bsky.embed.external", "external": external}


def _threadgate(model: _Model, did: str, rkey: str, created_at: str) -> dict[str, Any]:
    allow = model.style.choice(
        ([{"$type": "app.bsky.feed.threadgate#followingRule"}], [{"$type": "app.bsky.feed.threadgate#mentionRule"}], [])
    )
    return {
        "$type": "app.bsky.feed.threadgate",
        "post": f"at://{did}/app.bsky.feed.post/{rkey}",
        "allow": allow,
        "createdAt": created_at,
    }


def _blob(name: str, mime: str, size: int) -> dict[str, Any]:
    ref = b"\x01\x55\x12\x20" + hashlib.sha256(name.encode()).digest()  # CIDv1, raw codec: the blob's bytes
    return {"$type": "blob", "ref": ref, "mimeType": mime, "size": size}


def _images(rng: random.Random, seq: int) -> dict[str, Any]:
    width, height = rng.choice([(1200, 800), (1080, 1350), (2000, 1500), (800, 800)])
    image = _blob(f"blob:{seq}", "image/jpeg", rng.randrange(40_000, 900_000))
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
    documents: Path  # the DID documents of the archive's accounts, beside it
    accounts: int


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
    :func:`synth_frames`.

    The DID documents of its accounts (signing keys, handles) go beside it, in :func:`did_documents.documents_path`."""
    counts: Counter[str] = Counter()
    accounts: dict[str, str] = {}
    created = datetime.fromtimestamp(start_time_us // 1_000_000, UTC).isoformat(timespec="seconds")
    with ArchiveWriter(
        None, source_name(agents, hours, seed), file=path, created=created, flush_every=FLUSH_EVERY, level=ZSTD_LEVEL
    ) as writer:
        frames = synth_frames(
            agents, hours, seed, start_time_us, first_seq, counts=counts, accounts=accounts, progress=progress
        )
        for seq, frame in frames:
            writer.write(frame, seq)
    documents = did_documents.documents_path(path)
    did_documents.write_documents(
        documents, (identity.document(did, handle, identity.signing_key(did)) for did, handle in accounts.items())
    )
    frames_written, raw, last_seq = writer.total_frames, writer.raw_bytes, writer.last_seq
    size = path.stat().st_size
    return SynthResult(path, frames_written, size, raw, first_seq, last_seq, counts, documents, len(accounts))


def default_archive() -> Path:
    """The bundled synthetic archive (2000 agents, 24 h, seed 0): a realistic input available without network."""
    return Path(str(resources.files("streamer") / "data" / DEFAULT_ARCHIVE))
