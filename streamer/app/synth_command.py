"""``skyattr synth``: write a synthetic firehose archive in the real wire format."""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Annotated

import typer

from streamer.app.progress import JobProgress
from streamer.core.durable import why_no_directory
from streamer.sources.archive import SUFFIX
from streamer.sources.did_documents import documents_path
from streamer.testing.synth import write_synth_archive


def synth_command(
    agents: Annotated[int, typer.Option(help="Accounts in the synthetic network (at least 2).")] = 2000,
    hours: Annotated[float, typer.Option(help="Hours of firehose traffic to generate.")] = 24,
    seed: Annotated[int, typer.Option(help="Random seed: the same arguments give a byte-identical file.")] = 0,
    out: Annotated[Path, typer.Option(help="Archive file to write (a directory gets a synth-*.skyarch.zst).")] = Path(
        f"synth{SUFFIX}"
    ),
    progress: Annotated[
        bool, typer.Option(help="Progress on stderr: a bar on a terminal, else a line every 10 s.")
    ] = True,
) -> None:
    """Write a synthetic firehose archive in the real wire format, for replay, tests and demos.

    The line naming the file written goes to stdout; progress and errors to stderr."""
    if agents < 2:
        typer.echo(f"error: --agents must be at least 2, got {agents}", err=True)
        raise typer.Exit(2)
    if not (hours > 0 and math.isfinite(hours)):
        typer.echo(f"error: --hours must be a positive number, got {hours}", err=True)
        raise typer.Exit(2)
    if out.is_dir():
        out = out / f"synth-{agents}-{hours:g}h-{seed}{SUFFIX}"
    if not out.parent.is_dir():
        typer.echo(f"error: cannot write {out}: {why_no_directory(out.parent)}", err=True)
        raise typer.Exit(2)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C: no temporary file left
    try:
        with JobProgress(progress) as bar:
            task = bar.task("synth", unit="events", detail=out.name)
            result = write_synth_archive(
                out, agents, hours, seed, progress=lambda done, total: task.update(done, total=total)
            )
    except OSError as exc:  # a read-only or special file system, a full disk: where and why, not a traceback
        typer.echo(f"error: cannot write {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        if not documents_path(out).exists():  # an archive whose DID documents were cut short goes too
            out.unlink(missing_ok=True)
        typer.echo(f"synth: interrupted; {out} not written", err=True)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    kinds = " ".join(f"{k}={v}" for k, v in sorted(result.counts.items(), key=lambda kv: -kv[1]))
    typer.echo(
        f"wrote {result.path}: {result.frames} frames (seq {result.first_seq}..{result.last_seq}), {kinds}; "
        f"{result.bytes:,} bytes ({result.raw_bytes:,} uncompressed)"
    )
    typer.echo(f"wrote {result.documents}: DID documents of {result.accounts} accounts (signing keys, handles)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
