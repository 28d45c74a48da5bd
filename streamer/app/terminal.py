"""The terminal sink: a line per run, the tier table when it matters (rich lives only in the app layer)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

import kernels
from streamer.app.options import figure
from streamer.app.pipes import StdoutConsole
from streamer.core.events import rfc3339
from streamer.core.results import AlertTransition, Result, RunResult


def tier_table(result: RunResult) -> Table:
    """Tiers x {full, panel} with the scale-bias figures in the caption; in words when there is nothing to
    attribute or the panel sees nothing."""
    sb = result.scale_bias
    state = "FIRING" if result.alert_active else "ok"
    title = (
        f"run {result.run} · {result.indicator} · as of {rfc3339(result.as_of_us)} · "
        f"{result.agents:,} agents, {result.edges:,} edges"
    )
    if sb is None or result.full is None:
        table = Table(title=title, caption=f"{nothing(result)} · alert {state} (unchanged)")
        table.add_column("tier")
        table.add_column("accounts", justify="right")
        for name in kernels.TIER_NAMES:
            table.add_row(name, f"{result.tier_sizes[name]:,}")
        return table
    table = Table(
        title=title,
        caption=f"TVD {figure(sb.tvd)} · r* {sb.residual:.3f} · c* {sb.rescale:.3g} · "
        f"panel share {figure(sb.panel_share)} · Spearman {figure(sb.spearman)} · alert {state}"
        + (" · the panel sees nothing of it" if sb.panel_sees_nothing else ""),
    )
    table.add_column("tier")
    table.add_column("accounts", justify="right")
    table.add_column("full", justify="right")
    table.add_column(f"panel ({sb.panel_size})", justify="right")
    full = result.full.as_dict()
    panel = result.panel.as_dict() if result.panel is not None else dict.fromkeys(kernels.TIER_NAMES)
    for name in kernels.TIER_NAMES:
        table.add_row(name, f"{result.tier_sizes[name]:,}", f"{full[name]:.3f}", figure(panel[name]))
    return table


def nothing(result: RunResult) -> str:
    """The words for a run with nothing to attribute."""
    return f"nothing to attribute: v(x) = v(0) = {result.value:.4g}, no tier shares, no scale-bias figures"


class TerminalSink:
    """The tier table for every run (``every_run``, live mode: one run every few minutes); in a replay, where runs
    come many per second, one line per run and the table when the alert changes state and for the last run.

    These are the results the user asked for, so they go to stdout by default (``skyattr replay > runs.txt``
    keeps them); logs and progress go to stderr elsewhere."""

    name = "terminal"

    def __init__(self, console: Console | None = None, *, tables: bool = True, every_run: bool = False) -> None:
        self.console = console or StdoutConsole(soft_wrap=True)
        self.tables = tables
        self.every_run = every_run
        self.last: RunResult | None = None
        self._shown: RunResult | None = None  # the last result whose table was printed

    def publish(self, result: Result) -> None:
        if isinstance(result, AlertTransition):
            colour = "red" if result.state == "firing" else "green"
            t = result.thresholds
            self.console.print(
                f"[{colour}]scale-bias alert {result.state}[/{colour}] ({result.severity}): "
                f"TVD {figure(result.tvd)} (τ {t.tvd}), r* {result.residual:.3f} (τ {t.residual})"
            )
            return
        self.last = result
        if self.tables and self.every_run:
            self._table(result)
            return
        sb, full, panel = result.scale_bias, result.full, result.panel
        if sb is None or full is None:
            self.console.print(f"run {result.run:>4} @ {rfc3339(result.as_of_us)}  {nothing(result)}")
            return
        shown = f"{panel.head:.2f}/{panel.middle:.2f}/{panel.tail:.2f}" if panel is not None else "sees nothing"
        self.console.print(
            f"run {result.run:>4} @ {rfc3339(result.as_of_us)}  v={result.value:.4g}  "
            f"head/middle/tail full {full.head:.2f}/{full.middle:.2f}/{full.tail:.2f}  "
            f"panel {shown}  TVD {figure(sb.tvd)}  r* {sb.residual:.3f}  {result.runtime_s:.2f}s"
        )
        if self.tables and result.alert_changed:
            self._table(result)

    def _table(self, result: RunResult) -> None:
        self.console.print(tier_table(result))
        self._shown = result

    def final(self) -> None:
        """The last run's table, unless it was just printed (an alert change at the final run)."""
        if self.tables and self.last is not None and self._shown is not self.last:
            self._table(self.last)

    async def start(self) -> None:
        return None

    async def close(self, timeout: float) -> int:
        return 0
