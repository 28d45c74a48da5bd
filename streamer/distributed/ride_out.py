"""The distributed roles ride out a Kafka broker that is away, and say so once, not once per attempt.

``ingest --to-kafka`` and ``attributor`` keep everything they need to go on in Kafka itself (the source's cursor,
the attributor's state record and committed offsets, each written in the transaction of what it covers), so a role
that lost its broker can be started again from scratch and resumes exactly where its last committed transaction
left it: nothing lost, nothing doubled. :func:`ride_out` does that: it runs the role, and when the role fails
because the broker cannot be reached (a retriable Kafka error, a request that timed out), it waits with the one
backoff of :mod:`streamer.core.backoff` and runs it again, until the role ends by itself or ``stop`` is set.

While the broker is away the role is not ready (:class:`BrokerLink` drives the endpoint's ``/readyz`` and
``skyattr_kafka_connected``), and the log says it once: one warning when the broker is lost, one line when it is
back. aiokafka's own per-attempt lines (hundreds a minute) are folded by :class:`RepeatFilter`.

A broker that has never been reached within ``connect_timeout_s`` is a wrong address, not an outage:
:class:`BrokerUnreachable` (the command line exits 2 with one line). Once reached, the role waits for it as long
as it takes, as an operator of a Kubernetes deployment expects: the pod stays alive and unready.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from streamer.core.backoff import backoff_delay

T = TypeVar("T")
log = logging.getLogger("skyattr.kafka")

DEFAULT_CONNECT_TIMEOUT_S = 120.0
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0
PROBE_EVERY_S = 5.0


def connect_timeout(settings: object) -> float:
    """The settings' ``kafka_connect_timeout`` in seconds (0: for ever)."""
    return float(getattr(settings, "kafka_connect_timeout", DEFAULT_CONNECT_TIMEOUT_S)) or float("inf")


class BrokerUnreachable(Exception):
    """The broker was never reached within the connect timeout."""

    def __init__(self, bootstrap: str, timeout_s: float, cause: BaseException) -> None:
        self.bootstrap, self.timeout_s, self.cause = bootstrap, timeout_s, cause
        super().__init__(
            f"Kafka at {bootstrap} not reachable within --kafka-connect-timeout {timeout_s:g} s "
            f"({_describe(cause)}); is the address right?"
        )


def _describe(exc: BaseException) -> str:
    label, text = type(exc).__name__, str(exc)
    return text if text.startswith(label) else f"{label}: {text}" if text else label


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker is away (so a rerun of the role, later, can succeed): a Kafka error marked
    retriable, a request that timed out, a connection refused. A fenced producer, an authorisation failure or a
    bad request are not: another instance took over, or the configuration is wrong."""
    if isinstance(exc, (ConnectionError, asyncio.TimeoutError, socket.gaierror)):
        return True
    if type(exc).__module__.split(".")[0] not in ("aiokafka", "kafka"):
        return False
    from aiokafka.errors import KafkaTimeoutError

    return bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaTimeoutError)


class BrokerLink:
    """Whether the role has its broker now: ``up()`` once its clients started (and whenever a probe succeeds),
    ``down(exc)`` when it lost it. Logs each change once; ``on_change(connected)`` drives readiness and the
    ``skyattr_kafka_connected`` gauge."""

    def __init__(self, bootstrap: str, on_change: Callable[[bool], None] | None = None) -> None:
        self.bootstrap = bootstrap
        self.connected = False
        self.reached = False  # ever
        self.outages = 0
        self.down_since: float | None = None
        self.on_change = on_change

    def up(self) -> None:
        if self.connected:
            return
        if self.down_since is not None:
            waited = time.monotonic() - self.down_since
            if self.reached:
                log.warning("Kafka at %s is back after %.0f s", self.bootstrap, waited)
            else:
                log.warning("Kafka at %s reached after %.0f s", self.bootstrap, waited)
        self.connected, self.reached, self.down_since = True, True, None
        if self.on_change is not None:
            self.on_change(True)

    def down(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.outages += self.reached
            if self.reached:
                log.warning(
                    "Kafka at %s lost (%s): waiting for it, retrying with backoff", self.bootstrap, _describe(exc)
                )
            else:
                log.warning("Kafka at %s not reachable yet (%s): retrying with backoff", self.bootstrap, _describe(exc))
        self.connected = False
        if self.on_change is not None:
            self.on_change(False)


async def ride_out(
    role: Callable[[BrokerLink], Awaitable[T]],
    link: BrokerLink,
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    stop: asyncio.Event | None = None,
) -> T | None:
    """Run ``role(link)`` until it returns, running it again after each failure :func:`is_transient` calls an
    outage (see the module doc); None when ``stop`` was set while waiting. ``BrokerUnreachable`` when the broker
    was never reached within ``connect_timeout_s``; any other failure passes."""
    started = time.monotonic()
    streak = 0
    while True:
        attempt = time.monotonic()
        try:
            return await role(link)
        except Exception as exc:
            if not is_transient(exc):
                raise
            if not link.reached and time.monotonic() - started >= connect_timeout_s:
                raise BrokerUnreachable(link.bootstrap, connect_timeout_s, exc) from exc
            link.down(exc)
            if time.monotonic() - attempt > BACKOFF_MAX_S:  # it ran a while before failing: a fresh outage
                streak = 0
            delay = backoff_delay(streak, BACKOFF_BASE_S, BACKOFF_MAX_S)
            if not link.reached:
                delay = min(delay, max(0.0, connect_timeout_s - (time.monotonic() - started)))
            streak += 1
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return None
                except TimeoutError:
                    pass


async def probe(link: BrokerLink, check: Callable[[], Awaitable[object]], every_s: float = PROBE_EVERY_S) -> None:
    """Ask the broker something cheap every ``every_s`` (a metadata request), so that a role idle on a quiet
    topic notices an outage (and the end of one) for its readiness; runs until cancelled."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.wait_for(check(), every_s)
        except Exception as exc:  # whatever keeps the broker from answering (aiokafka: "Unable to get metadata")
            link.down(exc)
        else:
            link.up()


class RepeatFilter(logging.Filter):
    """Let a log message through once per ``window_s`` for each (logger, message template): aiokafka logs each
    failed attempt to reach a broker (several a second during an outage); one line per template says as much."""

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.window_s:
            return False
        self._last[key] = now
        if len(self._last) > 1000:
            self._last.clear()
        return True


def fold_client_logs(window_s: float = 60.0) -> None:
    """Install :class:`RepeatFilter` on every aiokafka logger (a filter acts on its own logger's records only, so
    each module's logger gets one; idempotent)."""
    import aiokafka  # noqa: F401  (its modules create their loggers on import)

    names = [n for n in logging.root.manager.loggerDict if n == "aiokafka" or n.startswith("aiokafka.")]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter(window_s))
