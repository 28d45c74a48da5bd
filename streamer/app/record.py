"""``skyattr record``: write a relay's raw frames to an archive, resumable by cursor.

``--relay`` is the settings option (also from ``--config`` and ``SKYATTR_RELAY``, the relay ``run`` reads); the
other options are the recorder's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from streamer.app import options as opt
from streamer.app.flags import load_or_exit, with_settings_options
from streamer.app.progress import JobProgress
from streamer.sources.archive import ArchiveWriter
from streamer.sources.firehose import FirehoseSource


async def record(
    source: FirehoseSource,
    writer: ArchiveWriter,
    *,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    progress_every: float = 1.0,
    flush_every: float = 5.0,
) -> int:
    """Write every frame of ``source`` to ``writer`` until it stops or ``limit`` frames; returns the count.
    ``progress(count)`` is called every ``progress_every`` seconds. The writer is also flushed every
    ``flush_every`` seconds, so a crash loses seconds of a quiet stream, not up to ``flush_every`` frames held in
    memory (and not more often: each flush closes a zstd frame, and small ones compress worse)."""
    count = 0

    async def tick() -> None:  # on the same loop as the writes, so never concurrent with write()
        flushed = time.monotonic()
        while True:
            await asyncio.sleep(min(progress_every, flush_every))
            if time.monotonic() - flushed >= flush_every:
                writer.flush()
                flushed = time.monotonic()
            if progress is not None:
                progress(count)

    ticker = asyncio.create_task(tick())
    try:
        async with contextlib.aclosing(source.items()) as items:
            async for frame, decoded in items:
                writer.write(frame, decoded.seq)
                count += 1
                if limit is not None and count >= limit:
                    break
    finally:
        ticker.cancel()
    writer.flush()
    return count


async def _record_main(
    relay: str, out: Path, cursor: int | None, limit: int | None, bar: JobProgress
) -> tuple[int, FirehoseSource]:
    source = FirehoseSource(relay, cursor=cursor)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, source.stop)  # first Ctrl-C: finish the frame, flush, close the file
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread (tests) or no signals here: KeyboardInterrupt still closes the writer
    task = bar.task("record", total=limit, unit="frames", detail=f"from {relay}")

    def progress(count: int) -> None:
        st = source.stats
        task.update(
            count,
            detail=f"cursor {source.cursor if source.cursor is not None else 'none yet'}, {st.reconnects} reconnects, "
            f"{sum(st.errors.values()):,} undecodable",
        )

    try:
        with ArchiveWriter(out, source=relay) as writer:
            count = await record(source, writer, limit=limit, progress=progress)
        bar.stop()  # before the result line, so a bar never overwrites it
        paths = ", ".join(map(str, writer.paths)) or "(none)"
        typer.echo(f"record: wrote {count:,} frames from {relay} to {paths}")  # the result: stdout
        return count, source
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await source.aclose()


# The settings `record` reads (flags generated from Settings; also from --config and SKYATTR_*).
RECORD_SETTINGS = {"relay"}


@with_settings_options(include=RECORD_SETTINGS)
def record_command(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Directory for the archive files.")] = Path("archive"),
    cursor: Annotated[int | None, typer.Option(help="Resume after this seq (default: from now on).")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
    config: opt.Config = None,
    progress: Annotated[
        bool, typer.Option(help="Progress on stderr: a bar on a terminal, else a line every 10 s.")
    ] = True,
    **flags: Any,
) -> None:
    """Record raw frames from a relay's firehose into a .skyarch.zst archive until Ctrl-C or --limit.

    The line naming the files written goes to stdout; progress (frames, rate, cursor) and the cursor to resume
    from go to stderr."""
    relay = load_or_exit(config, flags).relay
    try:
        with JobProgress(progress) as bar:
            _, source = asyncio.run(_record_main(relay, out, cursor, limit, bar))
    except KeyboardInterrupt:
        typer.echo("record: interrupted; archive closed", err=True)
        return
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    st = source.stats
    counts = f"{st.yielded:,} frames, {st.duplicates:,} duplicates, {sum(st.errors.values()):,} undecodable"
    if source.cursor is None:
        typer.echo(f"record: nothing received from {relay} ({counts}); no cursor to resume from", err=True)
    else:
        typer.echo(f"record: {counts}; resume with --cursor {source.cursor}", err=True)
