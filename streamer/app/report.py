"""``skyattr report``: replay an archive, run one attribution at its end, and write a readable report.

The report is for people who were not at the terminal: a Markdown and an HTML file with the same content, the
``skyattr.tiers`` message as ``result.json``, and three figures. Every number in the text comes from that run's
:class:`~streamer.core.results.RunResult` (built by :func:`streamer.core.attribution.attribute_snapshot`, the same
code the daemon publishes with; ``result.json`` is its message), so the report can never disagree with what the
daemon would have said about the same window. The message carries only the top
accounts; the figures use the per-agent arrays of that same run (``RunOutput.arrays``), so they cannot disagree
with it either.

The document is built once as a list of blocks and rendered twice (Markdown, HTML), so the two files cannot drift
apart; user-controlled strings (DIDs, paths, indicator names and parameters) are escaped for each format.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape

import kernels
from kernels.inequality import gini, lorenz  # also importable from here, as before they moved to kernels
from streamer.app import options as opt
from streamer.app.flags import ATTRIBUTION_FIELDS, WINDOW_FIELDS, load_or_exit, with_settings_options
from streamer.app.options import GAME_WORDS, fail, figure, visible
from streamer.app.progress import JobProgress, archive_frames
from streamer.app.replay import replay
from streamer.core.attribution import AttributionConfig, attribute_snapshot
from streamer.core.followers import Followers, FollowerSource, VisibilityUnavailable
from streamer.core.results import RunResult
from streamer.core.state import StateConfig
from streamer.testing.synth import default_archive

console = Console(stderr=True, soft_wrap=True)

# Okabe & Ito's colour-blind-safe palette: tiers apart in hue and lightness alike, full vs panel likewise
TIER_COLOURS = {"head": "#E69F00", "middle": "#009E73", "tail": "#CC79A7"}
FULL_COLOUR = "#0072B2"
GAME_COLOURS = {"same_game": "#D55E00", "restricted": "#56B4E9"}  # Okabe-Ito vermillion, sky blue
FIGURES = {
    "tier_shares": "tier_shares.png",
    "lorenz": "lorenz.png",
    "scatter": "attribution_vs_visibility.png",
}


class ReportError(ValueError):
    """Bad input for a report (unreadable archive, nothing to attribute, unwritable output): exit status 2."""


# ------------------------------------------------------------------------------------------------ data


@dataclass
class ReportData:
    """Everything the report shows: the run's result (all printed numbers) and the per-agent arrays (figures)."""

    archive: str
    result: RunResult
    phi: np.ndarray  # full-scale attribution per agent
    tiers: np.ndarray  # int8 tier per agent (0 head, 1 middle, 2 tail)
    visibility: np.ndarray
    panel: np.ndarray  # panel agent indices, most visible first
    panel_phi: dict[str, np.ndarray]  # the panel study's own attribution in each game, in panel order
    state_config: StateConfig
    config: AttributionConfig
    replay: dict[str, Any] = field(default_factory=dict)  # items, seconds, warnings
    visibility_source: str = "distinct attenders in the window"

    @property
    def message(self) -> dict[str, Any]:
        """The ``skyattr.tiers`` message of the run (what ``result.json`` holds)."""
        return self.result.to_message()

    @property
    def gini_population(self) -> float:
        """Gini of the full-scale attribution over every account (context: not comparable with the panel's)."""
        return gini(self.phi)

    @property
    def gini_full(self) -> float:
        """Gini of the full-scale attribution of the panel's accounts: the same accounts as :attr:`gini_panel`."""
        return gini(self.phi[self.panel])

    def gini_panel(self, game: str) -> float:
        """Gini of the panel study's attribution of its accounts in ``game``."""
        return gini(self.panel_phi[game])


def _visibility_words(followers: Followers | None) -> str:
    if isinstance(followers, FollowerSource):
        return followers.describe()
    return "follower counts" if followers is not None else "distinct attenders in the window"


