"""``skyattr replay`` and ``skyattr events``: read archives into state, or print what the decoder saw."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from streamer.archive import ReadReport, read_archive
from streamer.ingest import Ingestor, load_followers, replay
from streamer.jetstream import to_jetstream
from streamer.state import AgentState, StateConfig

console = Console(stderr=True, soft_wrap=True)


def default_archive_path() -> Path:
    from streamer.synth import default_archive

    return default_archive()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def save_snapshot(state: AgentState, path: Path) -> None:
    """The state's snapshot as an .npz that ``skyattr attribute`` reads (plus the DIDs)."""
    snap = state.snapshot()
    g = snap.graph
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0)
    np.savez_compressed(
        path,
        x=snap.x,
        visibility=snap.visibility,
        attender=g.attender if g is not None else empty_i,
        source=g.source if g is not None else empty_i,
        weight=g.weight if g is not None else empty_f,
        dids=np.array(snap.dids),
    )


def replay_command(
    archive: Annotated[
        Path | None, typer.Argument(help="Archive file or directory (default: the bundled one).")
    ] = None,
    speed: Annotated[
        float | None, typer.Option(help="Replay at this multiple of event time (default: full speed).")
    ] = None,
    bucket_hours: Annotated[float, typer.Option(help="Width of a window bucket in hours.")] = 24.0,
    buckets: Annotated[int, typer.Option(help="Buckets in the rolling window.")] = 14,
    edge_budget: Annotated[int, typer.Option(help="Most attention edges held in the window.")] = 20_000_000,
    followers: Annotated[Path | None, typer.Option(help="CSV did,followers used as visibility.")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Checkpoint here; resume from it if present.")] = None,
    checkpoint_every: Annotated[float, typer.Option(help="Seconds between checkpoints.")] = 60.0,
    checkpoint_every_items: Annotated[int | None, typer.Option(help="Also checkpoint every this many items.")] = None,
    snapshot_out: Annotated[Path | None, typer.Option(help="Write the final snapshot (.npz) for `attribute`.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress line on stderr.")] = True,
) -> None:
    """Replay an archive into the rolling agent state and report what was ingested."""
    path = archive or default_archive_path()
    try:
        config = StateConfig(bucket_hours=bucket_hours, buckets=buckets, edge_budget=edge_budget)
        table = load_followers(followers) if followers else None
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,} items"),
            TimeElapsedColumn(),
            console=console,
            disable=not progress,
            transient=True,
        ) as bar:
            task = bar.add_task(f"replaying {path.name}", total=None)

            def tick(ing: Ingestor) -> None:
                if ing.position % 1000 == 0:
                    bar.update(task, completed=ing.position)

            result = replay(
                path,
                config=config,
                followers=table,
                checkpoint_dir=checkpoint_dir,
                checkpoint_every_s=checkpoint_every,
                checkpoint_every_items=checkpoint_every_items,
                speed=speed,
                on_item=tick,
                handle_signals=True,
            )
    except (ValueError, FileNotFoundError, OSError) as exc:
        _fail(str(exc))
        return
    for err in result.report.errors:
        console.print(f"[yellow]warning:[/yellow] {err}")
    if not result.report.readable and result.resumed_from == 0:
        _fail(f"nothing readable in {path}")
    if snapshot_out:
        save_snapshot(result.state, snapshot_out)
    snap = result.state.snapshot()
    summary = {
        "archive": str(path),
        "stats": result.ingestor.stats.as_dict(),
        "state": {
            "agents": snap.agents,
            "edges": snap.edges,
            "events": snap.events,
            "counters": dict(result.state.counters),
        },
        "window_us": [snap.window_start_us, snap.window_end_us],
        "cursor": result.ingestor.cursor,
        "position": result.ingestor.position,
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 3),
        "errors": result.report.errors,
        "interrupted": result.interrupted,
    }
    if json_out:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    stats = result.ingestor.stats
    rate = stats.items / result.seconds if result.seconds > 0 else 0.0
    console.print(
        f"{stats.items:,} items in {result.seconds:.2f}s ({rate:,.0f}/s); events {dict(stats.events)}; "
        f"undecodable {dict(stats.errors)}; skipped ops {dict(stats.skipped)}; "
        f"state: {snap.agents:,} agents, {snap.edges:,} edges"
    )


def events_command(
    archive: Annotated[Path, typer.Argument(help="Archive file or directory (relay frames or Jetstream JSONL).")],
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
) -> None:
    """Print every event as one JSON line in the Jetstream v1 shape, with skyattr's normalized fields."""
    report = ReadReport()
    ingest = Ingestor(AgentState())
    count = 0
    out = sys.stdout
    try:
        for item in read_archive(archive, report):
            decoded = ingest.decode(item) if item.json is not None else None
            if decoded is None:
                from streamer.frames import decode_frame

                decoded = decode_frame(item.frame or b"", records=True)
            if decoded.error:
                console.print(f"[yellow]skipped[/yellow] {decoded.error}: {decoded.detail}")
                continue
            for event in decoded.events:
                out.write(json.dumps(to_jetstream(event), separators=(",", ":")) + "\n")
                count += 1
                if limit is not None and count >= limit:
                    return
    except (FileNotFoundError, OSError) as exc:
        _fail(str(exc))
    for err in report.errors:
        console.print(f"[yellow]warning:[/yellow] {err}")
    if not report.readable:
        _fail(f"nothing readable in {archive}")
