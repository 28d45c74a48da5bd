"""``skyattr study``: the paper's table for every indicator, with confidence intervals, the theorem's rows, the panel
size sweep and the Aumann–Shapley vs Shapley comparison, computed in resumable units.

A study is a :class:`StudyPlan` (what to compute: indicators, populations, replicates, the attribution options)
cut into *units*, each one scale-bias study or one small-game comparison, whose figures are written to
``DIR/parts/<unit>.json`` as soon as they are known. An interrupted study started again with the same plan skips
the units it has; a plan that differs from the one in ``DIR/plan.json`` is refused (its parts would mix). Then
:func:`summarise` turns the parts into one JSON object holding every number the documents show.

Uncertainty, two kinds, kept apart:

* **over agents**: the figures of population 0 (the file, or the first seed) recomputed on ``bootstrap`` vertex-
  bootstrap replicates (:func:`kernels.resample.vertex_bootstrap`: agents drawn with replacement, the edges among
  the draws kept), the percentile interval at ``level``;
* **over seeds** (synthetic populations): the figure on each population drawn with another seed, all else equal:
  how much the headline depends on the draw of the network.

A replicate where v(x) = v(0) has no figures: it is counted as missing, never averaged in as zero.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import kernels
from streamer.core.durable import atomic_write

SCHEMA = "skyattr.study/1"

# What the theorem (kernels/bias.py) predicts for the same game's r* of the built-in indicators.
PREDICTIONS = {
    "exposure": ("linear", "= 0"),
    "activity": ("linear", "= 0"),
    "saturated_exposure": ("f(linear)", "= 0"),
    "reach": ("nonlinear", "> 0"),
    "cascade": ("nonlinear", "> 0"),
    "saturation": ("nonlinear", "> 0"),
}
# An r* at or below this is zero up to the kernels' rounding: float32 sums over ~10^7 edges leave ~10^-4 (measured:
# saturated_exposure's same-game r* is 6.9e-5 at 1.67 million agents), an order below it is still two below the
# nonlinear indicators' (0.03-0.3), so the verdicts cannot mix the two.
ZERO_TOLERANCE = {"float32": 1e-3, "float64": 1e-9}

# The small games of the Aumann–Shapley vs Shapley comparison: (name, x, attender, source, weight).
SMALL_GAMES: tuple[tuple[str, tuple[float, ...], tuple[int, ...], tuple[int, ...], tuple[float, ...]], ...] = (
    ("ring of 4", (5.0, 1.0, 3.0, 8.0), (0, 1, 2, 3, 1, 2, 0), (1, 2, 3, 0, 0, 0, 2), (1, 2, 1, 3, 1, 1, 2.0)),
    ("star of 4", (9.0, 2.0, 1.0, 4.0), (1, 2, 3, 0, 2), (0, 0, 0, 3, 3), (2.0, 1.0, 3.0, 1.0, 1.0)),
)  # fmt: skip
SMALL_GAME_INDICATORS: tuple[tuple[str, dict[str, float]], ...] = (
    ("cascade", {}),
    ("cascade", {"kappa": 0.1}),
    ("reach", {}),
    ("exposure", {}),
)


@dataclass(frozen=True)
class Generator:
    """The synthetic population's parameters (:func:`kernels.heavy_tailed_population`)."""

    agents: int
    edges_per_agent: float = 8.0
    follower_exponent: float = 1.1
    activity_exponent: float = 1.6
    inactive_fraction: float = 0.3
    follower_scale: float = 20.0

    def population(self, seed: int) -> kernels.Population:
        return kernels.heavy_tailed_population(
            self.agents,
            self.edges_per_agent,
            seed,
            follower_exponent=self.follower_exponent,
            activity_exponent=self.activity_exponent,
            inactive_fraction=self.inactive_fraction,
            follower_scale=self.follower_scale,
        )