def build_report(
    archive: Path,
    *,
    state_config: StateConfig | None = None,
    followers: Followers | None = None,
    config: AttributionConfig | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_attribute: Callable[[], None] | None = None,
) -> ReportData:
    """Replay ``archive`` into a fresh state and run one attribution at the end of it.

    ``on_progress(items)`` is called every few thousand archive items, ``on_attribute()`` once the replay is done
    and the attribution starts (the two long parts of a report, for a progress display).

    Raises :class:`ReportError` for an unreadable archive or a window with nothing to attribute, and
    ``ValueError`` for a bad configuration (checked before the replay, so a typo costs no replay time)."""
    config = config or AttributionConfig()
    config.validate()
    progress = (lambda source, _pipe: on_progress(source.position)) if on_progress is not None else None
    try:
        result = replay(archive, config=state_config, followers=followers, on_progress=progress)
    except (FileNotFoundError, OSError) as exc:
        raise ReportError(f"cannot read archive {archive}: {exc}") from exc
    if not result.report.readable:
        raise ReportError(f"nothing readable in {archive}")
    state = result.state
    if on_attribute is not None:
        on_attribute()
    try:
        snap = state.snapshot()
    except VisibilityUnavailable as exc:
        raise ReportError(str(exc)) from None
    out = attribute_snapshot(snap, config, run=1, as_of_us=state.last_time_us, alert_active=False)
    if out.result is None:
        raise ReportError(f"nothing to attribute in {archive}: {out.skipped}")
    if not out.result.attributed:
        raise ReportError(
            f"nothing to attribute in {archive}: v(x) = v(0) = {out.result.value:.6g} at the end of its window, so "
            "there are no tier shares and no scale-bias figures to report"
        )
    assert out.arrays is not None  # set whenever a result is
    return ReportData(
        archive=str(archive),
        result=out.result,
        phi=out.arrays.phi,
        tiers=out.arrays.tiers,
        visibility=np.asarray(snap.visibility, np.float64),
        panel=out.arrays.panel,
        panel_phi=out.arrays.panel_phi,
        state_config=state.config,
        config=config,
        visibility_source=_visibility_words(followers),
        replay={
            "items": result.stats.items,
            "seconds": result.seconds,
            "warnings": list(result.report.errors),
        },
    )


# ------------------------------------------------------------------------------------------------ document


@dataclass(frozen=True)
class Code:
    """Inline literal text (DIDs, paths): a code span in Markdown, <code> in HTML."""

    text: str


@dataclass(frozen=True)
class Bold:
    text: str


Inline = str | Code | Bold | list["Inline"]


@dataclass(frozen=True)
class Block:
    """One block of the document. kind: h1, h2, p, ul, table, img."""

    kind: str
    content: Any = None
    header: tuple[str, ...] = ()
    align: str = ""  # one char per column for tables: l or r


def _fmt(value: Any, spec: str = ".4f") -> str:
    """A number for the report (four decimals unless said otherwise): :func:`~streamer.app.options.figure`."""
    return figure(value, spec)


def _pct(value: Any) -> str:
    return _fmt(value, ".1%")


