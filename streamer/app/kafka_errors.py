"""A Kafka client error at the command line: one line naming the broker and the error, exit 1, never a traceback.

The roles (``ingest --to-kafka``, ``worker``, ``attributor``) meet the same errors (a broker that cannot be reached,
a fenced producer, a timed-out request) from aiokafka; one handler words them all alike, and :func:`run_kafka_role`
runs a role the one way: riding out its broker, stopped by a signal, its errors in one line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from streamer.app.signals import stop_event
from streamer.distributed.ride_out import BrokerLink, BrokerUnreachable, connect_timeout, fold_client_logs, ride_out

if TYPE_CHECKING:
    from streamer.app.settings import Settings


def is_kafka_error(exc: BaseException) -> bool:
    """An exception raised by the Kafka client library (aiokafka and its ``kafka`` errors)."""
    return type(exc).__module__.split(".")[0] in ("aiokafka", "kafka")


def exit_for(exc: BaseException, bootstrap: str) -> typer.Exit:
    """Write the one line for ``exc`` and return the exit to raise."""
    label, text = type(exc).__name__, str(exc)
    typer.echo(f"error: Kafka at {bootstrap}: {text if text.startswith(label) else f'{label}: {text}'}", err=True)
    return typer.Exit(1)


@contextmanager
def kafka_errors_named(bootstrap: str) -> Iterator[None]:
    """Turn a Kafka client error escaping the block into :func:`exit_for`'s line; anything else passes."""
    try:
        yield
    except Exception as exc:
        if not is_kafka_error(exc):
            raise
        raise exit_for(exc, bootstrap) from exc


def run_kafka_role(
    attempt: Callable[[asyncio.Event, BrokerLink], Awaitable[Any]], link: BrokerLink, settings: Settings
) -> None:
    """Run a distributed role until it ends or SIGTERM/SIGINT: ``attempt(stop, link)`` is run again whenever the
    broker goes away (:func:`streamer.distributed.ride_out.ride_out`). A broker never reached within
    ``--kafka-connect-timeout`` (and an ``OSError`` or ``ValueError`` of the role) is one line and exit 2; another
    Kafka error is :func:`exit_for`'s line."""

    async def main() -> None:
        stop = stop_event()
        fold_client_logs()
        await ride_out(lambda link: attempt(stop, link), link, connect_timeout_s=connect_timeout(settings), stop=stop)

    try:
        with kafka_errors_named(link.bootstrap):
            asyncio.run(main())
    except (BrokerUnreachable, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
