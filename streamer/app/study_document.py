"""The documents of ``skyattr study``: ``study.md`` and ``study.html`` (one list of blocks rendered twice, as the
report's), ``study.json`` (every number) and five figures, each saying in its title what it compares.

Every number shown comes from the summary (:func:`streamer.app.study.summarise`), which ``study.json`` holds whole.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from kernels.defaults import TAU_RES
from streamer.app.report import Block, Bold, Code, Inline, new_figure, render_html, render_markdown
from streamer.app.study import PREDICTIONS

FIGURE_FILES = {
    "tiers": "tier_shares.png",
    "residuals": "residuals.png",
    "panel_sizes": "panel_size.png",
    "pieces": "shapley_pieces.png",
    "stratified": "stratified_panel.png",
}
TABLE_FIGURES = (
    ("full.head", "full scale: head share"),
    ("full.middle", "full scale: middle share"),
    ("full.tail", "full scale: tail share"),
    ("full.middle_tail", "full scale: middle + tail"),
    ("same_game.head", "panel, same game: head share"),
    ("same_game.middle", "panel, same game: middle share"),
    ("same_game.tail", "panel, same game: tail share"),
    ("restricted.head", "panel, restricted: head share"),
    ("restricted.middle", "panel, restricted: middle share"),
    ("restricted.tail", "panel, restricted: tail share"),
    ("panel_share", "panel's share of the full attribution"),
    ("same_game.c_star", "c*, same game"),
    ("same_game.r_star", "r*, same game"),
    ("restricted.c_star", "c*, restricted"),
    ("restricted.r_star", "r*, restricted"),
    ("same_game.spearman", "Spearman, same game"),
    ("restricted.spearman", "Spearman, restricted"),
    ("full.top_k", "top-k share, full scale"),
    ("same_game.top_k", "top-k share, panel (same game)"),
    ("full.gini", "Gini, full scale"),
)
TIER_COLOURS = {"head": "#E69F00", "middle": "#009E73", "tail": "#CC79A7"}  # Okabe & Ito
GAME_COLOURS = {"same_game": "#D55E00", "restricted": "#56B4E9"}
FULL_COLOUR = "#0072B2"
ROUNDING_GAP = 1e-10  # a gap below this is float64 rounding (a linear indicator's): not drawn on a log axis


def _num(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def _range(low: Any, high: Any) -> str:
    return "–" if low is None or high is None else f"{_num(low)} – {_num(high)}"


def _plan_words(s: dict[str, Any]) -> list[Inline]:
    plan = s["plan"]
    a = plan["attribution"]
    gen = plan["generator"]
    if gen is not None:
        what: list[Inline] = [
            f"synthetic populations of {gen['agents']:,} agents (seeds {', '.join(map(str, plan['seeds']))}; "
            f"{gen['edges_per_agent']:g} attention edges per agent, follower exponent {gen['follower_exponent']:g} "
            f"(scale {gen.get('follower_scale', 20.0):g}), "
            f"activity exponent {gen['activity_exponent']:g}, {gen['inactive_fraction']:.0%} inactive)"
        ]
    else:
        what = ["the population of ", Code(plan["source"])]
    return [
        "Population: ",
        *what,
        f"; visibility: {plan['visibility']}" if plan.get("visibility") else "",
        f". Attribution: {a['nodes']} quadrature nodes ({a['rule']} rule), {a['dtype']}; tiers: head = top "
        f"{a['head']:.0%} by visibility, middle = the next {a['middle']:.0%}; panel: the {a['panel_size']} most "
        f"visible active accounts; top-k with k = {a['top_k']}. Intervals: the {plan['level']:.0%} percentile "
        f"interval over {plan['bootstrap']} vertex-bootstrap replicates of population 0 (agents drawn with "
        "replacement, the edges among them kept)",
        f", and the range over the {len(plan['seeds'])} seeds (all else equal)." if len(plan["seeds"]) > 1 else ".",
    ]


def document(s: dict[str, Any]) -> list[Block]:
    plan = s["plan"]
    blocks = [Block("h1", f"skyattr study: {plan['source']}"), Block("p", _plan_words(s))]
    if s["missing_units"]:
        blocks.append(
            Block("p", [Bold("Incomplete: "), f"{len(s['missing_units'])} unit(s) not computed yet (run the same "
                        "command again to finish; the numbers below use what is done)."])
        )  # fmt: skip
    seeds = len(plan["seeds"]) > 1
    blocks.append(Block("h2", "The paper's table"))
    blocks.append(
        Block("p", "For each indicator: the full-scale attribution's tier shares, the panel study's own tier shares "
                   "in both games (restricted: the indicator on the panel alone, as a small study computes it; same "
                   "game: the full game with only the panel active), and the scale-bias figures. c* is the "
                   "rescaling that best maps the panel's attribution on its accounts' full-scale attribution; r* is "
                   "what no rescaling removes (relative L2).")
    )  # fmt: skip
    for ind, data in s["indicators"].items():
        blocks.append(Block("h2", f"{ind}"))
        if data["nothing"]:
            blocks.append(Block("p", f"Nothing to attribute: {data['nothing']}."))
            continue
        blocks.append(
            Block("p", f"{data['agents']:,} agents ({data['active']:,} active), {data['edges']:,} attention edges; "
                       f"{data['bootstrap_nothing']} bootstrap replicate(s) with nothing to attribute.")
        )  # fmt: skip
        header = (
            "figure",
            "estimate",
            f"{plan['level']:.0%} CI over agents",
            *(("range over seeds",) if seeds else ()),
        )
        in_head = (data["figures"].get("panel_in_head") or {}).get("estimate") == 1.0
        rows = []
        uncovered = False
        for key, label in TABLE_FIGURES:
            e = data["figures"].get(key)
            if e is None or (in_head and key.split(".")[-1] in ("head", "middle", "tail") and key[:4] != "full"):
                continue
            ci = _range(e["agents"]["low"], e["agents"]["high"])
            if e["agents"].get("covers") is False:
                ci, uncovered = f"{ci} †", True
            row: list[Inline] = [label, _num(e["estimate"]), ci]
            if seeds:
                row.append(_range(e["seeds"]["low"], e["seeds"]["high"]))
            rows.append(row)
        blocks.append(Block("table", rows, header, "lrr" + ("r" if seeds else "")))
        notes = []
        if in_head:
            notes.append(
                "Every panel member is in the head tier here, so the panel's own tier shares are (1, 0, 0) in both "
                "games by construction: they are left out (their distance to the full-scale shares is the full "
                "middle + tail share, whatever the panel computes)."
            )
        if uncovered:
            notes.append(
                "† The interval does not hold the estimate: the vertex bootstrap is biased for this figure "
                "(study.json gives each interval's replicate mean; its distance from the estimate is the bias). "
                "It shows on figures that rest on ranks (Spearman and top-k within the panel; at large N also the "
                "tier shares and the Gini, whose tiers and order are ranks over every account) and on r* near 0: "
                "drawing agents with replacement duplicates accounts, which ties and reorders the ranks. Read the "
                "range over seeds instead, where there is one."
            )
        blocks += [Block("p", n) for n in notes]
    blocks.append(Block("img", (FIGURE_FILES["tiers"], "Tier shares, full scale vs the panel study in both games")))
    blocks += _theorem(s)
    blocks += _panel_sizes(s)
    blocks += _stratified(s)
    blocks += _sensitivity(s)
    blocks += _pieces(s)
    return blocks


def _stratified(s: dict[str, Any]) -> list[Block]:
    found = [r for r in s.get("stratified", []) if r.get("curve")]
    if not found:
        return []
    eps, q = found[0]["epsilon"], found[0]["quantile"]
    rows = []
    for r in found:
        if r["size"] is None:
            rows.append([r["indicator"], "none tried meets ε", "–", "–", "–", "–"])
            continue
        alloc = ", ".join(f"{t} {n:,}" for t, n in r["allocation"].items())
        weights = ", ".join(f"{t} {w:.3g}" for t, w in r["weights"].items())
        at = next((c for c in r["curve"] if c["size"] == r["size"]), None)  # the visibility panel asked that size
        vis = _num(at["visibility_panel_error"]) if at else "–"
        rows.append([r["indicator"], f"{r['size']:,}", alloc, weights, f"{r['held_out_within']:.0%}", vis])
    sizes = sorted({c["target"] for r in found for c in r["curve"]})
    curve_rows = []
    for r in found:
        by = {c["target"]: c for c in r["curve"]}
        curve_rows.append([f"{r['indicator']}: stratified", *(_num(by[n]["error_quantile"]) if n in by else "–"
                                                              for n in sizes)])  # fmt: skip
        curve_rows.append([f"{r['indicator']}: visibility panel", *(_num(by[n]["visibility_panel_error"]) if n in by
                                                                    else "–" for n in sizes)])  # fmt: skip
    return [
        Block("h2", "The panel a small study should have used"),
        Block("p", f"The smallest stratified random sample of the active accounts (strata: the tiers; Neyman "
                   f"allocation; each account weighted by the accounts of its stratum it stands for) whose weighted "
                   f"tier shares are within ε = {eps:g} of the full-scale ones in {q:.0%} of {found[0]['draws']} "
                   "samples, checked on as many held-out samples; if the study measured each of its accounts' "
                   "full-scale attribution exactly, so a lower bound on what it needs. The visibility panel of the "
                   "same size is its error with no weights (it sees the head first)."),
        Block("table", rows, ("indicator", "sample size", "allocation", "weights", "held-out within ε",
                              "visibility panel's error at that size"), "lrllrr"),
        Block("p", f"Error of the tier shares (max over tiers; stratified: the {q:.0%} quantile over samples) "
                   "against the sample's size asked for (Neyman's rounding and a stratum's size move the drawn "
                   "size by a few; study.json has both):"),
        Block("table", curve_rows, ("", *(f"{n:,}" for n in sizes)), "l" + "r" * len(sizes)),
        Block("img", (FIGURE_FILES["stratified"], "Tier-share error against the panel's size: stratified vs "
                                                   "visibility")),
    ]  # fmt: skip


SWEEP_WORDS = {
    "nodes": "quadrature nodes",
    "head": "head tier cut-off (top fraction by visibility)",
    "middle": "middle tier cut-off (the next fraction)",
    "generator.follower_exponent": "the generator's follower (visibility) exponent",
    "generator.activity_exponent": "the generator's activity exponent",
    "generator.edges_per_agent": "the generator's attention edges per agent",
    "generator.inactive_fraction": "the generator's inactive fraction",
    "generator.follower_scale": "the generator's follower scale",
    "window.hours": "the window's length in hours: the archive replayed again with that window, ending where it ends",
}


def _sensitivity(s: dict[str, Any]) -> list[Block]:
    sweeps = [sw for sw in s.get("sweeps", []) if len(sw["points"]) > 1]
    if not sweeps:
        return []
    blocks = [
        Block("h2", "Sensitivity"),
        Block("p", "One option varied at a time around the study (population 0; * marks the study's own value): "
                   "the full-scale middle + tail share, the panel's share and r* in both games. A synthetic "
                   "population's generator exponents change the population itself (seed 0 each time); an archive's "
                   "window is replayed again."),
    ]  # fmt: skip
    options = dict.fromkeys(sw["option"] for sw in sweeps)
    for option in options:
        rows = []
        for sw in (sw for sw in sweeps if sw["option"] == option):
            for p in sw["points"]:
                rows.append([
                    sw["indicator"], f"{p['value']:g}" + (" *" if p["base"] else ""), _num(p["full.middle_tail"]),
                    _num(p["panel_share"]), _num(p["same_game.r_star"]), _num(p["restricted.r_star"]),
                ])  # fmt: skip
        name, _, param = option.partition(".")
        words = SWEEP_WORDS.get(option, f"{name}'s parameter {param}")
        blocks.append(Block("p", [Bold(option), f": {words}."]))
        header = ("indicator", "value", "middle + tail", "panel's share", "r* same game", "r* restricted")
        blocks.append(Block("table", rows, header, "lrrrrr"))
    return blocks


def _theorem(s: dict[str, Any]) -> list[Block]:
    rows = []
    for row in s["theorem"]:
        holds = {True: "holds", False: "FAILS", None: "–"}[row["holds"]]
        rows.append([
            row["indicator"], row["structure"], f"r* {row['expected']}", _num(row["r_star"], ".2e"),
            _range(row["low"], row["high"]) if row["structure"] == "nonlinear" else
            f"{_num(row['low'], '.1e')} – {_num(row['high'], '.1e')}", holds,
        ])  # fmt: skip
    return [
        Block("h2", "The theorem's rows"),
        Block("p", "In the same game r* = 0 for a linear indicator and for any function of one linear aggregate "
                   "(v = f(c·x)); it is positive for the built-in nonlinear indicators when the panel's attenders "
                   "also attend active accounts outside it in unequal measure (kernels/bias.py). A row holds when "
                   f"the estimate and its interval are at or below the kernels' rounding ({_num(s['theorem'][0]['tolerance'], '.0e') if s['theorem'] else '–'}) "  # noqa: E501
                   "for a prediction of 0, and above it for a prediction of > 0."),
        Block("table", rows, ("indicator", "structure", "predicted", "r* (same game)", "CI over agents", "verdict"),
              "lllrrl"),
        Block("img", (FIGURE_FILES["residuals"], "r* of each indicator in both games, with its interval")),
    ]  # fmt: skip


def _panel_sizes(s: dict[str, Any]) -> list[Block]:
    sizes = sorted({row["panel_size"] for sweep in s["panel_sizes"].values() for row in sweep})
    if len(sizes) < 2:
        return []
    rows = []
    for ind, sweep in s["panel_sizes"].items():
        by = {row["panel_size"]: row for row in sweep}
        rows.append([ind, *(_num(by[n]["same_game.r_star"]) if n in by else "–" for n in sizes)])
    shares = []
    for ind, sweep in s["panel_sizes"].items():
        by = {row["panel_size"]: row for row in sweep}
        shares.append([ind, *(_num(by[n]["panel_share"]) if n in by else "–" for n in sizes)])
    header = ("indicator", *(f"N = {n:,}" for n in sizes))
    return [
        Block("h2", "Panel size"),
        Block("p", "How the same game's r* and the panel's share of the full attribution move with the panel's "
                   "size (population 0)."),
        Block("table", rows, header, "l" + "r" * len(sizes)),
        Block("table", shares, ("panel's share", *header[1:]), "l" + "r" * len(sizes)),
        Block("img", (FIGURE_FILES["panel_sizes"], "r* (same game) against the panel's size")),
    ]  # fmt: skip


def _pieces(s: dict[str, Any]) -> list[Block]:
    if not s["pieces"]:
        return []
    pieces = s["pieces"][0]["pieces"]
    rows = []
    for p in s["pieces"]:
        params = ", ".join(f"{k} = {v:g}" for k, v in p["params"].items()) or "defaults"
        rows.append([p["game"], f"{p['indicator']} ({params})", *(_num(g, ".2%") for g in p["gap"])])
    return [
        Block("h2", "Aumann–Shapley vs exact Shapley"),
        Block("p", "On small games the path integral (Aumann–Shapley) and exact Shapley values differ. The table "
                   "gives the relative L2 gap between the two when every agent is split into k equal pieces (each "
                   "with activity x_i / k and the agent's attention) and the pieces' exact Shapley values are summed "
                   "back per agent (kernels.shapley.split_shapley). The gap falls to zero, asymptotically like "
                   "1/k, for a gentle threshold (κ = 0.1) as for a sharp one: it is the effect of agents being "
                   "large relative to the indicator's curvature (atoms), and the Aumann–Shapley value is the limit "
                   "of a game of many small players (Aumann & Shapley 1974). A linear indicator has no gap at any "
                   "k."),
        Block("table", rows, ("game", "indicator", *(f"k = {k}" for k in pieces)), "ll" + "r" * len(pieces)),
        Block("img", (FIGURE_FILES["pieces"], "Gap between exact Shapley of k pieces and Aumann–Shapley, against k")),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------ figures


def plot_tiers(s: dict[str, Any], path: Path) -> None:
    """Per indicator: the head/middle/tail shares at full scale and in the panel's two games, with intervals. A
    panel inside the head tier has (1, 0, 0) by construction: its bars are left out and the panel says so."""
    from matplotlib.patches import Patch

    inds = [i for i, d in s["indicators"].items() if not d["nothing"]]
    fig = new_figure(2.8 * max(1, len(inds)), 4.2)
    axes = fig.subplots(1, max(1, len(inds)), sharey=True, squeeze=False)[0]
    series = (("full", "full scale", FULL_COLOUR), *((g, f"panel study, {g.replace('_', ' ')}", c) for g, c in
                                                     GAME_COLOURS.items()))  # fmt: skip
    for ax, ind in zip(axes, inds, strict=False):
        figs = s["indicators"][ind]["figures"]
        in_head = (figs.get("panel_in_head") or {}).get("estimate") == 1.0
        x = np.arange(3)
        for j, (prefix, label, colour) in enumerate(series):
            if in_head and prefix != "full":
                continue
            est, lo, hi = [], [], []
            for t in ("head", "middle", "tail"):
                e = figs.get(f"{prefix}.{t}", {})
                v = e.get("estimate")
                est.append(np.nan if v is None else v)
                a = e.get("agents", {})
                lo.append(np.nan if a.get("low") is None or v is None else v - a["low"])
                hi.append(np.nan if a.get("high") is None or v is None else a["high"] - v)
            yerr = np.clip(np.array([lo, hi]), 0, None)
            ax.bar(x + (j - 1) * 0.27, est, 0.27, color=colour, label=label, yerr=yerr, capsize=2)
        if in_head:
            ax.text(0.5, 0.97, "panel inside the head tier:\nits shares are (1, 0, 0)\nby construction (not shown)",
                    transform=ax.transAxes, ha="center", va="top", fontsize=7)  # fmt: skip
        ax.set_xticks(x, ["head", "middle", "tail"])
        ax.set_ylim(0, 1.05)
        ax.set_title(ind, fontsize=10)
    axes[0].set_ylabel("share of the attribution")
    handles = [Patch(color=c, label=label) for _, label, c in series]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle("Tier shares of the attribution: full scale vs the panel study, 95% intervals over agents")
    fig.savefig(path)


def plot_residuals(s: dict[str, Any], path: Path) -> None:
    """r* of each indicator in both games with its interval, and the alert's threshold."""
    inds = [i for i, d in s["indicators"].items() if not d["nothing"]]
    fig = new_figure(max(7.0, 1.4 * len(inds)), 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(inds))
    for j, (game, colour) in enumerate(GAME_COLOURS.items()):
        est, err = [], [[], []]
        for ind in inds:
            e = s["indicators"][ind]["figures"].get(f"{game}.r_star", {})
            v, a = e.get("estimate"), e.get("agents", {})
            est.append(np.nan if v is None else v)
            err[0].append(0 if v is None or a.get("low") is None else max(0.0, v - a["low"]))
            err[1].append(0 if v is None or a.get("high") is None else max(0.0, a["high"] - v))
        ax.bar(x + (j - 0.5) * 0.38, est, 0.38, color=colour, yerr=err, capsize=3, label=game.replace("_", " "))
    ax.axhline(TAU_RES, color="#444", linestyle="--", linewidth=1, label=f"alert threshold τ_res = {TAU_RES:g}")
    ax.set_xticks(x, [f"{i}\n({PREDICTIONS.get(i, ('other',))[0]})" for i in inds], fontsize=8)
    ax.set_ylabel("r* (relative L2 no rescaling removes)")
    ax.set_title("r* by indicator: same game (the theorem's) vs restricted (a small study's)", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path)


