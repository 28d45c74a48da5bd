"""``skyattr run`` (live) and ``skyattr replay`` (an archive through the same pipeline).

Their flags are generated from :class:`streamer.app.settings.Settings`, so ``--help``, the YAML keys, the ``SKYATTR_*``
variables and the README's configuration table never drift apart.
"""

from __future__ import annotations

import asyncio
import json
import sys
import typing
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from streamer.app.daemon import configure_logging, live_pipeline, replay_pipeline
from streamer.app.flags import load_or_exit
from streamer.app.flags import with_settings_options as _with_settings_options
from streamer.app.ingest_commands import nothing_readable, save_snapshot
from streamer.app.options import fail, plain
from streamer.app.pipes import StdoutConsole
from streamer.app.settings import ConfigError, Settings
from streamer.core.durable import why_no_directory

console = Console(stderr=True, soft_wrap=True)  # logs, warnings, errors, the closing statistics


def results_console(*, stdout_taken: bool) -> Console:
    """Where the per-run lines, the tier tables and the alert lines go: stdout, unless stdout already carries
    machine-readable output (``--json``, ``--out -``), which one human line would break for ``jq``."""
    return console if stdout_taken else StdoutConsole(soft_wrap=True)


REPLAY_ONLY = {"speed"}
RUN_ONLY = {"relay", "queue_size", "source", "jetstream_url", "jetstream_collections", "jetstream_compress"}
RUN_ONLY |= {
    "jetstream2_url",
    "jetstream2_kinds",
    "backfill",
    "backfill_only",
    "jetstream2_api_key",
    "jetstream2_api_key_file",
}
RUN_ONLY |= {"jetstream2_archive_url"}


def _load(config: Path | None, flags: dict[str, Any]) -> Settings:
    """Settings from the YAML file, env and flags (:func:`~streamer.app.flags.load_or_exit`: or one error line and
    exit 2); logging configured."""
    settings = load_or_exit(config, flags)
    configure_logging(settings.log_level)
    return settings


