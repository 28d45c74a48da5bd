"""The terminal sink: a line per run, the tier table when it matters (rich lives only in the app layer)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

import kernels
from streamer.core.jetstream_json import iso_time


def tier_table(message: dict[str, Any]) -> Table:
    """Tiers x {full, panel} with the scale-bias figures in the caption."""
    sb = message["scale_bias"]
    state = "FIRING" if message["alert"]["active"] else "ok"
    table = Table(
        title=f"run {message['run']} · {message['indicator']} · as of {iso_time(message['as_of_us'])} · "
        f"{message['agents']:,} agents, {message['edges']:,} edges",
        caption=f"TVD {sb['tvd']:.3f} · r* {sb['residual']:.3f} · c* {sb['rescale']:.3g} · "
        f"panel share {_fmt(sb['panel_share'])} · Spearman {_fmt(sb['spearman'])} · alert {state}",
    )
    table.add_column("tier")
    table.add_column("accounts", justify="right")
    table.add_column("full", justify="right")
    table.add_column(f"panel ({sb['panel_size']})", justify="right")
    for name in kernels.TIER_NAMES:
        table.add_row(
            name,
            f"{message['tier_sizes'][name]:,}",
            f"{message['tiers']['full'][name]:.3f}",
            f"{message['tiers']['panel'][name]:.3f}",
        )
    return table


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class TerminalSink:
    """The tier table for every run (``every_run``, live mode: one run every few minutes); in a replay, where runs
    come many per second, one line per run and the table when the alert changes state and for the last run."""

    def __init__(self, console: Console | None = None, *, tables: bool = True, every_run: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.tables = tables
        self.every_run = every_run
        self.last: dict[str, Any] | None = None

    def __call__(self, kind: str, message: dict[str, Any]) -> None:
        if kind == "alerts":
            colour = "red" if message["state"] == "firing" else "green"
            self.console.print(
                f"[{colour}]scale-bias alert {message['state']}[/{colour}] ({message['severity']}): "
                f"TVD {message['figures']['tvd']:.3f} (τ {message['thresholds']['tvd']}), "
                f"r* {message['figures']['residual']:.3f} (τ {message['thresholds']['residual']})"
            )
            return
        self.last = message
        if self.tables and self.every_run:
            self.console.print(tier_table(message))
            return
        sb = message["scale_bias"]
        full, panel = message["tiers"]["full"], message["tiers"]["panel"]
        self.console.print(
            f"run {message['run']:>4} @ {iso_time(message['as_of_us'])}  v={message['value']:.4g}  "
            f"head/middle/tail full {full['head']:.2f}/{full['middle']:.2f}/{full['tail']:.2f}  "
            f"panel {panel['head']:.2f}/{panel['middle']:.2f}/{panel['tail']:.2f}  "
            f"TVD {sb['tvd']:.3f}  r* {sb['residual']:.3f}  {message['runtime_s']:.2f}s"
        )
        if self.tables and message["alert"]["changed"]:
            self.console.print(tier_table(message))

    def final(self) -> None:
        if self.tables and self.last is not None:
            self.console.print(tier_table(self.last))
