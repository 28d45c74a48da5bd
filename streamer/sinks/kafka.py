"""Publish result messages (``skyattr.tiers``, ``skyattr.alerts``) to Kafka without ever blocking ingest.

The daemon produces a result every few minutes and must keep ingesting whatever the broker does, so publishing is
split in two halves:

* :meth:`KafkaPublisher.publish` is synchronous and cheap: it validates the message against its JSON Schema (a bad
  message is a programming error and raises ``ValueError`` at the call site, where the stack trace is useful),
  serialises it once and appends it to a bounded in-memory buffer. A full buffer drops its oldest message (never
  the one already handed to the producer, which may be written any moment): during a long outage the newest
  results are the valuable ones. A message the broker refuses for what it is (too large, corrupt) is dropped
  after one retry with a fresh producer, so it cannot hold back the messages behind it.
* A background task drains the buffer **one message at a time, in order**, with a single idempotent
  ``AIOKafkaProducer`` (``acks="all"``). The head of the buffer is removed only once the broker acknowledged it;
  every failure (broker down, timeouts, producer that cannot start) is counted, backed off exponentially with
  jitter, and retried on the *same* message, so the order on each topic is the order of ``publish`` calls (and
  the order across the two topics too). One message in flight costs one round trip per message, which is plenty
  for a result every few minutes; a full 10 000-message backlog drains in 10 000 round trips.

Duplicates. With ``enable_idempotence=True`` aiokafka never expires a batch it has handed to the broker: it retries
it on retriable errors with the same producer id and sequence number, and the broker discards a batch it already
wrote. So the publisher keeps the producer, and the in-flight message's delivery future, across transient failures:
a timeout while waiting for the acknowledgement is counted as a failure but the message is *not* sent again; the
publisher just keeps waiting for the same future. A new producer (a new producer id, which the broker cannot
dedupe against the old one) is created only when the old one is unusable: it could not start, its delivery future
failed (with idempotence that means a non-retriable error such as a sequence gap or a fenced/unknown producer id,
or its sender task died), or ``send`` itself failed with a non-retriable error.

Across restarts (the daemon's guarantee, with a checkpoint directory). Every message is first made durable in the
results journal (:mod:`streamer.core.journal`) and carries its identity (``id`` in the JSON, header ``skyattr-id``). The
publisher reports each acknowledgement (``on_ack``), which the daemon persists; at the next start every journaled
message after the last acknowledged one is published again with ``verify``: before sending the first of them, the
publisher reads back the last ``readback`` messages of every partition of its topics and skips those already
there. So a SIGKILL, a SIGTERM during an outage, or a whole replay with the broker away loses nothing and writes
nothing twice, provided this daemon is the only writer of its topics and no more than ``readback`` messages per
partition were written between the last persisted acknowledgement and the restart (at most the buffer, in
practice one or two). The residual duplicate window is a message whose write reached the broker but whose
acknowledgement was lost *and* whose producer then had to be replaced within one run of the daemon; consumers
that must be exact dedupe on ``skyattr-id``. Without a checkpoint directory, messages unsent at exit are lost
(reported, exit status 3 for a replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from streamer.sinks.prometheus import Metrics

log = logging.getLogger("skyattr.kafka")

DEFAULT_TOPICS: Mapping[str, str] = {"tiers": "skyattr.tiers", "alerts": "skyattr.alerts"}
MAX_REQUEST_BYTES = 1_048_576  # aiokafka's max_request_size default; a bigger message could never be sent
ID_HEADER = "skyattr-id"  # the result's identity, for consumers that deduplicate and for the read-back
RECORD_OVERHEAD_BYTES = 512  # generous bound for the record and batch headers around key and value
LOG_EVERY_S = 30.0  # rate limit of repeated warnings (drops, failures during an outage)


@cache
def _validator(kind: str) -> Draft202012Validator:
    """The compiled validator for ``streamer/schemas/<kind>.schema.json``, loaded once per process."""
    resource = resources.files("streamer") / "schemas" / f"{kind}.schema.json"
    try:
        schema = json.loads(resource.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"no JSON Schema for message kind {kind!r} (expected streamer/schemas/{kind}.schema.json)"
        ) from None
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@dataclass(frozen=True)
class PendingMessage:
    """A serialised message waiting for (or being given to) the broker; what :meth:`KafkaPublisher.pending` shows."""

    kind: str
    topic: str
    key: bytes
    value: bytes
    run: int | None
    timestamp_ms: int
    id: str = ""  # the result's identity (``<indicator>@<as_of_us>``), also sent as the ``skyattr-id`` header
    token: int | None = None  # the caller's reference (the journal seq), handed back to ``on_ack``
    verify: bool = False  # recovered after a restart: skipped when the topic already holds its identity


@dataclass(eq=False)
class _Entry:
    msg: PendingMessage
    # True from the moment the sender starts handing this message to a producer: a buffer overflow must then drop
    # the next message instead, since this one may already be on its way to the broker.
    claimed: bool = False
    # The delivery future of the producer that holds this message (None: not handed to a producer yet). Kept across
    # timeouts so that a slow acknowledgement never makes us send the message a second time.
    future: asyncio.Future[Any] | None = field(default=None, repr=False)
    rejections: int = 0  # times the broker refused this very message (size, corrupt, timestamp)


class _ProducerUnusable(Exception):
    """The producer must be replaced before the head message can be retried."""


class _AckLate(Exception):
    """The acknowledgement did not come within the request timeout; the producer still holds the message."""


# Broker answers that concern the message itself, not the broker's health: retrying cannot help forever.
_REJECTED_NAMES = (
    "MessageSizeTooLargeError",
    "RecordListTooLargeError",
    "RecordTooLargeError",
    "CorruptRecordException",
    "InvalidTimestampError",
)
MAX_REJECTIONS = 2  # one retry with a fresh producer, then the message is dropped (logged as an error)


class KafkaPublisher:
    """Buffered, ordered publisher of result messages; exactly once across restarts with the results journal.

    Call :meth:`publish` on the event loop's thread (other threads: ``loop.call_soon_threadsafe``). Messages
    published before :meth:`start` wait in the buffer. See the module docstring for ordering and duplicates.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Mapping[str, str] | None = None,
        *,
        buffer_limit: int = 10_000,
        metrics: Metrics | None = None,
        client_id: str = "skyattr",
        request_timeout_ms: int = 15_000,
        retry_backoff_s: tuple[float, float] = (0.5, 30.0),
        security: Mapping[str, Any] | None = None,
        on_ack: Callable[[int], None] | None = None,
        readback: int = 1000,
    ) -> None:
        """``topics`` maps a message kind to its topic (default ``DEFAULT_TOPICS``); every kind needs a schema.
        ``security`` holds aiokafka connection options (``security_protocol``, ``sasl_mechanism``,
        ``sasl_plain_username``, ``sasl_plain_password``, ``ssl_context``) for brokers that require them.
        ``request_timeout_ms`` bounds one attempt (producer start, metadata, acknowledgement); ``retry_backoff_s``
        is (first delay, largest delay) of the exponential backoff between attempts. ``on_ack(token)`` is called
        (on the loop) for every acknowledged message that was published with a token, and for a recovered one found
        already written. ``readback``: messages per partition read back to verify recovered messages."""
        self._topics = dict(DEFAULT_TOPICS if topics is None else topics)
        if not self._topics:
            raise ValueError("topics must map at least one message kind to a topic")
        for kind in self._topics:
            _validator(kind)  # fail at construction, not at the first result minutes later
        if buffer_limit < 1:
            raise ValueError(f"buffer_limit must be >= 1, got {buffer_limit!r}")
        base, cap = retry_backoff_s
        if not (0 < base <= cap):
            raise ValueError(f"retry_backoff_s must be (base, max) with 0 < base <= max, got {retry_backoff_s!r}")
        if request_timeout_ms <= 0:
            raise ValueError(f"request_timeout_ms must be > 0, got {request_timeout_ms!r}")
        self.bootstrap = bootstrap
        self.buffer_limit = buffer_limit
        self._metrics = metrics
        self._client_id = client_id
        self._security = dict(security or {})
        self._request_timeout_ms = request_timeout_ms
        self._timeout_s = request_timeout_ms / 1000
        self._backoff = (float(base), float(cap))
        self._rng = random.Random()
        self._on_ack = on_ack
        self._readback = readback
        self._written: set[tuple[str, str]] | None = None  # (topic, id) read back from the topics' tails
        self._skipped_written = 0

        self._buffer: deque[_Entry] = deque()
        self._producer: Any = None  # AIOKafkaProducer, imported lazily
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()  # buffer got a message
        self._idle = asyncio.Event()  # buffer is empty
        self._idle.set()
        self._kick = asyncio.Event()  # cut the current backoff short (flush/close want an attempt now)
        self._closed = False
        self._connected = False

        self._sent = 0
        self._failed = 0
        self._dropped = 0
        self._drops_unlogged = 0
        self._last_drop_log = -float("inf")
        self._outage_failures = 0  # consecutive failures since the last success
        self._last_failure_log = -float("inf")
        self._set_buffered()

    # -------------------------------------------------------------------------------------------- state
    @property
    def buffered(self) -> int:
        """Messages not yet acknowledged (including the one in flight)."""
        return len(self._buffer)

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def failed(self) -> int:
        """Failed delivery attempts (one message can fail many times during an outage)."""
        return self._failed

    @property
    def dropped(self) -> int:
        """Messages dropped unsent because the buffer was full."""
        return self._dropped

    @property
    def connected(self) -> bool:
        """True while a producer is up and the last attempt succeeded. An idle publisher learns that the broker
        went away only at its next attempt, so this can stay True during an outage with nothing to send."""
        return self._connected

    def pending(self) -> list[PendingMessage]:
        """The buffered messages, oldest first (a copy: for diagnostics, tests, or a JSONL fallback at exit)."""
        return [e.msg for e in self._buffer]

    # -------------------------------------------------------------------------------------------- publish
    def publish(self, kind: str, message: dict[str, Any], *, token: int | None = None, verify: bool = False) -> None:
        """Validate, serialise and buffer ``message``; never waits for the broker.

        ``token`` is handed to ``on_ack`` once the broker acknowledged the message. ``verify`` marks a message
        recovered from the results journal after a restart: it may have been written before the restart, so the
        sender first reads back the tail of its topic and skips it (acknowledging it) when its identity is there.

        Raises ``ValueError`` when ``kind`` is unknown, the message fails its schema, cannot be encoded as JSON
        (NaN, numpy scalars) or is too large for one Kafka request: those are bugs upstream, and a message that can
        never be delivered must not block the messages behind it. Raises ``RuntimeError`` after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError("KafkaPublisher is closed")
        topic = self._topics.get(kind)
        if topic is None:
            raise ValueError(f"unknown message kind {kind!r}; expected one of {', '.join(self._topics)}")
        error = best_match(_validator(kind).iter_errors(message))
        if error is not None:
            raise ValueError(f"invalid {kind} message at {error.json_path}: {error.message}")
        try:
            value = json.dumps(
                message, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{kind} message is not encodable as JSON: {exc}") from exc
        key = str(message["indicator"]).encode()
        if len(key) + len(value) + RECORD_OVERHEAD_BYTES > MAX_REQUEST_BYTES:
            raise ValueError(f"{kind} message is {len(value)} bytes; Kafka requests are limited to {MAX_REQUEST_BYTES}")
        run = message.get("run")
        ident = str(message.get("id", ""))
        msg = PendingMessage(
            kind,
            topic,
            key,
            value,
            run if isinstance(run, int) else None,
            int(time.time() * 1000),
            ident,
            token,
            verify,
        )
        self._buffer.append(_Entry(msg))
        while len(self._buffer) > self.buffer_limit:
            self._drop_oldest()
        self._idle.clear()
        self._wakeup.set()
        self._set_buffered()

    def _drop_oldest(self) -> None:
        """Drop the oldest message the producer does not hold yet (the one in flight may already be written, so
        forgetting it would make the counts lie)."""
        if self._buffer[0].claimed and len(self._buffer) > 1:
            entry = self._buffer[1]
            del self._buffer[1]
        else:
            entry = self._buffer.popleft()
        self._dropped += 1
        self._count(entry.msg.topic, "dropped")
        self._drops_unlogged += 1
        now = time.monotonic()
        if now - self._last_drop_log >= LOG_EVERY_S:
            log.warning(
                "Kafka buffer full (%d): dropped %d oldest unsent message(s), last %s run %s; %d dropped in all",
                self.buffer_limit,
                self._drops_unlogged,
                entry.msg.topic,
                entry.msg.run,
                self._dropped,
            )
            self._drops_unlogged = 0
            self._last_drop_log = now

    # -------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the background sender and return at once: connecting (and retrying while the broker is absent)
        happens in the background, so a missing broker never delays or fails the daemon's start."""
        if self._closed:
            raise RuntimeError("KafkaPublisher is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="skyattr-kafka-publisher")

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the buffer to drain; True when it is empty. A pending backoff is cut
        short so that a broker that came back is tried at once."""
        if not self._buffer:
            return True
        if self._task is None or self._task.done():
            return False  # nothing would ever drain it
        self._kick.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
        return not self._buffer

    async def close(self, timeout: float) -> int:
        """Flush for at most about ``timeout`` seconds, then stop the producer, in bounded time even with the
        broker down (``timeout`` plus about a second at worst). Returns (and logs) the number of messages left
        unacknowledged; they stay readable through :meth:`pending`. Idempotent."""
        if self._closed:
            return len(self._buffer)
        self._closed = True
        deadline = time.monotonic() + max(timeout, 0.0)
        reserve = min(1.0, 0.25 * max(timeout, 0.0))  # kept for stopping the producer
        await self.flush(max(0.0, deadline - reserve - time.monotonic()))
        grace = max(1.0, deadline - time.monotonic())  # enough for aiokafka's in-flight request to settle
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=grace)
            if not self._task.done():
                log.warning("Kafka sender task did not stop within %.1f s", grace)
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop_producer(producer, max(1.0, deadline - time.monotonic()))
        self._connected = False
        left = len(self._buffer)
        if left:
            by_topic: dict[str, list[int | None]] = {}
            for e in self._buffer:
                by_topic.setdefault(e.msg.topic, []).append(e.msg.run)
            detail = "; ".join(f"{t}: {len(runs)} ({_runs(runs)})" for t, runs in by_topic.items())
            in_flight = self._buffer[0].claimed
            log.warning(
                "Kafka publisher closed with %d message(s) unsent: %s%s",
                left,
                detail,
                " (the first was in flight and may have been written)" if in_flight else "",
            )
        else:
            log.info("Kafka publisher closed: all %d message(s) sent", self._sent)
        return left

    # -------------------------------------------------------------------------------------------- sender
    async def _run(self) -> None:
        """Drain the buffer in order, forever; only cancellation (close) ends it."""
        attempt = 0
        while True:
            if not self._buffer:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            entry = self._buffer[0]
            try:
                if entry.msg.verify and await self._already_written(entry.msg):
                    self._buffer.popleft()
                    self._skipped_written += 1
                    self._count(entry.msg.topic, "already_written")
                    self._set_buffered()
                    self._acked(entry.msg)
                    continue
                await self._deliver(entry)
            except asyncio.CancelledError:
                raise
            except _AckLate:
                # The acknowledgement is late: the producer still holds the message and retries it itself with the
                # same sequence number, so wait on the same future again instead of re-sending.
                self._on_failure(entry, f"no acknowledgement within {self._timeout_s:.1f} s", None)
                continue
            except Exception as exc:
                unusable = isinstance(exc, _ProducerUnusable)
                cause = exc.__cause__ if unusable and exc.__cause__ is not None else exc
                self._on_failure(entry, _describe(cause), exc)
                if unusable:
                    await self._replace_producer(entry)
                    if type(cause).__name__ in _REJECTED_NAMES:
                        entry.rejections += 1
                        if entry.rejections >= MAX_REJECTIONS:
                            self._reject(entry, cause)
                            continue
                await self._sleep_backoff(attempt)
                attempt += 1
                continue
            attempt = 0
            if self._buffer and self._buffer[0] is entry:
                self._buffer.popleft()
            self._sent += 1
            self._count(entry.msg.topic, "sent")
            self._set_buffered()
            self._acked(entry.msg)
            if self._outage_failures:
                log.info(
                    "Kafka delivery resumed after %d failed attempt(s); %d message(s) buffered",
                    self._outage_failures,
                    len(self._buffer),
                )
                self._outage_failures = 0
                self._last_failure_log = -float("inf")

    async def _deliver(self, entry: _Entry) -> None:
        """One attempt for the head message: make sure a producer is up, hand it the message unless it already
        holds it, and wait (bounded) for the broker's acknowledgement.

        Raises ``_AckLate`` when only the acknowledgement is late (keep waiting, same producer),
        ``_ProducerUnusable`` when the producer must be replaced, anything else for a transient failure with the
        producer kept (metadata not available, broker unreachable before the message was handed over)."""
        from aiokafka.errors import KafkaError, KafkaTimeoutError

        producer = await self._ensure_producer()
        if entry.future is None:
            msg = entry.msg
            entry.claimed = True
            try:
                # aiokafka's own metadata wait is bounded by request_timeout_ms; ours is a backstop. Cancelling
                # send() cannot lose a half-appended message: the append and the return have no await between.
                entry.future = await asyncio.wait_for(
                    producer.send(
                        msg.topic,
                        msg.value,
                        key=msg.key,
                        timestamp_ms=msg.timestamp_ms,
                        headers=[(ID_HEADER, msg.id.encode())] if msg.id else None,
                    ),
                    self._timeout_s + 5.0,
                )
                entry.future.add_done_callback(_retrieve)  # its error, if any, is handled here, not by asyncio
            except (TimeoutError, KafkaTimeoutError) as exc:
                entry.claimed = False
                raise ConnectionError(f"message not accepted by the producer: {exc!r}") from exc
            except KafkaError as exc:
                entry.claimed = False
                if exc.retriable:
                    raise
                raise _ProducerUnusable() from exc
            except BaseException as exc:  # closed producer, dead sender task, ... (or our own cancellation)
                entry.claimed = False
                if isinstance(exc, Exception):
                    raise _ProducerUnusable() from exc
                raise
        future = entry.future
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
        self._connected = True

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
        self._connected = True
        log.info("Kafka producer connected to %s", self.bootstrap)
        return producer

    async def _replace_producer(self, entry: _Entry) -> None:
        """Forget the unusable producer; the head message will be handed to the next one (a new producer id)."""
        entry.future = None
        entry.claimed = False
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop_producer(producer, min(self._timeout_s, 5.0))

    async def _stop_producer(self, producer: Any, timeout: float) -> None:
        """Stop and discard a producer in bounded time, whatever the broker does.

        ``AIOKafkaProducer.stop()`` first waits for every pending batch, which with idempotence is retried forever
        while the broker is down. aiokafka has no public abort, so its private parts are used, defensively (skipped
        if absent; the bounded ``stop()`` still applies): first its sender task is stopped, so that no batch is in
        the middle of a request, then whatever it still holds is failed (those messages are still in our buffer),
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
            _abandon_batches(producer, KafkaError("abandoned: the skyattr publisher stopped this producer"))
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
        """Exponential backoff with jitter (half fixed, half random); flush/close cut it short via ``_kick``."""
        base, cap = self._backoff
        delay = min(cap, base * 2.0 ** min(attempt, 32))
        delay = delay / 2 + self._rng.uniform(0, delay / 2)
        self._kick.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), delay)

    # -------------------------------------------------------------------------------------------- recovery
    def _acked(self, msg: PendingMessage) -> None:
        if self._on_ack is not None and msg.token is not None:
            try:
                self._on_ack(msg.token)
            except Exception:
                log.exception("recording the acknowledgement of %s %s failed", msg.topic, msg.id)

    @property
    def already_written(self) -> int:
        """Recovered messages skipped because their topic already held them."""
        return self._skipped_written

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

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self._client_id}-readback",
            enable_auto_commit=False,
            group_id=None,
            request_timeout_ms=self._request_timeout_ms,
            **self._security,
        )
        await consumer.start()
        found: set[tuple[str, str]] = set()
        try:
            parts: list[Any] = []
            producer = await self._ensure_producer()
            for topic in sorted(set(self._topics.values())):
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
    def _reject(self, entry: _Entry, cause: BaseException) -> None:
        """Drop a message the broker refused repeatedly for what it is (size, CRC, timestamp): it would otherwise
        hold every later message back forever. Counted as dropped."""
        if self._buffer and self._buffer[0] is entry:
            self._buffer.popleft()
        self._dropped += 1
        self._count(entry.msg.topic, "dropped")
        self._set_buffered()
        log.error(
            "Kafka broker rejected %s run %s (%d bytes) %d times: %s; message dropped",
            entry.msg.topic,
            entry.msg.run,
            len(entry.msg.value),
            entry.rejections,
            cause,
        )

    def _on_failure(self, entry: _Entry, reason: str, exc: BaseException | None) -> None:
        self._failed += 1
        self._connected = False
        self._count(entry.msg.topic, "failed")
        self._outage_failures += 1
        now = time.monotonic()
        if self._outage_failures == 1 or now - self._last_failure_log >= LOG_EVERY_S:
            log.warning(
                "Kafka delivery to %s failed (%d attempt(s) in a row, %d buffered): %s",
                self.bootstrap,
                self._outage_failures,
                len(self._buffer),
                reason,
            )
            self._last_failure_log = now
        if exc is not None and not isinstance(exc, (_ProducerUnusable, ConnectionError, OSError)):
            log.debug("Kafka delivery failure detail", exc_info=exc)

    def _count(self, topic: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.kafka.labels(topic, outcome).inc()

    def _set_buffered(self) -> None:
        if self._metrics is not None:
            self._metrics.kafka_buffered.set(len(self._buffer))


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


def _runs(runs: list[int | None]) -> str:
    known = [r for r in runs if r is not None]
    if not known:
        return "no run numbers"
    lo, hi = min(known), max(known)
    return f"run {lo}" if lo == hi else f"runs {lo}-{hi}"


__all__ = ["DEFAULT_TOPICS", "KafkaPublisher", "PendingMessage"]