def plot_panel_sizes(s: dict[str, Any], path: Path) -> None:
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    for ind, sweep in s["panel_sizes"].items():
        pts = [(r["panel_size"], r["same_game.r_star"]) for r in sweep if r["same_game.r_star"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=ind)
    ax.set_xscale("log")
    ax.set_xlabel("panel size N (most visible active accounts)")
    ax.set_ylabel("r*, same game")
    ax.set_title("r* (same game) against the panel's size: the part no rescaling removes", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path)


def plot_pieces(s: dict[str, Any], path: Path) -> None:
    """The gap against k on log axes, with a 1/k guide; gaps at rounding level (a linear indicator's) left out."""
    fig = new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    anchor = None
    for p in s["pieces"]:
        if max(p["gap"]) < ROUNDING_GAP:
            continue
        params = ", ".join(f"{k}={v:g}" for k, v in p["params"].items())
        ax.plot(p["pieces"], p["gap"], marker="o", label=f"{p['game']}: {p['indicator']} {params}".strip())
        anchor = anchor or (p["pieces"], p["gap"][0] * p["pieces"][0])
    if anchor is not None:
        ks = np.asarray(anchor[0], np.float64)
        ax.plot(ks, anchor[1] / ks, color="#444", linestyle="--", linewidth=1, label="∝ 1/k (guide)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("pieces per agent k")
    ax.set_ylabel("relative L2 gap to Aumann–Shapley")
    ax.set_title("Exact Shapley of agents split into k pieces vs Aumann–Shapley (linear: 0, not shown)", fontsize=10)
    ax.legend(fontsize=7)
    fig.savefig(path)


def plot_stratified(s: dict[str, Any], path: Path) -> None:
    fig = new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    found = [r for r in s.get("stratified", []) if r.get("curve")]
    colours = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
    for r, colour in zip(found, colours * 4, strict=False):
        sizes = [c["target"] for c in r["curve"]]
        ax.plot(sizes, [c["error_quantile"] for c in r["curve"]], marker="o", color=colour,
                label=f"{r['indicator']}: stratified ({r['quantile']:.0%} quantile)")  # fmt: skip
        ax.plot(sizes, [c["visibility_panel_error"] for c in r["curve"]], linestyle="--", color=colour,
                label=f"{r['indicator']}: visibility panel")  # fmt: skip
    if found:
        ax.axhline(found[0]["epsilon"], color="#444", linewidth=1, label=f"ε = {found[0]['epsilon']:g}")
    ax.set_xscale("log")
    ax.set_xlabel("panel size (accounts)")
    ax.set_ylabel("error of the tier shares (max over tiers)")
    ax.set_title("Stratified, weighted sample vs the visibility panel: tier-share error against size", fontsize=10)
    ax.legend(fontsize=6, ncols=2)
    fig.savefig(path)


def write_documents(s: dict[str, Any], out: Path) -> list[Path]:
    """study.md, study.html, study.json and the figures, into ``out``; returns the paths written."""
    blocks = document(s)
    files = {
        "study.md": render_markdown(blocks),
        "study.html": render_html(blocks),
        "study.json": json.dumps(s, indent=1, allow_nan=False) + "\n",
    }
    written = []
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    plots = {"tiers": plot_tiers, "residuals": plot_residuals, "panel_sizes": plot_panel_sizes, "pieces": plot_pieces,
             "stratified": plot_stratified}  # fmt: skip
    for key, plot in plots.items():
        if (key == "pieces" and not s["pieces"]) or (key == "stratified" and not s.get("stratified")):
            continue
        plot(s, out / FIGURE_FILES[key])
        written.append(out / FIGURE_FILES[key])
    return written


__all__ = ["FIGURE_FILES", "document", "write_documents"]