def _frac(fraction: float) -> str:
    """A tier fraction as a percentage without spurious digits (0.01 -> 1%, 0.005 -> 0.5%)."""
    return f"{fraction * 100:.3g}%"


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _reading(r: RunResult, cfg: AttributionConfig) -> list[Inline]:
    """Plain-language sentences: what a reader should take from the figures."""
    tiers, sb = r.tiers, r.scale_bias
    assert tiers is not None and sb is not None  # a report is only made of an attributed run
    full, n_panel = tiers.full, sb.panel_size
    restricted, same = sb.restricted, sb.same_game
    panel = tiers.restricted
    if panel is None:
        lines: list[Inline] = [
            f"A study of the {n_panel} most visible active accounts alone (the restricted game) sees nothing of "
            f"this phenomenon: on its own the indicator does not move, so it attributes nothing to anyone, while "
            f"the full population gives the head (the top {_frac(cfg.head)} by visibility) {_pct(full.head)} and "
            f"the tail {_pct(full.tail)}."
        ]
    else:
        lines = [
            f"A study of the {n_panel} most visible active accounts alone (the restricted game) attributes "
            f"{_pct(panel.head)} of the indicator to the head (the top {_frac(cfg.head)} by visibility, "
            f"{r.tier_sizes.head:,} accounts) where the full population gives {_pct(full.head)}; to the tail it "
            f"attributes {_pct(panel.tail)} where the full population gives {_pct(full.tail)}.",
        ]
    if sb.panel_share is not None:
        lines.append(
            f"Coverage: the panel's accounts hold {_pct(sb.panel_share)} of the full-scale attribution; the other "
            f"{r.agents - n_panel:,} accounts, which a panel study never sees, hold the rest."
        )
    lines.append(
        f"Restriction and nonlinearity: after the best rescaling, the restricted study is off from its accounts' "
        f"full-scale attribution by r* = {_pct(restricted.residual)} (relative L2); the same game with only the "
        f"panel active is off by r* = {_pct(same.residual)}. The first includes the attention the rest of the "
        f"population pays the panel, which the restricted study deletes; the second is what the indicator's "
        f"interactions alone leave"
        + (
            f" (ranking agreement, Spearman: {_fmt(same.spearman, '.2f')} same game, "
            f"{_fmt(restricted.spearman, '.2f')} restricted)."
            if same.spearman is not None and restricted.spearman is not None
            else "."
        )
    )
    sp = r.stratified_panel
    if sp is not None and sp.size is not None and sp.allocation is not None and sp.weights is not None:
        a, w = sp.allocation, sp.weights
        lines.append(
            f"The panel this window needed: a stratified random sample of {sp.size:,} active accounts ({a.head:,} "
            f"head, {a.middle:,} middle, {a.tail:,} tail, weighted {w.head:.3g}, {w.middle:.3g} and {w.tail:.3g}) "
            f"estimates every tier share within {sp.epsilon:g} in {sp.quantile:.0%} of {sp.draws} draws "
            f"({_pct(sp.held_out_within)} of held-out draws), if each sampled account's full-scale attribution is "
            f"measured exactly: a lower bound on what a small study needs."
        )
    elif sp is not None:
        lines.append(
            f"No stratified sample of the sizes tried estimates every tier share within {sp.epsilon:g}: a small "
            "study of this window cannot recover its tier shares."
        )
    if r.alert.active:
        lines.append(Bold(f"The scale-bias alert fires: {_alert_words(r)}."))
    else:
        lines.append(f"The scale-bias alert does not fire: {_alert_words(r)}.")
    return lines


def _alert_words(r: RunResult) -> str:
    """The alert's two criteria against their thresholds, in words."""
    sb, t = r.scale_bias, r.alert.thresholds
    assert sb is not None
    over = set(r.alert.criteria)
    res = ">" if "residual" in over else "<="
    cov = "<" if "coverage" in over else ">="
    return (
        f"same-game r* {_fmt(sb.same_game.residual, '.3f')} {res} {t.residual:g}, panel share "
        f"{_pct(sb.panel_share)} {cov} {t.coverage:.0%}"
    )