@dataclass(frozen=True)
class StudyPlan:
    """Everything that decides a study's numbers (and nothing that does not: paths, progress)."""

    indicators: tuple[str, ...]
    source: str  # what population 0 is: "synthetic", or the input's path
    generator: Generator | None  # synthetic populations: their parameters; None for an input file
    seeds: tuple[int, ...]  # the synthetic populations' seeds (population 0 is the first); () for an input file
    bootstrap: int  # vertex-bootstrap replicates of population 0
    level: float
    attribution: dict[str, Any]  # nodes, dtype, head, middle, panel_size, top_k, rule, params (per indicator)
    panel_sizes: tuple[int, ...]
    pieces: tuple[int, ...]
    sweeps: tuple[tuple[str, tuple[float, ...]], ...] = ()  # (option, values): see SWEEPABLE
    visibility: str = ""  # where population 0's visibility comes from (follower counts, the proxy)
    epsilon: float = 0.05  # the stratified panel's target: tier shares within this (0: no stratified panel)
    window_hours: float | None = None  # an archive's window (bucket_hours x buckets): what window.hours varies
    stratified_draws: int = 200
    bootstrap_seed: int = 20261207
    schema: str = SCHEMA  # parts computed by another version of the figures are another plan

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def populations(self) -> int:
        return max(1, len(self.seeds))


@dataclass(frozen=True)
class Unit:
    """One piece of work: ``key`` names its part file; ``kind`` is ``study`` (population ``population``, replicate
    ``replicate``: 0 the population itself, else a bootstrap draw; panel of ``panel_size``) or ``pieces``."""

    key: str
    kind: str
    indicator: str = ""
    population: int = 0
    replicate: int = 0
    panel_size: int = 0
    game: int = 0
    params: dict[str, float] = field(default_factory=dict)
    variant: tuple[str, float] | None = None  # a sweep's (option, value): what differs from the plan


def units(plan: StudyPlan) -> list[Unit]:
    """The plan's units, in the order they run: the headline studies first (a study stopped early still says the
    most), then the bootstrap, the other seeds, the panel sizes and the small games."""
    size = int(plan.attribution["panel_size"])
    out = [Unit(f"study-p0-r0-{ind}", "study", ind, 0, 0, size) for ind in plan.indicators]
    out += [
        Unit(f"study-p0-r{r}-{ind}", "study", ind, 0, r, size)
        for r in range(1, plan.bootstrap + 1)
        for ind in plan.indicators
    ]
    out += [
        Unit(f"study-p{p}-r0-{ind}", "study", ind, p, 0, size)
        for p in range(1, plan.populations)
        for ind in plan.indicators
    ]
    out += [
        Unit(f"panel-{n}-{ind}", "study", ind, 0, 0, n)
        for n in plan.panel_sizes
        if n != size
        for ind in plan.indicators
    ]
    for option, values in plan.sweeps:
        which = _swept_indicators(plan, option)
        out += [
            Unit(f"sweep-{option}-{value:g}-{ind}", "study", ind, 0, 0, size, variant=(option, value))
            for value in values
            if value != base_value(plan, option)
            for ind in which
        ]
    if plan.epsilon > 0:
        out += [Unit(f"stratified-{ind}", "stratified", ind) for ind in plan.indicators]
    if plan.pieces:
        out += [
            Unit(f"pieces-g{g}-{name}-{_params_key(params)}", "pieces", name, game=g, params=params)
            for g in range(len(SMALL_GAMES))
            for name, params in SMALL_GAME_INDICATORS
        ]
    return out


# What a sweep may vary, one at a time, around the plan: the quadrature, the tiers' cut-offs, an indicator's
# parameter (``<indicator>.<parameter>``: that indicator only), for synthetic populations the generator, and for
# an archive the window's length (``window.hours``: the archive replayed again with that window).
SWEEPABLE = ("nodes", "head", "middle", "generator.follower_exponent", "generator.activity_exponent",
             "generator.edges_per_agent", "generator.inactive_fraction", "generator.follower_scale",
             "window.hours")  # fmt: skip
