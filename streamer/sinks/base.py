"""The sink protocol: where typed results go.

A sink receives every :class:`~streamer.core.results.RunResult` and :class:`~streamer.core.results.AlertTransition`
in the order they were made, each exactly once per process (the pipeline deduplicates on the result's identity and
journals it first when a checkpoint directory is given). ``publish`` is synchronous and must be cheap: a sink that
talks to the network (Kafka) buffers and sends from its own task. It may be called from a worker thread; a sink
that needs its event loop hops onto it itself. A sink that raises is isolated by the pipeline and counted
(``skyattr_sink_errors_total{sink}``), except :class:`~streamer.core.journal.ResultWriteError`, which stops the
pipeline because a result that cannot be made durable must not be checkpointed past.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from streamer.core.results import Result


@runtime_checkable
class Sink(Protocol):
    """``publish(result)``, ``async start()``, ``async close(timeout) -> int`` (results left undelivered)."""

    name: str

    def publish(self, result: Result) -> None: ...

    async def start(self) -> None: ...

    async def close(self, timeout: float) -> int: ...