def document(data: ReportData) -> list[Block]:
    """The report's content, format-neutral."""
    r, cfg, sc = data.result, data.config, data.state_config
    sb, win, t, tiers = r.scale_bias, r.window, r.alert.thresholds, r.tiers
    assert sb is not None and tiers is not None  # a report is only made of an attributed run
    params = ", ".join(f"{k}={v}" for k, v in r.params.items()) or "defaults"
    blocks = [
        Block("h1", f"skyattr report: {r.indicator} attribution"),
        Block(
            "ul",
            [
                ["Archive: ", Code(data.archive)],
                f"Window: {win.start} to {win.end} ({sc.buckets} buckets of {sc.bucket_hours:g} h); "
                f"attribution as of the archive's last event",
                f"Agents: {r.agents:,} ({r.active_agents:,} active) · attention edges: {r.edges:,} · "
                f"events: {r.events:,}",
                f"Replay: {data.replay.get('items', 0):,} items in {data.replay.get('seconds', 0.0):.2f} s"
                + (f"; {len(data.replay['warnings'])} warning(s)" if data.replay.get("warnings") else ""),
                [
                    "Indicator: ",
                    Code(r.indicator),
                    f" ({params}); {r.nodes} quadrature nodes, {r.dtype}, on {r.device} in {r.runtime_s:.2f} s",
                ],
                f"Tiers: head = top {_frac(cfg.head)}, middle = next {_frac(cfg.middle)} of accounts by visibility; "
                f"panel = the {cfg.panel_size} most visible active accounts; visibility = {data.visibility_source}",
                f"v(x) = {r.value:.6g}, v(0) = {r.baseline:.6g}, completeness residual "
                f"|Σφ − (v(x) − v(0))| / |v(x) − v(0)| = {r.residual:.2e}",
            ],
        ),
        Block("h2", "Reading"),
        Block("ul", _reading(r, cfg)),
        Block("h2", "Tier shares: full population vs panel"),
        Block(
            "table",
            [
                [name, f"{getattr(r.tier_sizes, name):,}", _fmt(getattr(tiers.full, name))]
                + [_fmt(getattr(tiers.panel(n), name, None)) for n, _ in sb.games()]
                for name in kernels.TIER_NAMES
            ],
            header=("tier", "accounts", "full", *(f"panel ({sb.panel_size}), {GAME_WORDS[n]}" for n, _ in sb.games())),
            align="lrrrr",
        ),
        Block("img", (FIGURES["tier_shares"], "Tier shares of the attribution, full population vs panel")),
        Block("h2", "Scale bias"),
        Block(
            "p",
            "Two panel games, never mixed: restricted (the indicator on the panel alone, its induced attention "
            "graph: what a small study computes) and same game (the full-scale game with only the panel's accounts "
            "active). The alert reads the same game: its r* is zero for any indicator that is linear, a function of "
            "one linear aggregate or free of panel–population interactions.",
        ),
        Block(
            "table",
            [
                ["r* (residual after the best rescaling)", *(_fmt(g.residual) for _, g in sb.games())],
                ["c* (best rescaling)", *(_fmt(g.rescale, ".4g") for _, g in sb.games())],
                ["Spearman (full vs panel, panel accounts)", *(_fmt(g.spearman) for _, g in sb.games())],
                ["TVD between tier shares (decides nothing)", *(_fmt(g.tvd) for _, g in sb.games())],
                ["top-10 share, panel", *(_fmt(g.top10_panel) for _, g in sb.games())],
            ],
            header=("figure", *(GAME_WORDS[n] for n, _ in sb.games())),
            align="lrr",
        ),
        Block(
            "table",
            [
                ["panel share of the full attribution (coverage)", _fmt(sb.panel_share)],
                ["top-10 share, full", _fmt(sb.top10_full)],
                ["panel size", f"{sb.panel_size:,}"],
                ["quadrature error estimate (relative L2, φ at m vs 2m nodes)", _fmt(r.error_estimate, ".2e")],
            ],
            header=("figure", "value"),
            align="lr",
        ),
        Block("h2", "Alert"),
        Block(
            "p",
            [
                Bold("FIRING" if r.alert.active else "not firing"),
                f": fires when the same-game r* > {t.residual:g} (here {_fmt(sb.same_game.residual)}) or the "
                f"panel's share < {t.coverage:g} (here {_fmt(sb.panel_share)}); once firing it resolves only when "
                f"r* <= {t.clear:g}× its threshold and the share's shortfall 1 − share <= {t.clear:g}× "
                f"{1 - t.coverage:g}.",
            ],
        ),
        Block("h2", f"Top {len(r.top)} accounts by attribution"),
        Block(
            "table",
            [
                [str(rank), Code(a.did), a.tier, _count(a.visibility), _fmt(a.phi, ".4g"), _fmt(a.share, ".2%")]
                for rank, a in enumerate(r.top, start=1)
            ],
            header=("#", "DID", "tier", "visibility", "φ", "share"),
            align="rllrrr",
        ),
        Block("h2", "Concentration"),
        Block(
            "p",
            f"Gini coefficient of the attribution of the panel's {len(data.panel):,} accounts: at full scale "
            f"{data.gini_full:.4f}, in the panel study {data.gini_panel('same_game'):.4f} (same game) and "
            f"{data.gini_panel('restricted'):.4f} (restricted) (0 = every account contributes "
            f"equally, 1 = one account causes everything); the same accounts on both sides, so the two compare. "
            f"Over all {len(data.phi):,} accounts the full-scale attribution has Gini {data.gini_population:.4f}.",
        ),
        Block("img", (FIGURES["lorenz"], "Lorenz curve of the attribution")),
        Block("img", (FIGURES["scatter"], "Attribution against visibility, by tier, panel members marked")),
    ]
    return blocks


