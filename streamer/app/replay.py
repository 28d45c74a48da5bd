"""Replay an archive through the pipeline, resumable from a checkpoint: the event-time :class:`ArchiveFeed`.

The wiring is :class:`~streamer.app.wiring.Run`'s, the live daemon's too; an archive differs in its clock (the
events' own times, so the runs of a replay are those of the live run that recorded the archive), in what a
checkpoint records (the archive's path and the items consumed; its size and head hash as a dependency, so a
resume against another file at the same path is refused with ``ValueError``), and in ending: the tail of the
archive after its last due time gets one last run, once (not again when a finished replay is resumed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from streamer.app.wiring import Deliver, Outlet, Resumed, Run, RunOptions
from streamer.core.checkpoint import file_identity
from streamer.core.pipeline import Clock, Pipeline
from streamer.core.results import Result
from streamer.core.schedule import ScheduleState
from streamer.core.source import SourceStats
from streamer.core.state import AgentState
from streamer.sources.archive import ArchiveSource, ReadReport


@dataclass
class ReplayResult:
    state: AgentState
    stats: SourceStats
    report: ReadReport
    seconds: float
    resumed_from: int  # archive items the checkpoint already held
    position: int  # archive items consumed, resumed ones included
    cursor: int  # relay seq applied last (-1: none)
    interrupted: bool = False
    pipeline: Pipeline | None = None

    @property
    def runs(self) -> int:
        return self.pipeline.schedule.run if self.pipeline is not None else 0


@dataclass
class ArchiveFeed:
    """An archive on event time (the :class:`~streamer.app.wiring.Feed` of a replay): a checkpoint records the
    archive's path and how many of its items were consumed, and its identity (size and head hash) is a dependency,
    so a resume against another file at the same path is refused."""

    path: Path
    source: ArchiveSource | None = None
    mode: Literal["live", "replay"] = "replay"
    clock: Clock = "event"
    at_least_once: bool = False  # an archive's items are each read once

    def identity(self) -> dict[str, Any]:
        return {"archive": file_identity(self.path)}

    def check(self, extra: dict[str, Any]) -> None:
        if extra.get("archive", str(self.path)) != str(self.path):
            raise ValueError(
                f"the checkpoint is for archive {extra['archive']}, not {self.path}; give each archive its own "
                "checkpoint directory"
            )

    def schedule(self, held: ScheduleState) -> ScheduleState:
        return held

    def open(self, resumed: Resumed, stats: SourceStats, stop: asyncio.Event) -> ArchiveSource:
        skip = int(resumed.extra.get("position", 0))
        self.source = ArchiveSource(self.path, skip=skip, seq_cursor=resumed.cursor, seen=resumed.seen, stats=stats)
        return self.source

    def position(self) -> dict[str, Any]:
        assert self.source is not None
        return {"position": self.source.cursor, "archive": str(self.path)}


async def replay_archive(
    path: str | Path,
    *,
    stop: asyncio.Event | None = None,
    outlet: Outlet | None = None,
    deliver: Callable[[Result], None] | None = None,
    on_progress: Callable[[ArchiveSource, Pipeline], None] | None = None,
    progress_every: int = 2000,
    options: RunOptions | None = None,
    **fields: Any,
) -> ReplayResult:
    """See the module doc. ``options`` and ``fields``: :class:`~streamer.app.wiring.RunOptions` (the fields
    replace the options'); results go to ``outlet``, or to ``deliver`` (a callable) when no outlet is given;
    ``on_progress(source, pipeline)`` every ``progress_every`` items."""
    feed = ArchiveFeed(Path(path))
    run = Run.open(
        feed,
        replace(options or RunOptions(), **fields),
        outlet if outlet is not None else Deliver(deliver),
        stop,
    )
    source = feed.source
    assert source is not None
    progress = (lambda: on_progress(source, run.pipeline)) if on_progress is not None else None
    resumed = source.skip
    ended = await run.go(progress, progress_every)
    return ReplayResult(
        run.dispatcher.state,
        source.stats,
        source.report,
        ended.seconds,
        resumed,
        source.position,
        run.dispatcher.cursor,
        interrupted=ended.interrupted,
        pipeline=run.pipeline,
    )


def replay(path: str | Path, **kwargs: Any) -> ReplayResult:
    """:func:`replay_archive` from synchronous code (tools, tests, the report)."""
    return asyncio.run(replay_archive(path, **kwargs))