DEFAULT_SWEEPS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("nodes", (8, 16, 32, 64)),
    ("head", (0.005, 0.01, 0.02)),
    ("middle", (0.05, 0.1, 0.2)),
    ("cascade.kappa", (0.5, 2.0, 8.0)),
    ("cascade.theta", (2.0, 3.0, 4.0)),
    ("saturation.capacity_per_agent", (0.1, 1.0, 10.0)),
    ("generator.follower_exponent", (0.7, 0.9, 1.1, 1.5)),
    ("generator.activity_exponent", (1.2, 1.6, 2.0)),
    ("generator.edges_per_agent", (4.0, 8.0, 16.0)),
    ("window.hours", (6.0, 24.0, 72.0, 168.0, 336.0)),
)


def check_sweep(option: str) -> None:
    """Raises ValueError for an option no sweep can vary."""
    if option in SWEEPABLE:
        return
    name, _, param = option.partition(".")
    if param and name in kernels.available_indicators():
        return
    raise ValueError(f"cannot sweep {option!r}: one of {', '.join(SWEEPABLE)} or <indicator>.<parameter>")


def base_value(plan: StudyPlan, option: str) -> float | None:
    """The plan's own value of a swept option (its study is the headline's; None: the indicator's default)."""
    group, _, name = option.partition(".")
    if not name:
        return float(plan.attribution[group])
    if group == "generator":
        return None if plan.generator is None else float(getattr(plan.generator, name))
    if group == "window":
        return plan.window_hours
    held = plan.attribution["params"].get(group, {}).get(name)
    if held is None:
        held = kernels.get_indicator(group).params.get(name)
    return None if held is None else float(held)


def _swept_indicators(plan: StudyPlan, option: str) -> tuple[str, ...]:
    group, _, name = option.partition(".")
    if group == "generator" and plan.generator is None:
        return ()  # an input population has no generator to vary
    if group == "window":
        return plan.indicators if plan.window_hours is not None else ()  # only an archive can be replayed again
    if name and group != "generator":
        return (group,) if group in plan.indicators else ()
    return plan.indicators


def _params_key(params: dict[str, float]) -> str:
    return "-".join(f"{k}{v:g}" for k, v in sorted(params.items())) or "default"


class StudyDirError(ValueError):
    """The output directory holds a study of another plan."""


class Workspace:
    """The study's directory: ``plan.json`` and ``parts/``. Opening it with another plan raises
    :class:`StudyDirError`, so an interrupted study resumes only with the plan it was started with."""

    def __init__(self, out: Path, plan: StudyPlan, fresh: bool = False) -> None:
        self.out, self.plan = out, plan
        self.parts = out / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        path = out / "plan.json"
        if path.exists() and not fresh:
            try:
                held = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise StudyDirError(f"cannot read {path}: {exc}; give --fresh to start the study again") from None
            if held.get("digest") != plan.digest:
                raise StudyDirError(
                    f"{out} holds a study of another plan (plan.json): give another --out, or --fresh to replace it"
                )
        elif fresh:
            for part in self.parts.glob("*.json"):
                part.unlink()
        data = json.dumps({"digest": plan.digest, "plan": plan.as_dict()}, indent=2).encode()
        atomic_write(path, lambda fh: fh.write(data))

    def done(self, unit: Unit) -> bool:
        return (self.parts / f"{unit.key}.json").exists()

    def save(self, unit: Unit, value: dict[str, Any]) -> None:
        data = json.dumps(value, allow_nan=True).encode()
        atomic_write(self.parts / f"{unit.key}.json", lambda fh: fh.write(data))

    def load(self, unit: Unit) -> dict[str, Any] | None:
        path = self.parts / f"{unit.key}.json"
        return json.loads(path.read_text()) if path.exists() else None


