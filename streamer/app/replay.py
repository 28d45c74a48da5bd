"""Replay an archive through the pipeline, resumable from a checkpoint: the event-time driver's wiring.

:func:`replay_archive` loads (and checks) the checkpoint, builds the :class:`~streamer.sources.archive.
ArchiveSource` resuming after its position, the dispatcher on the checkpointed state, and a
:class:`~streamer.core.pipeline.Pipeline` on event time when an attribution is asked for. It writes a checkpoint
before the first item of a fresh replay (so whatever is killed when, a restart knows where the results file
stood), every ``checkpoint_every_s`` seconds or ``checkpoint_every_items`` items, and at the end. The tail of the
archive after its last due time gets one last run, once (not again when a finished replay is resumed).

With a checkpoint directory, the checkpoint records ``depends`` (the options results depend on) and the archive's
identity (size and hash of its head); a resume with any of them changed is refused with ``ValueError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernels import defaults
from streamer.core.attribution import AttributionConfig
from streamer.core.checkpoint import Checkpoints, file_identity
from streamer.core.dispatch import SequentialDispatcher
from streamer.core.pipeline import Pipeline
from streamer.core.results import Result
from streamer.core.schedule import ScheduleState
from streamer.core.source import SourceStats
from streamer.core.state import AgentState, StateConfig
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


async def replay_archive(
    path: str | Path,
    *,
    config: StateConfig | None = None,
    followers: dict[str, float] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every_s: float = 60.0,
    checkpoint_every_items: int | None = None,
    speed: float | None = None,
    stop: asyncio.Event | None = None,
    attribution: AttributionConfig | None = None,
    interval_s: float = defaults.INTERVAL_S,
    deliver: Callable[[Result], None] | None = None,
    on_skip: Callable[[str], None] | None = None,
    depends: dict[str, Any] | None = None,
    on_start: Callable[[dict[str, Any], Pipeline], None] | None = None,
    checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
    after_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    on_progress: Callable[[ArchiveSource, Pipeline], None] | None = None,
    progress_every: int = 2000,
) -> ReplayResult:
    """See the module doc. ``on_start(extra, pipeline)`` runs once the checkpoint is loaded, before any item;
    ``checkpoint_extra()`` adds to each checkpoint; ``after_checkpoint(extra)`` runs once one is durable."""
    extra: dict[str, Any] = {}
    deps = dict(depends or {})
    if checkpoint_dir:
        deps["archive"] = file_identity(path)
    store = Checkpoints(checkpoint_dir, "replay", deps) if checkpoint_dir else None

    def same_archive(held: dict[str, Any]) -> None:
        if held.get("archive", str(path)) != str(path):
            raise ValueError(
                f"checkpoint in {checkpoint_dir} is for archive {held['archive']}, not {path}; give each archive "
                "its own checkpoint directory"
            )

    loaded = store.resume(config, followers, check=same_archive) if store is not None else None
    resumed, seq_cursor, seen = 0, None, None
    if loaded is not None:
        state, seq_cursor, extra = loaded
        resumed, seen = int(extra.get("position", 0)), extra.get("seen")
    else:
        state = AgentState(config, followers)
    source = ArchiveSource(path, skip=resumed, seq_cursor=seq_cursor, seen=seen)
    dispatcher = SequentialDispatcher(
        state, source.stats, cursor=seq_cursor if seq_cursor is not None else -1, seen=source.seq.seen.copy()
    )
    pipe = Pipeline(
        dispatcher,
        attribution,
        interval_s,
        deliver or (lambda _: None),
        clock="event",
        schedule=ScheduleState.from_dict(extra.get("schedule", {})),
        on_skip=on_skip,
    )
    if on_start is not None:
        on_start(extra, pipe)
    finished = bool(extra.get("finished", False))

    async def checkpoint() -> None:
        if store is None:
            return
        info = {
            **(checkpoint_extra() if checkpoint_extra is not None else {}),
            "schedule": pipe.schedule.as_dict(),
            "position": source.cursor,
            "finished": finished,
            "archive": str(path),
        }
        await store.save(dispatcher.state, dispatcher.cursor, dispatcher.seen, info)
        if after_checkpoint is not None:
            after_checkpoint(info)

    if store is not None and loaded is None:
        await checkpoint()
    progress = (lambda: on_progress(source, pipe)) if on_progress is not None else None
    stop = stop if stop is not None else asyncio.Event()
    ended = await pipe.run(
        source,
        stop=stop,
        checkpoint=checkpoint if store is not None else None,
        checkpoint_every_s=checkpoint_every_s,
        checkpoint_every_items=checkpoint_every_items,
        speed=speed,
        on_progress=progress,
        progress_every=progress_every,
    )
    interrupted = ended.interrupted
    if not interrupted and not finished:
        if attribution is not None:  # the tail of the archive after the last scheduled run
            await pipe.run_tail()
        finished = True
    await checkpoint()
    state.flush()
    return ReplayResult(
        state,
        source.stats,
        source.report,
        ended.seconds,
        resumed,
        source.position,
        dispatcher.cursor,
        interrupted=interrupted,
        pipeline=pipe,
    )


def replay(path: str | Path, **kwargs: Any) -> ReplayResult:
    """:func:`replay_archive` from synchronous code (tools, tests, the report)."""
    return asyncio.run(replay_archive(path, **kwargs))
