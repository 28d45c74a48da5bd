"""The Kafka sink's outbox: an ordered, counted buffer of serialised messages. Pure Python, no I/O.

:class:`KafkaOutbox` holds :class:`PendingMessage` objects in publishing (``seq``) order. The sender
(:mod:`streamer.sinks.kafka_sender`) works on its head only: it *claims* the first messages for one transaction,
*releases* them when that transaction is abandoned, and *completes* them once it committed; messages a committed
transaction already holds (found after a restart or a lost commit answer) are dropped *through* a sequence number.
A bounded outbox (no results journal behind it) drops its oldest *unclaimed* message when full: during a long outage
the newest results are the valuable ones, and claimed messages may be committed any moment, so forgetting them
would make the counts lie. With a journal the outbox is unbounded: the journal holds every undelivered result
anyway, and a gap in the order would break the publisher's mark.

Every outcome is counted per (Kafka topic, outcome) in :class:`KafkaStats`, the plain counters a metrics collector
reads at scrape time (see :meth:`KafkaStats.snapshot`). Outcomes: ``sent``, ``failed`` (one delivery attempt; a
message can fail many times during an outage), ``dropped`` (buffer full), ``rejected`` (refused by the broker for
what it is, given up), ``already_written`` (a committed transaction already holds it: published again after a
restart, or after a commit whose answer was lost).

Not thread-safe: the sink calls it on the event loop's thread only (before the loop is known, from the one thread
that builds the pipeline).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger("skyattr.kafka")

LOG_EVERY_S = 30.0  # rate limit of repeated warnings (drops, failures during an outage)
OUTCOMES = ("sent", "failed", "dropped", "rejected", "already_written")


@dataclass(frozen=True, eq=False)
class PendingMessage:
    """A serialised result waiting for (or being given to) the broker; what :meth:`KafkaOutbox.pending` shows.

    Compared by identity: two publications of equal bytes are two messages."""

    kind: str  # the result's topic: "tiers" or "alerts" (the results journal's topic)
    topic: str  # the Kafka topic it goes to
    key: bytes  # the indicator
    value: bytes  # compact JSON of the result's message
    id: str  # the result's identity (``<indicator>@<as_of_us>``), also sent as the ``skyattr-id`` header
    run: int | None
    timestamp_ms: int
    seq: int = 0  # its place in the publisher's order: the results journal's sequence number, or the sink's own


@dataclass
class KafkaStats:
    """Plain counters of the Kafka sink, for a metrics collector to read at scrape time.

    ``messages`` counts outcomes per ``(kafka_topic, outcome)``; ``buffered`` is the messages not yet committed
    (those in flight included); ``connected`` is True while a producer is up and the last attempt succeeded;
    ``errors`` counts publications from another thread that failed on the event loop (logged, never raised)."""

    messages: Counter[tuple[str, str]] = field(default_factory=Counter)
    buffered: int = 0
    connected: bool = False
    errors: int = 0

    def snapshot(self) -> KafkaStats:
        """A consistent copy, safe to take from another thread (the metrics server's) while the loop counts."""
        return KafkaStats(Counter(dict.copy(self.messages)), self.buffered, self.connected, self.errors)

    def total(self, outcome: str) -> int:
        """``outcome`` summed over topics."""
        return sum(n for (_, o), n in dict.copy(self.messages).items() if o == outcome)


class KafkaOutbox:
    """FIFO of :class:`PendingMessage` in ``seq`` order, bounded by ``limit`` (None: unbounded, for a publisher
    whose results journal keeps every message anyway); see the module docstring."""

    def __init__(self, limit: int | None = 10_000, stats: KafkaStats | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"buffer_limit must be >= 1, got {limit!r}")
        self.limit = limit
        self.stats = stats if stats is not None else KafkaStats()
        self._entries: deque[PendingMessage] = deque()
        self.claimed = 0  # the head messages in a transaction now: they may be committed any moment
        self._drops_unlogged = 0
        self._last_drop_log = -float("inf")
        self._sync()

    # ------------------------------------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[PendingMessage]:
        return iter(self.pending())

    def pending(self) -> list[PendingMessage]:
        """The buffered messages, oldest first (a copy)."""
        return list(self._entries)

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest message (0 when empty)."""
        return self._entries[-1].seq if self._entries else 0

    @property
    def sent(self) -> int:
        return self.stats.total("sent")

    @property
    def failed(self) -> int:
        return self.stats.total("failed")

    @property
    def dropped(self) -> int:
        return self.stats.total("dropped")

    @property
    def rejected(self) -> int:
        return self.stats.total("rejected")

    @property
    def already_written(self) -> int:
        return self.stats.total("already_written")

    # ------------------------------------------------------------------------------------------------ writing
    def put(self, msg: PendingMessage) -> list[PendingMessage]:
        """Append ``msg`` (its ``seq`` must be above every buffered one); when that overflows the limit, drop (and
        return) the oldest unclaimed message(s)."""
        if self._entries and msg.seq <= self._entries[-1].seq:
            raise ValueError(f"message seq {msg.seq} is not after the last buffered one ({self._entries[-1].seq})")
        self._entries.append(msg)
        dropped = []
        while self.limit is not None and len(self._entries) > max(self.limit, self.claimed):
            dropped.append(self._drop_oldest_unclaimed())
        self._sync()
        return dropped

    def claim(self, most: int) -> list[PendingMessage]:
        """The first ``most`` messages, marked as handed to a transaction: overflow no longer drops them."""
        self.claimed = min(most, len(self._entries))
        return list(self._entries)[: self.claimed]

    def release(self) -> None:
        """The transaction that held the claimed messages is gone without a commit: they are unsent again."""
        self.claimed = 0

    def complete(self, outcome: str = "sent") -> list[PendingMessage]:
        """Remove the claimed messages and count ``outcome`` for each (``sent``)."""
        done = [self._entries.popleft() for _ in range(self.claimed)]
        self.claimed = 0
        for msg in done:
            self.stats.messages[(msg.topic, outcome)] += 1
        self._sync()
        return done

    def drop_through(self, seq: int) -> list[PendingMessage]:
        """Remove the unclaimed head messages whose ``seq`` is at or below ``seq``: a committed transaction already
        wrote them (``already_written``)."""
        done = []
        while self._entries and self.claimed == 0 and self._entries[0].seq <= seq:
            msg = self._entries.popleft()
            self.stats.messages[(msg.topic, "already_written")] += 1
            done.append(msg)
        self._sync()
        return done

    def reject(self, msg: PendingMessage) -> bool:
        """Give up an unclaimed ``msg`` the broker refused for what it is (``rejected``); False when it is gone."""
        if self.claimed or msg not in self._entries:
            return False
        self._entries.remove(msg)
        self.stats.messages[(msg.topic, "rejected")] += 1
        self._sync()
        return True

    def fail(self, messages: list[PendingMessage]) -> None:
        """Count one failed delivery attempt of each of ``messages`` (they stay where they are)."""
        for msg in messages:
            self.stats.messages[(msg.topic, "failed")] += 1

    # ------------------------------------------------------------------------------------------------ internals
    def _drop_oldest_unclaimed(self) -> PendingMessage:
        msg = self._entries[self.claimed]
        del self._entries[self.claimed]
        self.stats.messages[(msg.topic, "dropped")] += 1
        self._drops_unlogged += 1
        now = time.monotonic()
        if now - self._last_drop_log >= LOG_EVERY_S:
            log.warning(
                "Kafka buffer full (%d): dropped %d oldest unsent message(s), last %s run %s; %d dropped in all",
                self.limit,
                self._drops_unlogged,
                msg.topic,
                msg.run,
                self.dropped,
            )
            self._drops_unlogged = 0
            self._last_drop_log = now
        return msg

    def _sync(self) -> None:
        self.stats.buffered = len(self._entries)


def describe_runs(messages: list[PendingMessage]) -> str:
    """``"<topic>: <n> (runs a-b); ..."`` for a log line about unsent messages."""
    by_topic: dict[str, list[int | None]] = {}
    for m in messages:
        by_topic.setdefault(m.topic, []).append(m.run)
    return "; ".join(f"{t}: {len(runs)} ({_runs(runs)})" for t, runs in by_topic.items())


def _runs(runs: list[int | None]) -> str:
    known = [r for r in runs if r is not None]
    if not known:
        return "no run numbers"
    lo, hi = min(known), max(known)
    return f"run {lo}" if lo == hi else f"runs {lo}-{hi}"


__all__ = ["LOG_EVERY_S", "OUTCOMES", "KafkaOutbox", "KafkaStats", "PendingMessage", "describe_runs"]