class Populations:
    """The populations of a plan, made once each: population 0 (the input, or the first seed), the other seeds,
    and population 0's bootstrap replicates (drawn from a seed of their own, so a resumed study draws the same)."""

    def __init__(
        self,
        plan: StudyPlan,
        first: kernels.Population | None = None,
        window: Callable[[float], kernels.Population] | None = None,
    ) -> None:
        self.plan = plan
        self._first = first
        self._window = window  # the input archive replayed with a window of that many hours
        self._cache: dict[tuple[int, int, tuple[str, float] | None], kernels.Population] = {}

    def get(self, population: int, replicate: int, variant: tuple[str, float] | None = None) -> kernels.Population:
        made = variant is not None and variant[0].startswith(("generator.", "window."))
        key = (population, replicate, variant if made else None)
        if key not in self._cache:
            if len(self._cache) > 4:  # the bootstrap walks replicate by replicate: keep memory to a few
                self._cache.clear()
            self._cache[key] = self._make(population, replicate, key[2])
        return self._cache[key]

    def _make(self, population: int, replicate: int, variant: tuple[str, float] | None) -> kernels.Population:
        if variant is not None and variant[0] == "window.hours":
            if self._window is None:
                raise ValueError("window.hours is swept by replaying an archive: give the study an archive")
            return self._window(variant[1])
        if variant is not None:
            from dataclasses import replace

            assert self.plan.generator is not None
            name = variant[0].removeprefix("generator.")
            generator = replace(self.plan.generator, **{name: variant[1]})
            return generator.population(self.plan.seeds[population])
        if replicate:
            from kernels.resample import vertex_bootstrap

            base = self.get(population, 0)
            rng = np.random.default_rng([self.plan.bootstrap_seed, population, replicate])
            x, vis, graph, _ = vertex_bootstrap(base.x, base.visibility, base.graph, rng)
            return kernels.Population(x=x, visibility=vis, graph=graph)
        if population == 0 and self._first is not None:
            return self._first
        assert self.plan.generator is not None
        return self.plan.generator.population(self.plan.seeds[population])


def run_unit(plan: StudyPlan, unit: Unit, populations: Populations) -> dict[str, Any]:
    """The figures of one unit (see :class:`Unit`)."""
    from kernels.study_figures import study_figures

    a = plan.attribution
    if unit.kind == "pieces":
        return _pieces(unit, plan.pieces)
    if unit.kind == "stratified":
        return _stratified(plan, unit, populations.get(0, 0))
    pop = populations.get(unit.population, unit.replicate, unit.variant)
    if pop.graph.edges == 0:
        return {"nothing": "no attention edges", "figures": {}}
    params = dict(a["params"].get(unit.indicator, {}))
    options = {"nodes": a["nodes"], "head": a["head"], "middle": a["middle"]}
    if unit.variant is not None:
        option, value = unit.variant
        group, _, name = option.partition(".")
        if not name:
            options[group] = int(value) if group == "nodes" else value
        elif group == unit.indicator:
            params[name] = value
    ind = kernels.get_indicator(unit.indicator, **params)
    started = time.perf_counter()
    st = kernels.scale_study(
        ind, pop.x, pop.graph, pop.visibility, nodes=options["nodes"], dtype=a["dtype"], head=options["head"],
        middle=options["middle"], panel_size=unit.panel_size, rule=a["rule"],
    )  # fmt: skip
    return {
        "nothing": st.nothing,
        "figures": study_figures(st, a["top_k"]),
        "agents": pop.graph.n,
        "active": int(np.count_nonzero(pop.x)),
        "edges": pop.graph.edges,
        "seconds": time.perf_counter() - started,
    }


def _stratified(plan: StudyPlan, unit: Unit, pop: kernels.Population) -> dict[str, Any]:
    """The smallest stratified panel of population 0 meeting ε (:mod:`kernels.stratified`), its error curve, and
    the visibility panel's error at the same sizes."""
    from kernels.stratified import SIZES, smallest_stratified_panel

    a = plan.attribution
    ind = kernels.get_indicator(unit.indicator, **a["params"].get(unit.indicator, {}))
    full = kernels.attribute(ind, pop.x, pop.graph, nodes=a["nodes"], dtype=a["dtype"], rule=a["rule"])
    phi = np.asarray(full.phi, np.float64)
    tiers = kernels.assign_tiers(pop.visibility, head=a["head"], middle=a["middle"])
    active = pop.x > 0
    if phi[active].sum() <= 0:
        return {"nothing": "no attribution to estimate", "curve": []}
    result = smallest_stratified_panel(
        phi, tiers, active, list(SIZES), epsilon=plan.epsilon, draws=plan.stratified_draws, seed=7
    )
    truth = kernels.tier_shares(phi, tiers)
    curve = []
    for point in result.curve:
        panel = kernels.select_panel(pop.visibility, pop.x, size=int(point["target"]))
        shares = kernels.tier_shares(phi[panel], tiers[panel])
        curve.append({**point, "visibility_panel_error": float(np.max(np.abs(shares - truth)))})
    return {
        "nothing": "",
        "indicator": unit.indicator,
        "size": result.size,
        "allocation": result.allocation,
        "weights": result.weights,
        "epsilon": result.epsilon,
        "quantile": result.quantile,
        "draws": result.draws,
        "held_out_within": result.held_out_within,
        "curve": curve,
    }


