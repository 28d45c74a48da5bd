"""The terminal sink: a line per run, the tier table when it matters (rich lives only in the app layer)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

import kernels
from streamer.app.options import GAME_WORDS, figure
from streamer.app.pipes import StdoutConsole
from streamer.core.events import rfc3339
from streamer.core.results import AlertTransition, Result, RunResult, ScaleBias, StratifiedPanel, Tiers, TierSizes


def scale_table(title: str, sizes: TierSizes | None, tiers: Tiers, sb: ScaleBias, caption: str = "") -> Table:
    """Tiers x {full, panel in each game} (the accounts per tier when ``sizes`` is given), the figures below."""
    table = Table(title=title, caption=caption or None)
    table.add_column("tier")
    if sizes is not None:
        table.add_column("accounts", justify="right")
    table.add_column("full", justify="right")
    for name, _ in sb.games():
        table.add_column(f"panel ({sb.panel_size}), {GAME_WORDS[name]}", justify="right")
    for tier in kernels.TIER_NAMES:
        cells = (
            [tier] + ([f"{getattr(sizes, tier):,}"] if sizes is not None else []) + [f"{getattr(tiers.full, tier):.3f}"]
        )
        cells += [figure(None if (p := tiers.panel(name)) is None else getattr(p, tier)) for name, _ in sb.games()]
        table.add_row(*cells)
    return table


def figures_line(sb: ScaleBias) -> str:
    """The scale-bias figures in one line, per game, the game the alert reads first."""
    parts = [f"panel share {figure(sb.panel_share)}"]
    for name in ("same_game", "restricted"):
        g = sb.game(name)
        seen = " (sees nothing)" if g.panel_sees_nothing else ""
        parts.append(
            f"{GAME_WORDS[name]}: r* {g.residual:.3f} · c* {g.rescale:.3g} · Spearman {figure(g.spearman, '.2f')} · "
            f"TVD {figure(g.tvd)}{seen}"
        )
    return " | ".join(parts)


def stratified_words(sp: StratifiedPanel | None) -> str:
    """The stratified panel in one clause: its size and accounts per tier, or that none of the sizes tried meets
    its epsilon ("" when the run did not look for one)."""
    if sp is None:
        return ""
    if sp.size is None or sp.allocation is None:
        return f"no stratified panel within {sp.epsilon:g} up to the active accounts tried"
    a = sp.allocation
    return (
        f"stratified panel within {sp.epsilon:g}: {sp.size:,} accounts ({a.head:,} head, {a.middle:,} middle, "
        f"{a.tail:,} tail)"
    )


def tier_table(result: RunResult) -> Table:
    """Tiers x {full, panel in each game} with the scale-bias figures in the caption; in words when there is
    nothing to attribute."""
    sb = result.scale_bias
    state = "FIRING" if result.alert.active else "ok"
    title = (
        f"run {result.run} · {result.indicator} · as of {rfc3339(result.as_of_us)} · "
        f"{result.agents:,} agents, {result.edges:,} edges"
    )
    if sb is None or result.tiers is None:
        table = Table(title=title, caption=f"{nothing(result)} · alert {state} (unchanged)")
        table.add_column("tier")
        table.add_column("accounts", justify="right")
        for name in kernels.TIER_NAMES:
            table.add_row(name, f"{getattr(result.tier_sizes, name):,}")
        return table
    criteria = result.alert.criteria
    fired = f" ({', '.join(criteria)})" if criteria else ""
    stratified = stratified_words(result.stratified_panel)
    caption = f"{figures_line(sb)} · alert {state}{fired}" + (f" · {stratified}" if stratified else "")
    return scale_table(title, result.tier_sizes, result.tiers, sb, caption)


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
            self.console.print(
                f"[{colour}]scale-bias alert {result.state}[/{colour}] ({result.severity}): {result.summary}"
            )
            return
        self.last = result
        if self.tables and self.every_run:
            self._table(result)
            return
        sb, tiers = result.scale_bias, result.tiers
        if sb is None or tiers is None:
            self.console.print(f"run {result.run:>4} @ {rfc3339(result.as_of_us)}  {nothing(result)}")
            return
        same, restricted, full = sb.same_game, sb.restricted, tiers.full
        panel = tiers.same_game
        shown = f"{panel.head:.2f}/{panel.middle:.2f}/{panel.tail:.2f}" if panel is not None else "sees nothing"
        self.console.print(
            f"run {result.run:>4} @ {rfc3339(result.as_of_us)}  v={result.value:.4g}  "
            f"head/middle/tail full {full.head:.2f}/{full.middle:.2f}/{full.tail:.2f}  panel (same game) {shown}  "
            f"r* {same.residual:.3f} (restricted {restricted.residual:.3f})  panel share {figure(sb.panel_share)}  "
            f"{result.runtime_s:.2f}s"
        )
        if self.tables and result.alert.changed:
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