@_with_settings_options(exclude=RUN_ONLY)
def replay_command(
    archive: typing.Annotated[
        Path | None, typer.Argument(help="Archive file or directory (default: the bundled one).")
    ] = None,
    config: typing.Annotated[Path | None, typer.Option(help="YAML file of options (keys as below).")] = None,
    quiet: typing.Annotated[bool, typer.Option(help="No tables on the terminal, only a line per run.")] = False,
    json_out: typing.Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout at the end.")] = False,
    snapshot_out: typing.Annotated[
        Path | None, typer.Option(help="Write the final state snapshot (.npz) for `skyattr attribute`.")
    ] = None,
    checkpoint_every_items: typing.Annotated[
        int | None, typer.Option(min=1, help="Also checkpoint every this many archive items.")
    ] = None,
    progress: typing.Annotated[
        bool, typer.Option(help="Progress on stderr: a bar on a terminal, else a line every 10 s.")
    ] = True,
    **flags: Any,
) -> None:
    """Replay an archive through the pipeline: state, attribution every --interval of event time, publishers.

    Without ARCHIVE it replays the bundled synthetic one (2,000 accounts, 24 h). One line per attribution run, and
    the tier table when the alert changes state and at the end, go to stdout; progress, logs, warnings and the
    closing statistics go to stderr. A SIGTERM or Ctrl-C stops it cleanly (with --checkpoint-dir, resumable)."""
    from streamer.testing.synth import default_archive

    settings = _load(config, flags)
    if snapshot_out is not None and not snapshot_out.parent.is_dir():  # found out now, not after the whole replay
        fail(f"--snapshot-out {snapshot_out}: {why_no_directory(snapshot_out.parent)}")
    path = archive or default_archive()
    try:
        result, pipe = asyncio.run(
            replay_pipeline(
                settings,
                path,
                console=results_console(stdout_taken=json_out or str(settings.out) == "-"),
                tables=not quiet,
                checkpoint_every_items=checkpoint_every_items,
                progress=progress,
            )
        )
    except (ConfigError, ValueError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
        return
    if not result.report.readable and result.resumed_from == 0:
        fail(nothing_readable(path, result.report))
    for err in result.report.errors:
        console.print(f"[yellow]warning:[/yellow] {plain(err)}", highlight=False)
    if snapshot_out:
        try:
            save_snapshot(result.state, snapshot_out)
        except OSError as exc:
            fail(f"--snapshot-out {snapshot_out}: cannot write it: {exc.strerror or exc}")
    stats = result.stats
    rate = stats.items / result.seconds if result.seconds > 0 else 0.0
    if result.resumed_from:  # this process read only what the checkpoint did not hold: say so, and the totals
        console.print(
            plain(
                f"{path.name}: resumed from the checkpoint in {settings.checkpoint_dir} after item "
                f"{result.resumed_from:,}; this run read {stats.items:,} more"
            ),
            highlight=False,
        )
    if result.interrupted:
        hint = (
            f"rerun with --checkpoint-dir {settings.checkpoint_dir} to resume"
            if settings.checkpoint_dir
            else "no --checkpoint-dir, so a rerun starts from the beginning"
        )
        tail = f" [yellow](interrupted at item {result.position:,}; {plain(hint)})[/yellow]"
    else:
        tail = ""
    console.print(
        plain(
            f"{path.name}: {stats.items:,} items in {result.seconds:.1f}s ({rate:,.0f}/s); "
            f"{sum(stats.events.values()):,} events; {pipe.schedule.run} runs in all; "
            f"undecodable {dict(stats.errors) or 'none'}"
        )
        + tail,
        highlight=False,
    )
    if json_out:
        summary = {
            "archive": str(path),
            "stats": stats.as_dict(),
            "runs": pipe.schedule.run,
            "alert_active": pipe.schedule.alert_active,
            "resumed_from": result.resumed_from,
            "position": result.position,
            "interrupted": result.interrupted,
            "jsonl_lines": pipe.jsonl.lines if pipe.jsonl else 0,
            "state": {"agents": len(result.state.dids), "edges": result.state.snapshot().edges},
            "seconds": round(result.seconds, 3),
            "errors": result.report.errors,
            "results_repeated": pipe.results_repeated,
            "kafka": _kafka_summary(pipe),
        }
        sys.stdout.write(json.dumps(summary) + "\n")
    if pipe.kafka_unsent:
        where = (
            f"kept in {pipe.journal.path} and sent at the next start with --checkpoint-dir {settings.checkpoint_dir}"
            if pipe.journal is not None
            else "lost: give --checkpoint-dir to keep undelivered results for the next start"
        )
        console.print(
            f"[red]error:[/red] {pipe.kafka_unsent} result(s) not delivered to Kafka "
            f"({plain(str(settings.kafka_bootstrap))}): {plain(where)}",
            highlight=False,
        )
        raise typer.Exit(3)


def _kafka_summary(pipe: Any) -> dict[str, Any] | None:
    """Kafka delivery figures of a finished replay (None without Kafka)."""
    if pipe.kafka is None:
        return None
    return {
        "sent": pipe.kafka.sent,
        "unsent": pipe.kafka_unsent,
        "dropped": pipe.kafka.dropped,
        "rejected": pipe.kafka.rejected,
        "recovered": pipe.kafka_recovered,
        "already_written": pipe.kafka.already_written,
        "kept": pipe.journal is not None,
    }


@_with_settings_options(exclude=REPLAY_ONLY)
def run_command(
    config: typing.Annotated[Path | None, typer.Option(help="YAML file of options (keys as below).")] = None,
    quiet: typing.Annotated[bool, typer.Option(help="No tables on the terminal, only a line per run.")] = False,
    **flags: Any,
) -> None:
    """Run live: relay → state → attribution every --interval seconds → publishers, until SIGTERM.

    The tier table of every run goes to stdout; logs, warnings and errors to stderr. Metrics are served on
    --metrics-port (9464)."""
    settings = _load(config, flags)
    try:
        asyncio.run(
            live_pipeline(settings, console=results_console(stdout_taken=str(settings.out) == "-"), tables=not quiet)
        )
    except (ConfigError, ValueError, OSError) as exc:
        fail(str(exc))