def _pieces(unit: Unit, pieces: Sequence[int]) -> dict[str, Any]:
    from kernels.shapley import split_shapley

    name, x, att, src, w = SMALL_GAMES[unit.game]
    graph = kernels.AttentionGraph(np.array(att), np.array(src), np.array(w), len(x))
    ind = kernels.get_indicator(unit.indicator, **unit.params)
    xs = np.array(x)
    path = np.asarray(kernels.attribute(ind, xs, graph, nodes=64, dtype="float64", rule="uniform").phi, np.float64)
    norm = float(np.linalg.norm(path))
    gaps = []
    for k in pieces:
        shapley = split_shapley(ind, xs, graph, k)
        gaps.append(float(np.linalg.norm(shapley - path) / norm) if norm > 0 else 0.0)
    return {"game": name, "indicator": unit.indicator, "params": unit.params, "pieces": list(pieces), "gap": gaps}


def run_study(
    workspace: Workspace,
    populations: Populations,
    on_unit: Callable[[Unit, int, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Run the units the workspace lacks, in plan order; ``on_unit(unit, done, total)`` after each. Returns how many
    ran here. ``stop()``, checked between units, ends the study early (what is done stays done)."""
    todo = units(workspace.plan)
    done = sum(workspace.done(u) for u in todo)
    ran = 0
    for unit in todo:
        if workspace.done(unit):
            continue
        if stop is not None and stop():
            break
        workspace.save(unit, run_unit(workspace.plan, unit, populations))
        done += 1
        ran += 1
        if on_unit is not None:
            on_unit(unit, done, len(todo))
    return ran


# ------------------------------------------------------------------------------------------------ summary


def _finite(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def summarise(workspace: Workspace) -> dict[str, Any]:
    """Every number of the study as one JSON-ready object (see the module docstring); units not done yet are left
    out and counted under ``missing_units``."""
    from kernels.study_figures import FIGURES, intervals

    plan = workspace.plan
    parts = {u.key: (u, workspace.load(u)) for u in units(plan)}
    missing = [k for k, (_, v) in parts.items() if v is None]
    level = plan.level
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "plan": plan.as_dict(),
        "digest": plan.digest,
        "missing_units": missing,
        "figures": FIGURES,
        "indicators": {},
        "theorem": [],
        "panel_sizes": {},
        "pieces": [],
    }
    size = int(plan.attribution["panel_size"])
    for ind in plan.indicators:
        first = parts[f"study-p0-r0-{ind}"][1]
        if first is None:
            continue
        reps = [parts[f"study-p0-r{r}-{ind}"][1] for r in range(1, plan.bootstrap + 1)]
        boot = [r["figures"] for r in reps if r is not None]
        seeds = [parts[f"study-p{p}-r0-{ind}"][1] for p in range(1, plan.populations)]
        seed_figs = [first["figures"], *(s["figures"] for s in seeds if s is not None)]
        est = first["figures"]
        cis = intervals(est, boot, level) if est else {}
        figures = {}
        for name, value in est.items():
            entry: dict[str, Any] = {"estimate": _finite(value)}
            ci = cis[name]
            entry["agents"] = {
                "low": _finite(ci.low), "high": _finite(ci.high), "mean": _finite(ci.mean),
                "replicates": ci.replicates, "missing": ci.missing, "covers": ci.covers,
            }  # fmt: skip
            if plan.populations > 1:
                values = [_finite(f.get(name, math.nan)) for f in seed_figs]
                known = [v for v in values if v is not None]
                entry["seeds"] = {
                    "values": values,
                    "low": min(known) if known else None,
                    "high": max(known) if known else None,
                }
            figures[name] = entry
        out["indicators"][ind] = {
            "nothing": first["nothing"],
            "agents": first.get("agents"),
            "active": first.get("active"),
            "edges": first.get("edges"),
            "seconds": first.get("seconds"),
            "bootstrap_nothing": sum(1 for r in reps if r is not None and r["nothing"]),
            "figures": figures,
        }
        structure, expected = PREDICTIONS.get(ind, ("other", "no prediction"))
        r = figures.get("same_game.r_star")
        if r is not None:
            tol = ZERO_TOLERANCE.get(str(plan.attribution["dtype"]), ZERO_TOLERANCE["float32"])
            lo, hi, e = r["agents"]["low"], r["agents"]["high"], r["estimate"]
            if expected == "= 0":
                holds: bool | None = e is not None and e <= tol and (hi is None or hi <= tol)
            elif expected == "> 0":
                holds = e is not None and e > tol and (lo is None or lo > tol)
            else:
                holds = None
            out["theorem"].append(
                {"indicator": ind, "structure": structure, "expected": expected, "r_star": e, "low": lo, "high": hi,
                 "tolerance": tol, "holds": holds}
            )  # fmt: skip
        sweep = []
        for n in sorted({*plan.panel_sizes, size}):
            part = first if n == size else parts[f"panel-{n}-{ind}"][1]
            if part is None or not part["figures"]:
                continue
            f = part["figures"]
            sweep.append({
                "panel_size": n,
                "panel_share": _finite(f.get("panel_share", math.nan)),
                "same_game.r_star": _finite(f.get("same_game.r_star", math.nan)),
                "restricted.r_star": _finite(f.get("restricted.r_star", math.nan)),
                "same_game.tvd": _finite(f.get("same_game.tvd", math.nan)),
            })  # fmt: skip
        out["panel_sizes"][ind] = sweep
    out["pieces"] = [v for k, (u, v) in parts.items() if u.kind == "pieces" and v is not None]
    out["sweeps"] = _sweeps(plan, parts)
    out["stratified"] = [v for k, (u, v) in parts.items() if u.kind == "stratified" and v is not None]
    return out


SWEPT_FIGURES = ("full.middle_tail", "panel_share", "same_game.r_star", "restricted.r_star")


def _sweeps(plan: StudyPlan, parts: dict[str, tuple[Unit, dict[str, Any] | None]]) -> list[dict[str, Any]]:
    """One entry per (option, indicator): the headline figures at each value of the option, the plan's own value
    included (the headline study itself)."""
    out = []
    for option, values in plan.sweeps:
        base = base_value(plan, option)
        for ind in _swept_indicators(plan, option):
            points = []
            for value in sorted({*values, *(() if base is None else (base,))}):
                key = f"study-p0-r0-{ind}" if value == base else f"sweep-{option}-{value:g}-{ind}"
                part = parts.get(key, (None, None))[1]
                if part is None or not part["figures"]:
                    continue
                figs = part["figures"]
                points.append({"value": value, "base": value == base,
                               **{f: _finite(figs.get(f, math.nan)) for f in SWEPT_FIGURES}})  # fmt: skip
            out.append({"option": option, "indicator": ind, "points": points})
    return out


def iter_rows(summary: dict[str, Any], names: Sequence[str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(indicator, figure, entry) for the figures ``names`` of every attributed indicator, in plan order."""
    for ind, data in summary["indicators"].items():
        for name in names:
            entry = data["figures"].get(name)
            if entry is not None:
                yield ind, name, entry


__all__ = [
    "PREDICTIONS",
    "SCHEMA",
    "Generator",
    "Populations",
    "StudyDirError",
    "StudyPlan",
    "Unit",
    "Workspace",
    "run_study",
    "run_unit",
    "summarise",
    "units",
]
