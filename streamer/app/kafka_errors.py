"""A Kafka client error at the command line: one line naming the broker and the error, exit 1, never a traceback.

The roles (``ingest --to-kafka``, ``worker``, ``attributor``) meet the same errors (a broker that cannot be reached,
a fenced producer, a timed-out request) from aiokafka; one handler words them all alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer


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
