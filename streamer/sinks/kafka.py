"""The Kafka sink: typed results (``skyattr.tiers``, ``skyattr.alerts``) to Kafka exactly once, never blocking ingest.

The daemon produces a result every few minutes and must keep ingesting whatever the broker does, so
:class:`KafkaSink` (the :class:`~streamer.sinks.base.Sink` protocol) is two parts:

* :meth:`KafkaSink.publish` is synchronous and cheap: it serialises the result once (compact JSON of
  ``result.to_message()``, already valid by construction; key = indicator, header ``skyattr-id`` = ``result.id``)
  and appends it to the :class:`~streamer.sinks.kafka_outbox.KafkaOutbox` with its sequence number. It may be
  called from a worker thread: it then hops onto the loop captured by :meth:`start` itself.
* The :class:`~streamer.sinks.kafka_sender.KafkaSender` task commits the outbox's head in Kafka transactions, in
  order, each with the publisher's *mark* (how far it has published) in a compacted state topic; after any failure
  it starts a new producer, which fences the old one, and reads the mark back before going on. Failures back off
  exponentially with jitter; none ever reaches the caller.

Exactly once, across restarts too. With a checkpoint directory the daemon journals every result first
(:mod:`streamer.core.journal`) and publishes it with its journal sequence number, under a transactional id kept
in that directory. At the next start it publishes every journaled entry again; the sender drops those at or below
the mark it reads back. A SIGKILL, a SIGTERM during an outage, or a whole replay with the broker away therefore
loses nothing and writes nothing twice, with no read-back of the topics and no acknowledgement file. Without a
checkpoint directory the transactional id is new for each process (exactly once within the run), the buffer is
bounded (``buffer_limit``, the oldest unsent dropped first) and what is unsent at exit is lost (reported by
:meth:`KafkaSink.close`). Consumers read the result topics with ``isolation_level="read_committed"``.

Metrics: the sink counts into :attr:`KafkaSink.stats` (:class:`~streamer.sinks.kafka_outbox.KafkaStats`), plain
counters a Prometheus collector reads at scrape time; it knows nothing of Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from streamer.core.results import Result
from streamer.distributed.defaults import STATE_TOPIC
from streamer.sinks.kafka_outbox import LOG_EVERY_S, KafkaOutbox, KafkaStats, PendingMessage, describe_runs
from streamer.sinks.kafka_sender import ID_HEADER, MAX_BATCH, KafkaSender

log = logging.getLogger("skyattr.kafka")

DEFAULT_TOPICS: Mapping[str, str] = {"tiers": "skyattr.tiers", "alerts": "skyattr.alerts"}
RESULT_TOPICS = ("tiers", "alerts")
MAX_REQUEST_BYTES = 1_048_576  # aiokafka's max_request_size default; a bigger message could never be sent
RECORD_OVERHEAD_BYTES = 512  # generous bound for the record and batch headers around key and value


def encode(kind: str, topic: str, message: Mapping[str, Any], *, seq: int = 0) -> PendingMessage:
    """Serialise one result message for ``topic``: compact JSON, sorted keys, UTF-8, no NaN.

    Raises ``ValueError`` when it cannot be encoded as JSON (NaN, numpy scalars) or is too large for one Kafka
    request: a message that can never be delivered must not block the messages behind it."""
    try:
        value = json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{kind} message is not encodable as JSON: {exc}") from exc
    try:
        indicator = str(message["indicator"])
        ident = str(message.get("id") or f"{indicator}@{int(message['as_of_us'])}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{kind} message has no identity (indicator, as_of_us): {exc!r}") from exc
    key = indicator.encode()
    if len(key) + len(value) + RECORD_OVERHEAD_BYTES > MAX_REQUEST_BYTES:
        raise ValueError(f"{kind} message is {len(value)} bytes; Kafka requests are limited to {MAX_REQUEST_BYTES}")
    run = message.get("run")
    return PendingMessage(
        kind=kind,
        topic=topic,
        key=key,
        value=value,
        id=ident,
        run=run if isinstance(run, int) and not isinstance(run, bool) else None,
        timestamp_ms=int(time.time() * 1000),
        seq=seq,
    )


class KafkaSink:
    """Buffered, ordered Kafka sink of typed results, exactly once by Kafka transactions (module docstring).

    ``topics`` maps a result topic (``tiers``, ``alerts``) to its Kafka topic; a result whose topic is not mapped is
    refused (``ValueError``). ``transactional_id`` names a writer whose sequence numbers are stable across restarts
    (a results journal's): its buffer is unbounded and its mark is read back at start; None: a new id for this
    process, sequence numbers of its own, a buffer of ``buffer_limit``. ``mark_topic``: the compacted topic of the
    marks; ``initial_mark``: the mark assumed when that topic holds none for this writer. ``security`` holds
    aiokafka connection options (``security_protocol``, ``sasl_mechanism``, ``sasl_plain_username``,
    ``sasl_plain_password``, ``ssl_context``). ``request_timeout_ms`` bounds one attempt's steps (producer start,
    mark read-back, one transaction); ``retry_backoff_s`` is (first delay, largest delay) of the backoff between
    attempts; ``max_batch``: messages in one transaction.

    Results published before :meth:`start` wait in the buffer (publish then only from the thread that will run the
    loop)."""

    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        topics: Mapping[str, str] = DEFAULT_TOPICS,
        *,
        transactional_id: str | None = None,
        mark_topic: str = STATE_TOPIC,
        initial_mark: int = 0,
        buffer_limit: int = 10_000,
        security: Mapping[str, Any] | None = None,
        client_id: str = "skyattr",
        request_timeout_ms: int = 15_000,
        retry_backoff_s: tuple[float, float] = (0.5, 30.0),
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._topics = dict(topics)
        if not self._topics:
            raise ValueError("topics must map at least one result topic to a Kafka topic")
        unknown = sorted(set(self._topics) - set(RESULT_TOPICS))
        if unknown:
            raise ValueError(f"unknown result topic(s) {', '.join(unknown)}; expected {' or '.join(RESULT_TOPICS)}")
        if buffer_limit < 1:
            raise ValueError(f"buffer_limit must be >= 1, got {buffer_limit!r}")
        self.bootstrap = bootstrap
        self.durable = transactional_id is not None
        self.buffer_limit = buffer_limit
        self.stats = KafkaStats()
        self._outbox = KafkaOutbox(None if self.durable else buffer_limit, self.stats)
        self._sender = KafkaSender(
            self._outbox,
            bootstrap,
            transactional_id=transactional_id or f"skyattr-results-{uuid.uuid4().hex}",
            mark_topic=mark_topic,
            initial_mark=initial_mark,
            client_id=client_id,
            request_timeout_ms=request_timeout_ms,
            retry_backoff_s=retry_backoff_s,
            security=security,
            max_batch=max_batch,
        )
        self._seq = 0  # the last sequence number given to a message published without one
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closed = False
        self._errors_unlogged = 0
        self._last_error_log = -float("inf")

    # -------------------------------------------------------------------------------------------- state
    @property
    def sent(self) -> int:
        """Messages committed to their topics."""
        return self._outbox.sent

    @property
    def failed(self) -> int:
        """Failed delivery attempts (one message can fail many times during an outage)."""
        return self._outbox.failed

    @property
    def dropped(self) -> int:
        """Messages dropped unsent because the buffer was full."""
        return self._outbox.dropped

    @property
    def rejected(self) -> int:
        """Messages given up because the broker refused them for what they are (too large, corrupt)."""
        return self._outbox.rejected

    @property
    def already_written(self) -> int:
        """Results published again that a committed transaction already held (after a restart: below the mark)."""
        return self._outbox.already_written

    @property
    def committed_through(self) -> int:
        """The sequence number through which every message is committed or given up (0 before the mark is read)."""
        return self._sender.through or 0

    @property
    def transactional_id(self) -> str:
        return self._sender.transactional_id

    @property
    def buffered(self) -> int:
        """Messages not yet committed (those in flight included)."""
        return len(self._outbox)

    @property
    def connected(self) -> bool:
        """True while a producer is up and the last attempt succeeded (see :attr:`KafkaSender.connected`)."""
        return self._sender.connected

    @property
    def errors(self) -> int:
        """Publications from another thread that failed on the event loop (logged there, never raised)."""
        return self.stats.errors

    def pending(self) -> list[PendingMessage]:
        """The buffered messages, oldest first (a copy: for diagnostics, tests, or a JSONL fallback at exit)."""
        return self._outbox.pending()

    # -------------------------------------------------------------------------------------------- publish
    def publish(self, result: Result, seq: int | None = None) -> None:
        """Serialise and buffer ``result``; never waits for the broker. Any thread (see the class docstring).

        ``seq``: its place in the order, above every earlier one (the results journal's sequence number; a
        result published again after a restart with the number it had is dropped if the mark already holds it);
        None: the sink numbers it. Raises ``ValueError`` when its topic is not mapped, it cannot be encoded as JSON
        or is too large for one Kafka request, ``RuntimeError`` after :meth:`close`."""
        topic = self._kafka_topic(result.topic)
        self._submit(encode(result.topic, topic, result.to_message(), seq=-1 if seq is None else seq))

    def _kafka_topic(self, kind: str) -> str:
        if self._closed:
            raise RuntimeError("KafkaSink is closed")
        try:
            return self._topics[kind]
        except KeyError:
            raise ValueError(f"no Kafka topic for {kind!r} results; this sink has {', '.join(self._topics)}") from None

    def _submit(self, msg: PendingMessage) -> None:
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._put_from_thread, msg)
        else:
            self._put(msg)

    def _put(self, msg: PendingMessage) -> None:
        if self._closed:
            raise RuntimeError("KafkaSink is closed")
        if msg.seq < 0:
            msg = replace(msg, seq=max(self._seq, self._outbox.last_seq) + 1)
        self._seq = max(self._seq, msg.seq)
        self._outbox.put(msg)
        self._sender.notify()

    def _put_from_thread(self, msg: PendingMessage) -> None:
        """The loop's half of a publication from another thread: whatever goes wrong is counted and logged here,
        once, and never reaches asyncio's exception handler."""
        try:
            self._put(msg)
        except Exception:
            self.stats.errors += 1
            now = time.monotonic()
            if now - self._last_error_log >= LOG_EVERY_S:
                log.exception(
                    "a %s result (%s) published from another thread could not be buffered for Kafka "
                    "(%d such error(s) in all, %d not logged)",
                    msg.kind,
                    msg.id,
                    self.stats.errors,
                    self._errors_unlogged,
                )
                self._errors_unlogged = 0
                self._last_error_log = now
            else:
                self._errors_unlogged += 1

    # -------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Capture the running loop and start the sender; returns at once: connecting (and retrying while the
        broker is absent) happens in the background, so a missing broker never delays or fails the daemon's
        start."""
        if self._closed:
            raise RuntimeError("KafkaSink is closed")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._sender.start()

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the buffer to drain; True when it is empty."""
        return await self._sender.flush(timeout)

    async def close(self, timeout: float) -> int:
        """Flush for at most about ``timeout`` seconds, then stop the producer, in bounded time even with the
        broker down (``timeout`` plus about a second at worst). Returns (and logs) the number of messages left
        uncommitted; they stay readable through :meth:`pending`. Idempotent."""
        if self._closed:
            return len(self._outbox)
        self._closed = True
        deadline = time.monotonic() + max(timeout, 0.0)
        reserve = min(1.0, 0.25 * max(timeout, 0.0))  # kept for stopping the producer
        await self._sender.flush(max(0.0, deadline - reserve - time.monotonic()))
        await self._sender.close(max(0.0, deadline - time.monotonic()))
        left = self._outbox.pending()
        if left:
            log.warning("Kafka sink closed with %d message(s) uncommitted: %s", len(left), describe_runs(left))
        else:
            log.info("Kafka sink closed: all %d message(s) sent", self.sent)
        return len(left)


__all__ = ["DEFAULT_TOPICS", "ID_HEADER", "KafkaSink", "KafkaStats", "PendingMessage", "encode"]
