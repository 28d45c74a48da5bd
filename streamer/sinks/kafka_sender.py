"""The Kafka sink's sender: results committed in Kafka transactions, each with the publisher's mark.

skyattr has one way to write results exactly once, used by the single process and by the distributed attributor
alike (:func:`commit`): a **transaction** holds the result messages and a *mark*, a record in a compacted state
topic keyed by the writer's transactional id that says how far it has published. Both are committed or neither is,
so the mark is never behind or ahead of the topics.

The single process's sender (:class:`KafkaSender`) works from the head of the
:class:`~streamer.sinks.kafka_outbox.KafkaOutbox`, whose messages carry a sequence number (``seq``: the results
journal's, with a checkpoint directory). Each attempt:

1. makes sure a transactional producer is up. Starting one fences every earlier producer of the same transactional
   id, a killed process's included, and aborts its open transaction; the sender then reads its mark back
   (:func:`~streamer.sinks.kafka_topics.load_latest`, committed records only);
2. drops the head messages at or below the mark (``already_written``: committed before a restart, or by a
   transaction whose commit answer was lost);
3. commits up to ``max_batch`` head messages and the mark of the last one in one transaction, bounded by the request
   timeout.

Any failure (broker away, a timeout, a fenced or broken producer) retires the producer, backs off exponentially with
jitter (:func:`streamer.core.backoff.backoff_delay`) and tries again from step 1: whether the abandoned
transaction committed or not, the mark read back says so, so nothing is written twice and nothing is skipped. A
message the broker refuses for what it is (too large for the topic, corrupt) is given up after
:data:`MAX_REJECTIONS` attempts (``rejected``, logged as an error), so it cannot hold back the messages behind it.

Consumers of the result topics must read with ``isolation_level="read_committed"`` (the attributor's results are
written the same way): an aborted transaction's messages stay in the log, marked aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from streamer.core.backoff import backoff_delay
from streamer.sinks.kafka_outbox import LOG_EVERY_S, KafkaOutbox, PendingMessage
from streamer.sinks.kafka_topics import SETTLE_S, ensure_topics, load_latest

log = logging.getLogger("skyattr.kafka")

ID_HEADER = "skyattr-id"  # the result's identity, for consumers that deduplicate
MAX_REJECTIONS = 2  # one retry with a fresh producer, then the message is given up (logged as an error)
MAX_BATCH = 500  # messages in one transaction
TRANSACTION_TIMEOUT_MS = 30_000  # one transaction lasts at most about the request timeout (15 s by default)

# Broker answers that concern the message itself, not the broker's health: retrying cannot help forever.
_REJECTED_NAMES = (
    "MessageSizeTooLargeError",
    "RecordListTooLargeError",
    "RecordTooLargeError",
    "CorruptRecordException",
    "InvalidTimestampError",
)


class Rejected(Exception):
    """The broker refused these messages of a transaction for what they are."""

    def __init__(self, messages: list[PendingMessage], cause: BaseException) -> None:
        super().__init__(f"{len(messages)} message(s) rejected: {describe(cause)}")
        self.messages = messages
        self.cause = cause


def mark_record(through: int) -> bytes:
    """The value of a publisher's mark: the ``seq`` of the last message its committed transactions hold."""
    return json.dumps({"through": through}, separators=(",", ":")).encode()