# ------------------------------------------------------------------------------------------------ rendering

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|&#])")


def _md_text(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text.replace("\n", " "))


def _md_code(text: str) -> str:
    """A code span that holds ``text`` literally: a fence longer than any backtick run inside, and ``|`` escaped
    (GitHub tables split on it even inside code spans)."""
    text = text.replace("\n", " ").replace("|", "\\|")
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_inline(item: Inline) -> str:
    if isinstance(item, Code):
        return _md_code(item.text)
    if isinstance(item, Bold):
        return f"**{_md_text(item.text)}**"
    if isinstance(item, list):
        return "".join(_md_inline(i) for i in item)
    return _md_text(item)


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {_md_text(b.content)}")
        elif b.kind == "h2":
            out.append(f"## {_md_text(b.content)}")
        elif b.kind == "p":
            out.append(_md_inline(b.content))
        elif b.kind == "ul":
            out.append("\n".join(f"- {_md_inline(i)}" for i in b.content))
        elif b.kind == "table":
            rows = [
                "| " + " | ".join(_md_text(h) for h in b.header) + " |",
                "|" + "|".join("---:" if a == "r" else "---" for a in b.align) + "|",
            ]
            rows += ["| " + " | ".join(_md_inline(c) for c in row) + " |" for row in b.content]
            out.append("\n".join(rows))
        elif b.kind == "img":
            src, alt = b.content
            out.append(f"![{_md_text(alt)}]({src})")
        else:
            raise ValueError(f"unknown block kind {b.kind!r}")
    return "\n\n".join(out) + "\n"


def _html_inline(item: Inline) -> str:
    if isinstance(item, Code):
        return f"<code>{html.escape(item.text)}</code>"
    if isinstance(item, Bold):
        return f"<strong>{html.escape(item.text)}</strong>"
    if isinstance(item, list):
        return "".join(_html_inline(i) for i in item)
    return html.escape(item)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 0.9em; background: #f4f4f4; padding: 0 0.2em; }
