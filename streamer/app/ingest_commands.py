"""``skyattr events``: print what the decoder saw; and the snapshot file that ``skyattr attribute`` reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streamer.app.options import fail, plain
from streamer.core.frames import Decoded
from streamer.core.population import write_npz
from streamer.core.state import AgentState
from streamer.sources.archive import ReadReport, jetstream_lines

console = Console(stderr=True, soft_wrap=True)


def nothing_readable(path: Path, report: ReadReport) -> str:
    """The one error line for an archive without a single readable item: the path and why (its first problem)."""
    errors = report.errors
    if not errors:
        return f"nothing readable in {path}"
    more = f"; and {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
    return f"nothing readable in {path}: {errors[0]}{more}"


def save_snapshot(state: AgentState, path: Path) -> None:
    """The state's snapshot as an .npz that ``skyattr attribute`` reads (plus the DIDs)."""
    snap = state.snapshot()
    write_npz(path, snap.x, snap.visibility, snap.graph, snap.dids)


def events_command(
    archive: Annotated[Path, typer.Argument(help="Archive file or directory (relay frames or Jetstream JSONL).")],
    limit: Annotated[int | None, typer.Option(min=0, help="Stop after this many events.")] = None,
) -> None:
    """Print every event as one JSON line in the Jetstream v1 shape, with skyattr's normalized fields.

    ``time_us`` is monotone in the archive's order (the order the relay sent the frames, which is what a
    Jetstream's receive clock gives): the commit time, moved 1 µs past the previous line's where it would go back.
    A consumer can resume or deduplicate on it; ``skyattr.commit_time_us`` keeps the commit's own time and
    ``skyattr.cursor`` the source's cursor (the relay seq; Jetstream input: its ``time_us``). The local Jetstreams
    (``skyattr relay --jetstream2-port``) serve these very lines."""
    report = ReadReport()
    out = sys.stdout
    if limit == 0:
        return

    def skipped(decoded: Decoded) -> None:
        console.print(f"[yellow]skipped[/yellow] {plain(f'{decoded.error}: {decoded.detail}')}", highlight=False)

    try:
        for count, line in enumerate(jetstream_lines(archive, report, skipped), 1):
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            if limit is not None and count >= limit:
                return
    except BrokenPipeError:
        raise  # the reader went away (`| head`): the command ends quietly (streamer.app.help.Command)
    except (FileNotFoundError, OSError) as exc:
        fail(str(exc))
    if not report.readable:
        fail(nothing_readable(archive, report))
    for err in report.errors:
        console.print(f"[yellow]warning:[/yellow] {plain(err)}", highlight=False)