def read_mark(value: bytes | None) -> int | None:
    """The ``through`` of a mark record (None: no record). Raises ``ValueError`` for a record that is not one."""
    if value is None:
        return None
    try:
        through = json.loads(value)["through"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a publisher mark record: {exc!r}") from None
    if not isinstance(through, int) or isinstance(through, bool) or through < 0:
        raise ValueError(f"not a publisher mark record: through = {through!r}")
    return through


async def commit(
    producer: Any,
    messages: Sequence[PendingMessage],
    mark: tuple[str, str, bytes],
    offsets: tuple[Mapping[Any, int], str] | None = None,
) -> None:
    """Write ``messages`` (header ``skyattr-id``), the ``mark`` (topic, key, value) and, for a consume-transform-
    produce loop, the consumer ``offsets`` (offsets, group) in one transaction of the transactional ``producer``.
    After a failure the producer must be retired (stopped; a new one of the same id aborts the transaction).

    Raises :class:`Rejected` when the broker refused some of the messages for what they are (the transaction is
    then not committed), anything else as the producer raised it."""
    futures: list[tuple[PendingMessage, asyncio.Future[Any]]] = []
    try:
        # No abort on failure: aborting waits on the broker, which may be gone; the caller retires the producer
        # instead, and the next producer of the same transactional id aborts what this one left open.
        await producer.begin_transaction()
        for msg in messages:
            future = await producer.send(
                msg.topic,
                msg.value,
                key=msg.key,
                timestamp_ms=msg.timestamp_ms,
                headers=[(ID_HEADER, msg.id.encode())],
            )
            futures.append((msg, tracked(future)))
        topic, key, value = mark
        marked = tracked(await producer.send(topic, value, key=key.encode()))
        if offsets is not None:
            await producer.send_offsets_to_transaction(*offsets)
        await acknowledged(producer, [f for _, f in futures] + [marked])
        await producer.commit_transaction()
    except Exception as exc:
        refused = [
            (msg, f.exception())
            for msg, f in futures
            if f.done() and not f.cancelled() and type(f.exception()).__name__ in _REJECTED_NAMES
        ]
        if type(exc).__name__ in _REJECTED_NAMES and not refused and len(messages) == 1:
            refused = [(messages[0], exc)]  # refused by send() itself
        if refused:
            cause = refused[0][1]
            assert cause is not None
            raise Rejected([m for m, _ in refused], cause) from exc
        raise


def transactional_producer(bootstrap: str, transactional_id: str, **options: Any) -> Any:
    """An ``AIOKafkaProducer`` for :func:`commit` (not started): idempotent, ``acks="all"``."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=transactional_id, enable_idempotence=True, acks="all", **options
    )


class KafkaSender:
    """Delivers ``outbox``'s messages to ``bootstrap`` from a background task (see the module docstring).

    Runs on the event loop only. ``transactional_id`` names the writer: its producer and its mark in
    ``mark_topic`` (a compacted topic, made when missing). ``initial_mark``: the mark assumed when the topic holds
    none for this writer. ``security``: aiokafka connection options. ``request_timeout_ms`` bounds one attempt's
    steps (producer start, mark read-back, one transaction); ``retry_backoff_s`` is (first delay, largest delay)."""

    def __init__(
        self,
        outbox: KafkaOutbox,
        bootstrap: str,
        *,
        transactional_id: str,
        mark_topic: str,
        initial_mark: int = 0,
        client_id: str = "skyattr",
        request_timeout_ms: int = 15_000,
        retry_backoff_s: tuple[float, float] = (0.5, 30.0),
        security: Mapping[str, Any] | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        base, cap = retry_backoff_s
        if not (0 < base <= cap):
            raise ValueError(f"retry_backoff_s must be (base, max) with 0 < base <= max, got {retry_backoff_s!r}")
        if request_timeout_ms <= 0:
            raise ValueError(f"request_timeout_ms must be > 0, got {request_timeout_ms!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self.outbox = outbox
        self.bootstrap = bootstrap
        self.transactional_id = transactional_id
        self.mark_topic = mark_topic
        self._initial_mark = initial_mark
        self.through: int | None = None  # the mark as last read back or committed (None: not read yet)
        self._client_id = client_id
        self._security = dict(security or {})
        self._request_timeout_ms = request_timeout_ms
        self._timeout_s = request_timeout_ms / 1000
        self._backoff = (float(base), float(cap))
        self._rng = random.Random()
        self._max_batch = max_batch
        self._mark_topic_made = False

        self._producer: Any = None  # AIOKafkaProducer, imported lazily
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()  # the outbox got a message
        self._idle = asyncio.Event()  # the outbox is empty
        self._idle.set()
        self._kick = asyncio.Event()  # cut the current backoff short (flush/close want an attempt now)
        self._rejections: dict[int, int] = {}  # seq -> attempts the broker refused
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
        a second for each. Messages stay in the outbox; a transaction left open is aborted by the broker, or by
        the next producer of the same transactional id."""
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._task is not None:
            self._task.cancel()
            grace = max(1.0, deadline - time.monotonic())  # a cancelled task normally ends at once
            await asyncio.wait({self._task}, timeout=grace)
            if not self._task.done():
                log.warning("Kafka sender task did not stop within %.1f s", grace)
        self.outbox.release()
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_producer(producer, max(1.0, deadline - time.monotonic()))
        self._set_connected(False)

    # -------------------------------------------------------------------------------------------- the task
    async def _run(self) -> None:
        """Drain the outbox in order, forever; only cancellation (close) ends it."""
        attempt = 0
        while True:
            if not self.outbox:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._attempt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                claimed = self.outbox.pending()[: self.outbox.claimed] or self.outbox.pending()[:1]
                self.outbox.release()
                self._on_failure(claimed, exc)
                await self._retire_producer()
                if isinstance(exc, Rejected):
                    self._count_rejections(exc)
                await self._sleep_backoff(attempt)
                attempt += 1
                continue
            attempt = 0
            if self._outage_failures:
                log.info(
                    "Kafka delivery resumed after %d failed attempt(s); %d message(s) buffered",
                    self._outage_failures,
                    len(self.outbox),
                )
                self._outage_failures = 0
                self._last_failure_log = -float("inf")

    async def _attempt(self) -> None:
        """Steps 1–3 of the module docstring, once."""
        producer = await self._ensure_producer()
        assert self.through is not None
        self.outbox.drop_through(self.through)
        batch = self.outbox.claim(self._max_batch)
        if not batch:
            return
        mark = (self.mark_topic, self.transactional_id, mark_record(batch[-1].seq))
        await asyncio.wait_for(commit(producer, batch, mark), self._timeout_s)
        self.through = batch[-1].seq
        self.outbox.complete("sent")
        for msg in batch:
            self._rejections.pop(msg.seq, None)
        self._set_connected(True)

    async def _ensure_producer(self) -> Any:
        """The current producer, or a freshly started one (fencing its predecessors) and the mark read back. A
        start that fails leaves no producer behind."""
        if self._producer is not None:
            return self._producer
        producer = transactional_producer(
            self.bootstrap,
            self.transactional_id,
            client_id=self._client_id,
            compression_type="gzip",
            linger_ms=0,
            request_timeout_ms=self._request_timeout_ms,
            # a transaction left open by a killed process (without a checkpoint directory no successor fences it)
            # holds back read_committed consumers of the result topics until the broker aborts it
            transaction_timeout_ms=max(TRANSACTION_TIMEOUT_MS, 2 * self._request_timeout_ms),
            # aiokafka's own retry pace (not exponential): our base delay, kept between 0.1 and 1 s so that a
            # broker that comes back is used quickly without flooding the log meanwhile.
            retry_backoff_ms=int(1000 * min(1.0, max(0.1, self._backoff[0]))),
            **self._security,
        )
        try:
            # start() bootstraps and then waits for a producer id, which aiokafka retries without a bound.
            await asyncio.wait_for(producer.start(), self._timeout_s)
            if not self._mark_topic_made:
                await asyncio.wait_for(
                    ensure_topics(self.bootstrap, {self.mark_topic: (1, True)}, self._security), self._timeout_s
                )
                self._mark_topic_made = True
            held = await asyncio.wait_for(
                load_latest(self.bootstrap, self.mark_topic, self.transactional_id, self._security),
                self._timeout_s + SETTLE_S,
            )
        except BaseException as exc:
            await stop_producer(producer, 1.0)
            if isinstance(exc, TimeoutError):
                raise ConnectionError(f"producer did not start within {self._timeout_s:.1f} s") from exc
            raise
        found = read_mark(held)
        self.through = found if found is not None else self._initial_mark
        self._producer = producer
        self._set_connected(True)
        log.info(
            "Kafka producer %s connected to %s; published through %d",
            self.transactional_id,
            self.bootstrap,
            self.through,
        )
        return producer

    async def _retire_producer(self) -> None:
        """Forget the producer after a failure; the next one fences it and reads the mark again."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_producer(producer, min(self._timeout_s, 5.0))

    async def _sleep_backoff(self, attempt: int) -> None:
        """Wait :func:`backoff_delay` after ``attempt`` failures in a row; flush/close cut it short via ``_kick``."""
        delay = backoff_delay(attempt, *self._backoff, self._rng)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), delay)
        self._kick.clear()

    # -------------------------------------------------------------------------------------------- accounting
    def _count_rejections(self, exc: Rejected) -> None:
        """Give up a message the broker refused repeatedly for what it is (size, CRC, timestamp): it would otherwise
        hold every later message back forever."""
        for msg in exc.messages:
            n = self._rejections[msg.seq] = self._rejections.get(msg.seq, 0) + 1
            if n >= MAX_REJECTIONS and self.outbox.reject(msg):
                self._rejections.pop(msg.seq, None)
                log.error(
                    "Kafka broker rejected %s run %s (%d bytes) %d times: %s; message dropped",
                    msg.topic,
                    msg.run,
                    len(msg.value),
                    n,
                    describe(exc.cause),
                )

    def _on_failure(self, messages: list[PendingMessage], exc: BaseException) -> None:
        self.outbox.fail(messages)
        self._set_connected(False)
        self._outage_failures += 1
        now = time.monotonic()
        if self._outage_failures == 1 or now - self._last_failure_log >= LOG_EVERY_S:
            reason = f"no answer within {self._timeout_s:.1f} s" if isinstance(exc, TimeoutError) else describe(exc)
            log.warning(
                "Kafka delivery to %s failed (%d attempt(s) in a row, %d buffered): %s",
                self.bootstrap,
                self._outage_failures,
                len(self.outbox),
                reason,
            )
            self._last_failure_log = now
        if not isinstance(exc, (Rejected, ConnectionError, OSError, TimeoutError)):
            log.debug("Kafka delivery failure detail", exc_info=exc)


async def stop_producer(producer: Any, timeout: float) -> None:
    """Stop and discard a producer in bounded time, whatever the broker does.

    ``AIOKafkaProducer.stop()`` first waits for every pending batch, which with idempotence is retried forever
    while the broker is down. aiokafka has no public abort, so its private parts are used, defensively (skipped
    if absent; the bounded ``stop()`` still applies): first its sender task is stopped, so that no batch is in
    the middle of a request, then whatever it still holds is failed (a transaction that held them is never
    committed), then ``stop()`` closes the connections. Failing batches while the sender still runs would trip
    aiokafka (a re-enqueued batch that is no longer pending) and leak its metadata task."""
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


def describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a delivery future's exception as retrieved (a future failed at close would otherwise be logged)."""
    if not future.cancelled():
        future.exception()


def tracked(future: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """A delivery future of a transaction, its failure marked as seen (it is raised by :func:`acknowledged`; one
    failed when the producer closed would otherwise be logged with a traceback)."""
    future.add_done_callback(_retrieve)
    return future


async def acknowledged(producer: Any, futures: Sequence[asyncio.Future[Any]]) -> None:
    """Every write of the open transaction acknowledged, before it is committed: aiokafka commits a transaction
    even when one of its batches was refused, which would commit what follows it (a mark, consumer offsets) past a
    record the topic never got. Raises the first failure."""
    await producer.flush()
    for future in futures:
        if future.cancelled():
            raise ConnectionError("a write of the transaction was cancelled")
        if future.exception() is not None:
            raise future.exception()  # type: ignore[misc]


__all__ = [
    "ID_HEADER",
    "MAX_REJECTIONS",
    "KafkaSender",
    "Rejected",
    "commit",
    "mark_record",
    "read_mark",
    "stop_producer",
    "transactional_producer",
]
