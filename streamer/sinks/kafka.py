"""The Kafka sink: typed results (``skyattr.tiers``, ``skyattr.alerts``) to Kafka without ever blocking ingest.

The daemon produces a result every few minutes and must keep ingesting whatever the broker does, so
:class:`KafkaSink` (the :class:`~streamer.sinks.base.Sink` protocol) is two parts:

* :meth:`KafkaSink.publish` is synchronous and cheap: it serialises the result once (compact JSON of
  ``result.to_message()``, already valid by construction; key = indicator, header ``skyattr-id`` = ``result.id``)
  and appends it to the :class:`~streamer.sinks.kafka_outbox.KafkaOutbox`, a bounded in-memory buffer that drops
  its oldest *unclaimed* message when full (during a long outage the newest results are the valuable ones; the one
  already handed to the producer may be written any moment). It may be called from a worker thread: it then hops
  onto the loop captured by :meth:`start` itself.
* The :class:`~streamer.sinks.kafka_sender.KafkaSender` task drains the outbox **one message at a time, in order**,
  with one idempotent producer (``acks="all"``) kept across transient failures, so nothing is written twice within
  a run and the order of publication is the order on (and across) the topics. A message the broker refuses for
  what it is (too large, corrupt) is given up after one retry with a fresh producer, so it cannot hold back the
  messages behind it. Failures back off exponentially with jitter; none ever reaches the caller.

Across restarts (the daemon's guarantee, with a checkpoint directory). Every result is first made durable in the
results journal (:mod:`streamer.core.journal`) and carries its identity (``id`` in the JSON, header ``skyattr-id``).
The sink reports each acknowledgement (``on_ack(topic, result_id)``), which the daemon persists; at the next start
every journaled result after the last acknowledged one is handed to :meth:`KafkaSink.resend`: before sending the
first of them, the sender reads back the last ``readback`` messages of every partition of its topics and skips those
already there. So a SIGKILL, a SIGTERM during an outage, or a whole replay with the broker away loses nothing and
writes nothing twice, provided this daemon is the only writer of its topics and no more than ``readback`` messages
per partition were written between the last persisted acknowledgement and the restart (at most the buffer, in
practice one or two). The residual duplicate window is a message whose write reached the broker but whose
acknowledgement was lost *and* whose producer then had to be replaced within one run of the daemon; consumers that
must be exact dedupe on ``skyattr-id``. Without a checkpoint directory, messages unsent at exit are lost (reported
by :meth:`KafkaSink.close`).

Metrics: the sink counts into :attr:`KafkaSink.stats` (:class:`~streamer.sinks.kafka_outbox.KafkaStats`), plain
counters a Prometheus collector reads at scrape time; it knows nothing of Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from streamer.core.results import Result
from streamer.sinks.kafka_outbox import LOG_EVERY_S, KafkaOutbox, KafkaStats, PendingMessage, describe_runs
from streamer.sinks.kafka_sender import ID_HEADER, KafkaSender

log = logging.getLogger("skyattr.kafka")

DEFAULT_TOPICS: Mapping[str, str] = {"tiers": "skyattr.tiers", "alerts": "skyattr.alerts"}
RESULT_TOPICS = ("tiers", "alerts")
MAX_REQUEST_BYTES = 1_048_576  # aiokafka's max_request_size default; a bigger message could never be sent
RECORD_OVERHEAD_BYTES = 512  # generous bound for the record and batch headers around key and value


def encode(kind: str, topic: str, message: Mapping[str, Any], *, verify: bool = False) -> PendingMessage:
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
        verify=verify,
    )


class KafkaSink:
    """Buffered, ordered Kafka sink of typed results; exactly once across restarts with the results journal.

    ``topics`` maps a result topic (``tiers``, ``alerts``) to its Kafka topic; a result whose topic is not mapped is
    refused (``ValueError``). ``security`` holds aiokafka connection options (``security_protocol``,
    ``sasl_mechanism``, ``sasl_plain_username``, ``sasl_plain_password``, ``ssl_context``). ``on_ack(topic,
    result_id)`` is called on the event loop for every result the broker acknowledged, and for a resent one found
    already written (``topic`` is the result topic, ``tiers`` or ``alerts``). ``request_timeout_ms`` bounds one
    attempt (producer start, metadata, acknowledgement); ``retry_backoff_s`` is (first delay, largest delay) of the
    backoff between attempts; ``readback`` is the messages per partition read back to verify resent results.

    Results published before :meth:`start` wait in the buffer (publish then only from the thread that will run the
    loop). See the module docstring for ordering and duplicates."""

    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        topics: Mapping[str, str] = DEFAULT_TOPICS,
        *,
        buffer_limit: int = 10_000,
        security: Mapping[str, Any] | None = None,
        on_ack: Callable[[str, str], None] | None = None,
        client_id: str = "skyattr",
        request_timeout_ms: int = 15_000,
        retry_backoff_s: tuple[float, float] = (0.5, 30.0),
        readback: int = 1000,
    ) -> None:
        self._topics = dict(topics)
        if not self._topics:
            raise ValueError("topics must map at least one result topic to a Kafka topic")
        unknown = sorted(set(self._topics) - set(RESULT_TOPICS))
        if unknown:
            raise ValueError(f"unknown result topic(s) {', '.join(unknown)}; expected {' or '.join(RESULT_TOPICS)}")
        self.bootstrap = bootstrap
        self.buffer_limit = buffer_limit
        self.stats = KafkaStats()
        self._outbox = KafkaOutbox(buffer_limit, self.stats)
        self._sender = KafkaSender(
            self._outbox,
            bootstrap,
            self._topics.values(),
            client_id=client_id,
            request_timeout_ms=request_timeout_ms,
            retry_backoff_s=retry_backoff_s,
            security=security,
            readback=readback,
            on_delivered=self._delivered,
        )
        self._on_ack = on_ack
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closed = False
        self._errors_unlogged = 0
        self._last_error_log = -float("inf")

    # -------------------------------------------------------------------------------------------- state
    @property
    def sent(self) -> int:
        """Messages the broker acknowledged."""
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
        """Resent results skipped because their topic already held them."""
        return self._outbox.already_written

    @property
    def buffered(self) -> int:
        """Messages not yet acknowledged (including the one in flight)."""
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
    def publish(self, result: Result) -> None:
        """Serialise and buffer ``result``; never waits for the broker. Any thread (see the class docstring).

        Raises ``ValueError`` when its topic is not mapped, it cannot be encoded as JSON or is too large for one
        Kafka request, ``RuntimeError`` after :meth:`close`."""
        topic = self._kafka_topic(result.topic)
        self._submit(encode(result.topic, topic, result.to_message()))

    def resend(self, result: Result) -> None:
        """Buffer a journaled result after a restart: it may have been written before the restart, so it is
        skipped, and acknowledged, when the tail of its Kafka topic already holds its identity. Raises like
        :meth:`publish`."""
        self._submit(encode(result.topic, self._kafka_topic(result.topic), result.to_message(), verify=True))

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

    def _delivered(self, msg: PendingMessage) -> None:
        if self._on_ack is not None:
            self._on_ack(msg.kind, msg.id)  # the sender logs (and survives) an exception here

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
        unacknowledged; they stay readable through :meth:`pending`. Idempotent."""
        if self._closed:
            return len(self._outbox)
        self._closed = True
        deadline = time.monotonic() + max(timeout, 0.0)
        reserve = min(1.0, 0.25 * max(timeout, 0.0))  # kept for stopping the producer
        await self._sender.flush(max(0.0, deadline - reserve - time.monotonic()))
        await self._sender.close(max(0.0, deadline - time.monotonic()))
        left = self._outbox.pending()
        if left:
            log.warning(
                "Kafka sink closed with %d message(s) unsent: %s%s",
                len(left),
                describe_runs(left),
                " (the first was in flight and may have been written)" if self._outbox.head_claimed else "",
            )
        else:
            log.info("Kafka sink closed: all %d message(s) sent", self.sent)
        return len(left)


__all__ = ["DEFAULT_TOPICS", "ID_HEADER", "KafkaSink", "KafkaStats", "PendingMessage", "encode"]