img { max-width: 100%; display: block; margin: 1rem 0; }
""".strip()


def render_html(blocks: list[Block]) -> str:
    title = next((b.content for b in blocks if b.kind == "h1"), "skyattr report")
    body: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            body.append(f"<{b.kind}>{html.escape(b.content)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_html_inline(b.content)}</p>")
        elif b.kind == "ul":
            body.append("<ul>\n" + "\n".join(f"  <li>{_html_inline(i)}</li>" for i in b.content) + "\n</ul>")
        elif b.kind == "table":
            cls = [' class="r"' if a == "r" else "" for a in b.align]
            head = "".join(f"<th{c}>{html.escape(h)}</th>" for c, h in zip(cls, b.header, strict=True))
            rows = [
                "<tr>" + "".join(f"<td{c}>{_html_inline(v)}</td>" for c, v in zip(cls, row, strict=True)) + "</tr>"
                for row in b.content
            ]
            table = "\n".join([f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>", *rows, "</tbody>\n</table>"])
            body.append(table)
        elif b.kind == "img":
            src, alt = b.content
            body.append(f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">')
        else:
            raise ValueError(f"unknown block kind {b.kind!r}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# ------------------------------------------------------------------------------------------------ figures


def new_figure(width: float = 7.0, height: float = 4.5) -> Any:
    """A figure on the Agg canvas, without pyplot: no display, no global state shared with other threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_tier_shares(data: ReportData, path: Path) -> None:
    """Grouped bars head/middle/tail × full/panel, from the result's shares (the numbers in the tables)."""
    r = data.result
    fig = new_figure()
    ax = fig.add_subplot()
    x = np.arange(len(kernels.TIER_NAMES))
    width = 0.27
    sb, tiers = r.scale_bias, r.tiers
    assert sb is not None and tiers is not None
    bars_of = [(tiers.full, "full population", FULL_COLOUR)]
    bars_of += [(tiers.panel(n), f"panel ({sb.panel_size}), {GAME_WORDS[n]}", GAME_COLOURS[n]) for n, _ in sb.games()]
    for k, (shares, label, colour) in enumerate(bars_of):
        offset = (k - 1) * width
        if shares is None:  # the panel sees nothing: no bars, the legend says so
            ax.bar(x + offset, [0.0] * len(x), width, label=f"{label}: sees nothing", color=colour)
            continue
        values = [shares.head, shares.middle, shares.tail]
        bars = ax.bar(x + offset, values, width, label=label, color=colour)
        ax.bar_label(bars, labels=[f"{v:.1%}" for v in values], padding=2, fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    sizes = r.tier_sizes
    ax.set_xticks(x, [f"{name}\n({getattr(sizes, name):,} accounts)" for name in kernels.TIER_NAMES])
    ax.set_ylabel("share of total attribution")
    # the title carries what the alert reads: both its figures against their thresholds, and its state
    t = r.alert.thresholds
    state = "fires" if r.alert.active else "does not fire"
    ax.set_title(
        f"{r.indicator}: tier shares · same-game r* {sb.same_game.residual:.3f} (τ {t.residual:g}) · panel share "
        f"{_fmt(sb.panel_share, '.3f')} (τ {t.coverage:g}) · alert {state}",
        fontsize=10,
    )
    ax.legend()
    fig.savefig(path)


def plot_lorenz(data: ReportData, path: Path) -> None:
    """Lorenz curves of the panel's accounts: their full-scale attribution and the panel study's (the same accounts
    on both sides), with their Gini coefficients."""
    fig = new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="equal split")
    if len(data.panel):
        xs, ys = lorenz(data.phi[data.panel])
        ax.plot(xs, ys, color=FULL_COLOUR, linewidth=2, label=f"at full scale (Gini {data.gini_full:.3f})")
        for game, colour in GAME_COLOURS.items():
            px, py = lorenz(data.panel_phi[game])
            label = f"panel study, {GAME_WORDS[game]} (Gini {data.gini_panel(game):.3f})"
            ax.plot(px, py, color=colour, linewidth=1.5, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("fraction of accounts, by ascending attribution")
    ax.set_ylabel("fraction of total attribution")
    ax.set_title(f"Lorenz curve of the attribution of the panel's {len(data.panel):,} accounts", fontsize=10)
    ax.legend(loc="upper left")
    fig.savefig(path)


def plot_attribution_vs_visibility(data: ReportData, path: Path) -> None:
    """phi against visibility, coloured by tier, panel members ringed: every account, on symmetric-log axes (linear
    near zero, logarithmic beyond), so accounts with phi <= 0 or no visibility are shown too, not left out."""
    fig = new_figure()
    ax = fig.add_subplot()
    for k, name in enumerate(kernels.TIER_NAMES):
        sel = data.tiers == k
        ax.scatter(
            data.visibility[sel],
            data.phi[sel],
            s=10,
            alpha=0.6,
            color=TIER_COLOURS[name],
            label=f"{name} ({int(sel.sum()):,})",
            linewidths=0,
        )
    in_panel = np.zeros(len(data.phi), bool)
    in_panel[data.panel] = True
    ax.scatter(
        data.visibility[in_panel],
        data.phi[in_panel],
        s=40,
        facecolors="none",
        edgecolors="black",
        linewidths=0.8,
        label=f"panel member ({int(in_panel.sum()):,})",
    )
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("symlog", linthresh=_linthresh(data.phi))
    ax.axhline(0, color="grey", linewidth=0.6)
    nonpositive = int(np.sum(data.phi <= 0))
    ax.set_xlabel("visibility (symmetric log)")
    ax.set_ylabel("attribution φ, full population (symmetric log)")
    ax.set_title(f"Attribution vs visibility: all {len(data.phi):,} accounts ({nonpositive:,} with φ ≤ 0)", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    fig.savefig(path)


def _linthresh(phi: np.ndarray) -> float:
    """Where the symmetric-log axis turns linear: the smallest |phi| > 0 (so no non-zero value is flattened), or 1."""
    nonzero = np.abs(phi[phi != 0])
    return float(nonzero.min()) if nonzero.size else 1.0


# ------------------------------------------------------------------------------------------------ output


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` and prove it writable with a probe file (permission bits alone lie for root and for
    read-only mounts). Raises :class:`ReportError`."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"output {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".skyattr-report-"):
            pass
    except OSError as exc:
        raise ReportError(f"cannot write to output directory {out}: {exc.strerror or exc}") from exc


def write_report(data: ReportData, out: Path) -> list[Path]:
    """Write report.md, report.html, result.json and the three figures into ``out``; returns the paths."""
    blocks = document(data)
    files = {
        "report.md": render_markdown(blocks),
        "report.html": render_html(blocks),
        "result.json": json.dumps(data.message, indent=2) + "\n",
    }
    written = []
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    for key, plot in (
        ("tier_shares", plot_tier_shares),
        ("lorenz", plot_lorenz),
        ("scatter", plot_attribution_vs_visibility),
    ):
        plot(data, out / FIGURES[key])
        written.append(out / FIGURES[key])
    return written


# The settings `report` reads (flags generated from Settings; also from --config and SKYATTR_*).
REPORT_SETTINGS = ATTRIBUTION_FIELDS | WINDOW_FIELDS | {"followers", "appview", "appview_cache"}


@with_settings_options(include=REPORT_SETTINGS, check_finite=True)
def report_command(
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="Directory for report.md, report.html, result.json and figures.")
    ],
    archive: Annotated[
        Path | None, typer.Argument(help="Archive file or directory (default: the bundled one).")
    ] = None,
    config: opt.Config = None,
    progress: Annotated[
        bool, typer.Option(help="Progress on stderr: a bar on a terminal, else a line every 10 s.")
    ] = True,
    **flags: Any,
) -> None:
    """Replay an archive, attribute at its end, and write a Markdown/HTML report with figures into --out.

    The line naming the files written goes to stdout; progress (replay, attribution, writing), warnings and errors
    go to stderr."""
    path = archive or default_archive()
    settings = load_or_exit(config, flags)
    try:
        table = settings.follower_source()
    except (ValueError, OSError) as exc:
        fail(str(exc))
        return
    created = not out.exists()
    try:
        prepare_out_dir(out)
        with JobProgress(progress) as bar:
            task = bar.task("report", total=archive_frames(path), detail=f"replaying {path.name}")

            def attributing() -> None:
                # every item is read by then (the bar must not sit where the last progress report left it), and
                # what is left has no rate: the time column shows the time spent instead of "ETA 0 s"
                task.show_rate = False
                task.update(task.total or task.completed, detail="attributing at the end of the archive")

            data = build_report(
                path,
                state_config=settings.state(),
                followers=table,
                config=settings.attribution(),
                on_progress=task.update,
                on_attribute=attributing,
            )
            task.update(data.replay["items"], detail=f"writing the report into {out}")
            written = write_report(data, out)
        for warning in data.replay["warnings"]:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    except (ValueError, OSError) as exc:
        if created:  # do not leave an empty directory behind a failed run (rmdir refuses a non-empty one)
            with contextlib.suppress(OSError):
                out.rmdir()
        fail(str(exc))
        return
    # the result: stdout
    typer.echo(visible(f"wrote {len(written)} files to {out}: " + ", ".join(p.name for p in written)))
