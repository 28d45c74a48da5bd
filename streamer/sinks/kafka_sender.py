"""The Kafka sink's sender: one background task that delivers the outbox's head, one message at a time, in order.

The task owns the single ``AIOKafkaProducer`` (idempotent, ``acks="all"``). The head of the
:class:`~streamer.sinks.kafka_outbox.KafkaOutbox` is removed only once the broker acknowledged it; every failure
(broker down, timeouts, a producer that cannot start) is counted, backed off exponentially with jitter
(:func:`streamer.core.backoff.backoff_delay`) and retried on the *same* message, so the order on each topic, and
across topics, is the order of publication. One message in flight costs one round trip per message, which is
plenty for a result every few minutes; a full 10 000-message backlog drains in 10 000 round trips.

Duplicates. With ``enable_idempotence=True`` aiokafka never expires a batch it has handed to the broker: it retries
it on retriable errors with the same producer id and sequence number, and the broker discards a batch it already
wrote. So the sender keeps the producer, and the in-flight message's delivery future, across transient failures: a
timeout while waiting for the acknowledgement is counted as a failure but the message is *not* sent again; the
sender keeps waiting for the same future. A new producer (a new producer id, which the broker cannot dedupe against
the old one) is created only when the old one is unusable: it could not start, its delivery future failed (with
idempotence that means a non-retriable error such as a sequence gap or a fenced/unknown producer id, or its sender
task died), or ``send`` itself failed with a non-retriable error.

Rejections. A message the broker refuses for what it is (too large, corrupt, bad timestamp) is retried once with a
fresh producer and then given up (``rejected``, logged as an error), so it cannot hold back the messages behind it.

Read-back. A message marked ``verify`` (recovered from the results journal after a restart) may have been written
before the restart: before sending the first of them, the sender reads back the last ``readback`` messages of every
partition of its topics (their ``skyattr-id`` headers) and skips those already there (``already_written``,
acknowledged like a sent one). A failed read-back is retried with backoff like a failed delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from streamer.core.backoff import backoff_delay
from streamer.sinks.kafka_outbox import LOG_EVERY_S, KafkaOutbox, PendingMessage

log = logging.getLogger("skyattr.kafka")

ID_HEADER = "skyattr-id"  # the result's identity, for consumers that deduplicate and for the read-back
MAX_REJECTIONS = 2  # one retry with a fresh producer, then the message is given up (logged as an error)

# Broker answers that concern the message itself, not the broker's health: retrying cannot help forever.
_REJECTED_NAMES = (
    "MessageSizeTooLargeError",
    "RecordListTooLargeError",
    "RecordTooLargeError",
    "CorruptRecordException",
    "InvalidTimestampError",
)


class _ProducerUnusable(Exception):
    """The producer must be replaced before the head message can be retried."""


class _AckLate(Exception):
    """The acknowledgement did not come within the request timeout; the producer still holds the message."""


class KafkaSender:
    """Delivers ``outbox``'s messages to ``bootstrap`` from a background task (see the module docstring).

    Runs on the event loop only. ``on_delivered(msg)`` is called (on the loop) for every message the broker
    acknowledged and every recovered one found already written. ``topics``: the Kafka topics read back for
    ``verify`` messages. ``security``: aiokafka connection options. ``request_timeout_ms`` bounds one attempt
    (producer start, metadata, acknowledgement); ``retry_backoff_s`` is (first delay, largest delay)."""

    def __init__(
        self,
        outbox: KafkaOutbox,
        bootstrap: str,
        topics: Iterable[str],
        *,
        client_id: str = "skyattr",
        request_timeout_ms: int = 15_000,
        retry_backoff_s: tuple[float, float] = (0.5, 30.0),
        security: Mapping[str, Any] | None = None,
        readback: int = 1000,
        on_delivered: Callable[[PendingMessage], None] | None = None,
    ) -> None:
        base, cap = retry_backoff_s
        if not (0 < base <= cap):
            raise ValueError(f"retry_backoff_s must be (base, max) with 0 < base <= max, got {retry_backoff_s!r}")
        if request_timeout_ms <= 0:
            raise ValueError(f"request_timeout_ms must be > 0, got {request_timeout_ms!r}")
        if readback < 0:
            raise ValueError(f"readback must be >= 0, got {readback!r}")
        self.outbox = outbox
        self.bootstrap = bootstrap
        self.topics = sorted(set(topics))
        self._client_id = client_id
        self._security = dict(security or {})
        self._request_timeout_ms = request_timeout_ms
        self._timeout_s = request_timeout_ms / 1000
        self._backoff = (float(base), float(cap))
        self._rng = random.Random()
        self._readback = readback
        self._on_delivered = on_delivered
        self._written: set[tuple[str, str]] | None = None  # (topic, id) read back from the topics' tails

        self._producer: Any = None  # AIOKafkaProducer, imported lazily
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()  # the outbox got a message
        self._idle = asyncio.Event()  # the outbox is empty
        self._idle.set()
        self._kick = asyncio.Event()  # cut the current backoff short (flush/close want an attempt now)
        # The head being delivered, its delivery future (None: not handed to a producer yet; kept across timeouts so
        # that a slow acknowledgement never makes us send it a second time) and the broker's refusals of it.
        self._current: PendingMessage | None = None
        self._future: asyncio.Future[Any] | None = None
        self._rejections = 0
        self._outage_failures = 0  # consecutive failures since the last success
        self._last_failure_log = -float("inf")

    # -------------------------------------------------------------------------------------------- state
    @property
    def connected(self) -> bool:
        """True while a producer is up and the last attempt succeeded. An idle sender learns that the broker went
        away only at its next attempt, so this can stay True during an outage with nothing to send."""
        return self.outbox.stats.connected

    def _set_connected(self, value: bool) -> None:
        self.outbox.stats.connected = value

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the background task (on the running loop) and return at once: connecting, and retrying while the
        broker is absent, happens in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="skyattr-kafka-sender")

    def notify(self) -> None:
        """The outbox got a message: wake the task."""
        self._idle.clear()
        self._wakeup.set()

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the outbox to drain; True when it is empty. A pending backoff is cut
        short so that a broker that came back is tried at once."""
        if not self.outbox:
            return True
        if not self.running:
            return False  # nothing would ever drain it
        self.notify()
        self._kick.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
        return not self.outbox

    async def close(self, timeout: float) -> None:
        """Stop the task, then the producer, in bounded time even with the broker down: about ``timeout``, at least
        a second for each (enough for aiokafka's in-flight request to settle). Messages stay in the outbox."""
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._task is not None:
            self._task.cancel()
            grace = max(1.0, deadline - time.monotonic())  # a cancelled task normally ends at once
            await asyncio.wait({self._task}, timeout=grace)
            if not self._task.done():
                log.warning("Kafka sender task did not stop within %.1f s", grace)
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop_producer(producer, max(1.0, deadline - time.monotonic()))
        self._set_connected(False)

    # -------------------------------------------------------------------------------------------- the task
    async def _run(self) -> None:
        """Drain the outbox in order, forever; only cancellation (close) ends it."""
        outbox = self.outbox
        attempt = 0
        while True:
            msg = outbox.head()
            if msg is None:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if msg is not self._current:  # a new head (the previous one delivered, or dropped while unclaimed)
                self._current, self._future, self._rejections = msg, None, 0
            try:
                if msg.verify and await self._already_written(msg):
                    if outbox.complete(msg, "already_written"):
                        self._delivered(msg)
                    continue
                await self._deliver(msg)
            except asyncio.CancelledError:
                raise
            except _AckLate:
                # The acknowledgement is late: the producer still holds the message and retries it itself with the
                # same sequence number, so wait on the same future again instead of re-sending.
                self._on_failure(msg, f"no acknowledgement within {self._timeout_s:.1f} s", None)
                continue
            except Exception as exc:
                unusable = isinstance(exc, _ProducerUnusable)
                cause = exc.__cause__ if unusable and exc.__cause__ is not None else exc
                self._on_failure(msg, _describe(cause), exc)
                if unusable:
                    await self._replace_producer(msg)
                    if type(cause).__name__ in _REJECTED_NAMES:
                        self._rejections += 1
                        if self._rejections >= MAX_REJECTIONS:
                            self._reject(msg, cause)
                            continue
                await self._sleep_backoff(attempt)
                attempt += 1
                continue
            attempt = 0
            self._future = None
            if outbox.complete(msg, "sent"):
                self._delivered(msg)
            if self._outage_failures:
                log.info(
                    "Kafka delivery resumed after %d failed attempt(s); %d message(s) buffered",
                    self._outage_failures,
                    len(outbox),
                )
                self._outage_failures = 0
                self._last_failure_log = -float("inf")

    async def _deliver(self, msg: PendingMessage) -> None:
        """One attempt for the head message: make sure a producer is up, hand it the message unless it already
        holds it, and wait (bounded) for the broker's acknowledgement.

        Raises ``_AckLate`` when only the acknowledgement is late (keep waiting, same producer),
        ``_ProducerUnusable`` when the producer must be replaced, anything else for a transient failure with the
        producer kept (metadata not available, broker unreachable before the message was handed over)."""
        from aiokafka.errors import KafkaError, KafkaTimeoutError

        producer = await self._ensure_producer()
        if self._future is None:
            self.outbox.claim(msg)
            try:
                # aiokafka's own metadata wait is bounded by request_timeout_ms; ours is a backstop. Cancelling
                # send() cannot lose a half-appended message: the append and the return have no await between.
                self._future = await asyncio.wait_for(
                    producer.send(
                        msg.topic,
                        msg.value,
                        key=msg.key,
                        timestamp_ms=msg.timestamp_ms,
                        headers=[(ID_HEADER, msg.id.encode())] if msg.id else None,
                    ),
                    self._timeout_s + 5.0,
                )
                self._future.add_done_callback(_retrieve)  # its error, if any, is handled here, not by asyncio
            except (TimeoutError, KafkaTimeoutError) as exc:
                self.outbox.release(msg)
                raise ConnectionError(f"message not accepted by the producer: {exc!r}") from exc
            except KafkaError as exc:
                self.outbox.release(msg)
                if exc.retriable:
                    raise
                raise _ProducerUnusable() from exc
            except BaseException as exc:  # closed producer, dead sender task, ... (or our own cancellation)
                self.outbox.release(msg)
                if isinstance(exc, Exception):
                    raise _ProducerUnusable() from exc
                raise
        future = self._future
        if future.done() and (future.cancelled() or future.exception() is not None):
            # With idempotence a delivery future fails only for errors aiokafka will not retry (sequence gap,
            # unknown or fenced producer id, message rejected, sender task died): the producer's sequence state is
            # no longer trustworthy, and only a new producer id can send the message again.
            raise _ProducerUnusable() from (None if future.cancelled() else future.exception())
        try:
            await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
        except TimeoutError:
            if future.done():  # the future itself failed with a TimeoutError: treat like any failed future
                raise _ProducerUnusable() from future.exception()
            raise _AckLate() from None
        except Exception as exc:
            raise _ProducerUnusable() from exc
        self._set_connected(True)

    async def _ensure_producer(self) -> Any:
        """The current producer, or a freshly started one. A start that fails leaves no producer behind."""
        if self._producer is not None:
            return self._producer
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            compression_type="gzip",
            linger_ms=0,
            request_timeout_ms=self._request_timeout_ms,
            # aiokafka's own retry pace for an in-flight message (not exponential): our base delay, kept between
            # 0.1 and 1 s so that a broker that comes back is used quickly without flooding the log meanwhile.
            retry_backoff_ms=int(1000 * min(1.0, max(0.1, self._backoff[0]))),
            **self._security,
        )
        try:
            # start() bootstraps and then waits for a producer id, which aiokafka retries without a bound.
            await asyncio.wait_for(producer.start(), self._timeout_s)
        except BaseException as exc:
            await self._stop_producer(producer, 1.0)
            if isinstance(exc, TimeoutError):
                raise ConnectionError(f"producer did not start within {self._timeout_s:.1f} s") from exc
            raise
        self._producer = producer
        self._set_connected(True)
        log.info("Kafka producer connected to %s", self.bootstrap)
        return producer

    async def _replace_producer(self, msg: PendingMessage) -> None:
        """Forget the unusable producer; the head message will be handed to the next one (a new producer id)."""
        self._future = None
        self.outbox.release(msg)
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop_producer(producer, min(self._timeout_s, 5.0))

    async def _stop_producer(self, producer: Any, timeout: float) -> None:
        """Stop and discard a producer in bounded time, whatever the broker does.

        ``AIOKafkaProducer.stop()`` first waits for every pending batch, which with idempotence is retried forever
        while the broker is down. aiokafka has no public abort, so its private parts are used, defensively (skipped
        if absent; the bounded ``stop()`` still applies): first its sender task is stopped, so that no batch is in
        the middle of a request, then whatever it still holds is failed (those messages are still in the outbox),
        then ``stop()`` closes the connections. Failing batches while the sender still runs would trip aiokafka
        (a re-enqueued batch that is no longer pending) and leak its metadata task."""
        from aiokafka.errors import KafkaError

        deadline = time.monotonic() + max(timeout, 0.1)
        sender = getattr(producer, "_sender", None)
        if sender is not None and getattr(sender, "sender_task", None) is not None:
            try:
                await asyncio.wait_for(sender.close(), max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                log.debug("stopping the Kafka producer's sender: %r", exc)
        try:
            _abandon_batches(producer, KafkaError("abandoned: the skyattr Kafka sender stopped this producer"))
        except Exception as exc:  # aiokafka's internals changed: the bounded stop() below still applies
            log.debug("could not fail the Kafka producer's pending batches: %r", exc)
        try:
            await asyncio.wait_for(producer.stop(), max(0.1, deadline - time.monotonic()))
            return
        except TimeoutError:
            log.warning("Kafka producer did not stop within %.1f s; closing its connections", timeout)
        except Exception as exc:
            log.debug("error while stopping the Kafka producer: %r", exc)
        client = getattr(producer, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1.0)

    async def _sleep_backoff(self, attempt: int) -> None:
        """Wait :func:`backoff_delay` after ``attempt`` failures in a row; flush/close cut it short via ``_kick``."""
        delay = backoff_delay(attempt, *self._backoff, self._rng)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), delay)
        self._kick.clear()

    # -------------------------------------------------------------------------------------------- read-back
    async def _already_written(self, msg: PendingMessage) -> bool:
        """Whether a recovered message's identity is in the tail of its topic (read once, on the first recovered
        message; a failure to read raises like a failed delivery and is retried with backoff)."""
        if self._written is None:
            self._written = await asyncio.wait_for(self._read_tails(), self._timeout_s + 5.0)
            log.info("read back %d result identities from the Kafka topics' tails", len(self._written))
        return (msg.topic, msg.id) in self._written

    async def _read_tails(self) -> set[tuple[str, str]]:
        """``(topic, id)`` of the last ``readback`` messages of every partition of every topic."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        found: set[tuple[str, str]] = set()
        if self._readback == 0:
            return found
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self._client_id}-readback",
            enable_auto_commit=False,
            group_id=None,
            request_timeout_ms=self._request_timeout_ms,
            **self._security,
        )
        await consumer.start()
        try:
            parts: list[Any] = []
            producer = await self._ensure_producer()
            for topic in self.topics:
                for p in sorted(await producer.partitions_for(topic)):
                    parts.append(TopicPartition(topic, p))
            if not parts:
                return found
            consumer.assign(parts)
            ends = await consumer.end_offsets(parts)
            starts = await consumer.beginning_offsets(parts)
            todo = {}
            for tp in parts:
                if ends[tp] > starts[tp]:
                    consumer.seek(tp, max(starts[tp], ends[tp] - self._readback))
                    todo[tp] = ends[tp]
            while todo:
                batch = await consumer.getmany(*todo, timeout_ms=1000)
                for tp, records in batch.items():
                    for rec in records:
                        ident = dict(rec.headers or ()).get(ID_HEADER)
                        if ident is not None:
                            found.add((tp.topic, ident.decode(errors="replace")))
                for tp in list(todo):
                    if await consumer.position(tp) >= todo[tp]:
                        todo.pop(tp)
        finally:
            await consumer.stop()
        return found

    # -------------------------------------------------------------------------------------------- accounting
    def _delivered(self, msg: PendingMessage) -> None:
        if self._on_delivered is not None:
            try:
                self._on_delivered(msg)
            except Exception:
                log.exception("recording the acknowledgement of %s %s failed", msg.topic, msg.id)

    def _reject(self, msg: PendingMessage, cause: BaseException) -> None:
        """Give up a message the broker refused repeatedly for what it is (size, CRC, timestamp): it would otherwise
        hold every later message back forever."""
        if not self.outbox.complete(msg, "rejected"):
            return  # dropped from a full outbox meanwhile (counted there)
        log.error(
            "Kafka broker rejected %s run %s (%d bytes) %d times: %s; message dropped",
            msg.topic,
            msg.run,
            len(msg.value),
            self._rejections,
            cause,
        )

    def _on_failure(self, msg: PendingMessage, reason: str, exc: BaseException | None) -> None:
        self.outbox.fail(msg)
        self._set_connected(False)
        self._outage_failures += 1
        now = time.monotonic()
        if self._outage_failures == 1 or now - self._last_failure_log >= LOG_EVERY_S:
            log.warning(
                "Kafka delivery to %s failed (%d attempt(s) in a row, %d buffered): %s",
                self.bootstrap,
                self._outage_failures,
                len(self.outbox),
                reason,
            )
            self._last_failure_log = now
        if exc is not None and not isinstance(exc, (_ProducerUnusable, ConnectionError, OSError)):
            log.debug("Kafka delivery failure detail", exc_info=exc)


def _abandon_batches(producer: Any, exc: Exception) -> None:
    """Fail every batch an (already stopped) aiokafka sender left behind, keeping aiokafka's bookkeeping straight.

    A batch re-enqueued after a failed request is no longer in ``_pending_batches`` although its done callback
    removes it from there, and its fresh drain waiter would fail with nobody to read it: both would be logged as
    errors by asyncio. Written against aiokafka 0.14 (``MessageAccumulator``); the caller copes with a change."""
    accumulator = producer._message_accumulator
    queued = [batch for batches in accumulator._batches.values() for batch in batches]
    every = queued + list(accumulator._pending_batches)
    for batch in queued:
        if batch.retry_count > 0:  # popped before, so it carries the callback that removes it from the pending set
            accumulator._pending_batches.add(batch)
    accumulator.fail_all(exc)
    for batch in every:
        waiter = batch._drain_waiter
        if waiter.done() and not waiter.cancelled():
            waiter.exception()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a delivery future's exception as retrieved (a future failed at close would otherwise be logged)."""
    if not future.cancelled():
        future.exception()


__all__ = ["ID_HEADER", "MAX_REJECTIONS", "KafkaSender"]
