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
from streamer.sources.archive import ArchiveWriter
from streamer.sources.firehose import FirehoseSource


async def record(
    source: FirehoseSource,
    writer: ArchiveWriter,
    *,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    progress_every: float = 5.0,
) -> int:
    """Write every frame of ``source`` to ``writer`` until it stops or ``limit`` frames; returns the count. The
    writer is also flushed every ``progress_every`` seconds, so a crash loses seconds of a quiet stream, not up to
    ``flush_every`` frames held in memory."""
    count = 0

    async def tick() -> None:  # on the same loop as the writes, so never concurrent with write()
        while True:
            await asyncio.sleep(progress_every)
            writer.flush()
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


async def _record_main(relay: str, out: Path, cursor: int | None, limit: int | None) -> tuple[int, FirehoseSource]:
    source = FirehoseSource(relay, cursor=cursor)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, source.stop)  # first Ctrl-C: finish the frame, flush, close the file
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread (tests) or no signals here: KeyboardInterrupt still closes the writer
    start = time.monotonic()

    def progress(count: int) -> None:
        rate = count / max(time.monotonic() - start, 1e-9)
        typer.echo(
            f"record: {count:,} frames ({rate:,.0f}/s), cursor {source.cursor}, "
            f"reconnects {source.stats.reconnects}, undecodable {dict(source.stats.errors)}",
            err=True,
        )

    try:
        with ArchiveWriter(out, source=relay) as writer:
            count = await record(source, writer, limit=limit, progress=progress)
        paths = ", ".join(map(str, writer.paths)) or "(none)"
        typer.echo(f"record: wrote {count:,} frames from {relay} to {paths}", err=True)
        return count, source
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await source.aclose()


# The settings `record` reads (flags generated from Settings; also from --config and SKYATTR_*).
RECORD_SETTINGS = {"relay"}


@with_settings_options(include=RECORD_SETTINGS)
def record_command(
    out: Annotated[Path, typer.Option(help="Directory for the archive files.")] = Path("archive"),
    cursor: Annotated[int | None, typer.Option(help="Resume after this seq (default: from now on).")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
    config: opt.Config = None,
    **flags: Any,
) -> None:
    """Record raw frames from a relay's firehose into a .skyarch.zst archive until Ctrl-C or --limit."""
    relay = load_or_exit(config, flags).relay
    try:
        _, source = asyncio.run(_record_main(relay, out, cursor, limit))
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
