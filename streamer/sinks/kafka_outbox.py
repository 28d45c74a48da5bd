"""The Kafka sink's outbox: a bounded, ordered, counted buffer of serialised messages. Pure Python, no I/O.

:class:`KafkaOutbox` holds :class:`PendingMessage` objects in publishing order. The sender
(:mod:`streamer.sinks.kafka_sender`) works on its head only: it *claims* the head before handing it to a producer,
*releases* it when that producer is retired, and *completes* it once the broker acknowledged it (or it was found
already written, or the broker rejected it for good). A full outbox drops its oldest *unclaimed* message: during a
long outage the newest results are the valuable ones, and the claimed head may be written any moment, so forgetting
it would make the counts lie.

Every outcome is counted per (Kafka topic, outcome) in :class:`KafkaStats`, the plain counters a metrics collector
reads at scrape time (see :meth:`KafkaStats.snapshot`). Outcomes: ``sent``, ``failed`` (one delivery attempt; a
message can fail many times during an outage), ``dropped`` (buffer full), ``rejected`` (refused by the broker for
what it is, given up), ``already_written`` (recovered after a restart and found in the topic's tail).

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
    verify: bool = False  # recovered after a restart: skipped when the topic's tail already holds its identity


@dataclass
class KafkaStats:
    """Plain counters of the Kafka sink, for a metrics collector to read at scrape time.

    ``messages`` counts outcomes per ``(kafka_topic, outcome)``; ``buffered`` is the messages not yet acknowledged
    (the one in flight included); ``connected`` is True while a producer is up and the last attempt succeeded;
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


@dataclass(eq=False)
class _Entry:
    msg: PendingMessage
    # True from the moment the sender starts handing this message to a producer: an overflow must then drop the next
    # message instead, since this one may already be on its way to the broker.
    claimed: bool = False


class KafkaOutbox:
    """Bounded FIFO of :class:`PendingMessage`; see the module docstring."""

    def __init__(self, limit: int = 10_000, stats: KafkaStats | None = None) -> None:
        if limit < 1:
            raise ValueError(f"buffer_limit must be >= 1, got {limit!r}")
        self.limit = limit
        self.stats = stats if stats is not None else KafkaStats()
        self._entries: deque[_Entry] = deque()
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

    def head(self) -> PendingMessage | None:
        """The oldest message (the one the sender works on), or None when empty."""
        return self._entries[0].msg if self._entries else None

    @property
    def head_claimed(self) -> bool:
        """Whether the head is in a producer's hands (it may have been written)."""
        return bool(self._entries) and self._entries[0].claimed

    def pending(self) -> list[PendingMessage]:
        """The buffered messages, oldest first (a copy)."""
        return [e.msg for e in list(self._entries)]

    def count(self, topic: str, outcome: str) -> int:
        return self.stats.messages[(topic, outcome)]

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
        """Append ``msg``; when that overflows the limit, drop (and return) the oldest unclaimed message(s)."""
        self._entries.append(_Entry(msg))
        dropped = []
        while len(self._entries) > self.limit:
            dropped.append(self._drop_oldest())
        self._sync()
        return dropped

    def claim(self, msg: PendingMessage) -> None:
        """Mark ``msg``, which must be the head, as handed to a producer: overflow no longer drops it."""
        self._head_entry(msg).claimed = True

    def release(self, msg: PendingMessage) -> None:
        """The producer that held ``msg`` is gone: it is an ordinary unsent head again. No-op if not the head."""
        if self._entries and self._entries[0].msg is msg:
            self._entries[0].claimed = False

    def complete(self, msg: PendingMessage, outcome: str = "sent") -> bool:
        """Remove ``msg`` from the head and count ``outcome`` (``sent``, ``already_written`` or ``rejected``).
        False, and nothing counted, when ``msg`` is no longer the head (an unclaimed head dropped meanwhile)."""
        if outcome not in ("sent", "already_written", "rejected"):
            raise ValueError(f"not a completion outcome: {outcome!r}")
        if not self._entries or self._entries[0].msg is not msg:
            return False
        self._entries.popleft()
        self.stats.messages[(msg.topic, outcome)] += 1
        self._sync()
        return True

    def fail(self, msg: PendingMessage) -> None:
        """Count one failed delivery attempt of ``msg`` (it stays where it is)."""
        self.stats.messages[(msg.topic, "failed")] += 1

    # ------------------------------------------------------------------------------------------------ internals
    def _head_entry(self, msg: PendingMessage) -> _Entry:
        if not self._entries or self._entries[0].msg is not msg:
            raise ValueError("only the head of the outbox can be claimed")
        return self._entries[0]

    def _drop_oldest(self) -> PendingMessage:
        if self._entries[0].claimed and len(self._entries) > 1:
            entry = self._entries[1]
            del self._entries[1]
        else:
            entry = self._entries.popleft()
        msg = entry.msg
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
