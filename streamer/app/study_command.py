"""``skyattr study``: the command line around :mod:`streamer.app.study` (inputs, presets, progress, resume)."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape

import kernels
from streamer.app import options as opt
from streamer.app.flags import ATTRIBUTION_FIELDS, WINDOW_FIELDS, load_or_exit, with_settings_options
from streamer.app.options import fail, visible
from streamer.app.progress import JobProgress
from streamer.app.report import ReportError, prepare_out_dir
from streamer.app.study import (
    DEFAULT_SWEEPS,
    Generator,
    Populations,
    StudyDirError,
    StudyPlan,
    Workspace,
    check_sweep,
    run_study,
    summarise,
    units,
)
from streamer.app.study_document import write_documents
from streamer.sources.appview import AppViewError

if TYPE_CHECKING:
    from streamer.core.followers import Followers
    from streamer.core.state import Snapshot, StateConfig

console = Console(stderr=True, soft_wrap=True)

# (seeds, bootstrap replicates, panel sizes, pieces) of a full study and of --quick
FULL = (3, 50, (10, 30, 100, 300, 1000, 3000, 10_000), (1, 2, 4, 8, 16))
QUICK = (3, 20, (10, 100, 1000), (1, 2, 4, 8))
QUICK_SWEEPS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("nodes", (16, 32)),
    ("cascade.kappa", (0.5, 2.0, 8.0)),
    ("generator.follower_exponent", (0.7, 1.1, 1.5)),
)
STUDY_SETTINGS = ATTRIBUTION_FIELDS | WINDOW_FIELDS | {"followers", "appview", "appview_cache"}


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{what} must be whole numbers >= 1, got {text!r}")
    return values


def _sweeps(texts: list[str] | None, quick: bool) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """``--sweep OPTION=V1,V2`` (repeatable; ``--sweep none`` for none), or the preset's."""
    if not texts:
        return QUICK_SWEEPS if quick else DEFAULT_SWEEPS
    if texts == ["none"]:
        return ()
    out = []
    for text in texts:
        option, sep, values = text.partition("=")
        try:
            if not sep:
                raise ValueError("expected OPTION=V1,V2,...")
            check_sweep(option.strip())
            numbers = tuple(float(v) for v in values.split(",") if v.strip())
            if not numbers or not all(math.isfinite(v) and v > 0 for v in numbers):
                raise ValueError("the values must be positive numbers")
        except ValueError as exc:
            raise typer.BadParameter(f"--sweep {text!r}: {exc}") from None
        out.append((option.strip(), numbers))
    return tuple(out)


def load_input(path: Path, settings: Any) -> tuple[kernels.Population, list[str] | None]:
    """Population 0 from a file, with the accounts' DIDs where the file has them: a population ``.npz``
    (``attribute --save``, ``replay --snapshot-out``), a checkpoint directory (its state at the checkpoint) or an
    archive (replayed to its end). Raises ValueError."""
    from streamer.core.followers import load_followers

    followers = load_followers(settings.followers) if settings.followers else None
    if path.is_dir() and (path / "state.npz").exists():
        from streamer.core.checkpoint import load_checkpoint

        loaded = load_checkpoint(path, followers)
        if loaded is None:
            raise ValueError(f"no checkpoint in {path}")
        snap = loaded[0].snapshot()
    elif path.is_file() and path.suffix == ".npz":
        from streamer.core.population import load_npz

        if followers is not None:
            raise ValueError("--followers applies to an archive or a checkpoint, not to a population .npz")
        pop = load_npz(path)
        with np.load(path, allow_pickle=False) as data:
            dids = [str(d) for d in data["dids"]] if "dids" in data.files else None
        return pop, dids
    else:
        return archive_population(path, settings.state(), followers)
    return _population(snap, path)


def is_archive(path: Path) -> bool:
    """Neither a checkpoint directory nor a population ``.npz``: what :func:`load_input` replays."""
    return not (path.is_dir() and (path / "state.npz").exists()) and not (path.is_file() and path.suffix == ".npz")


def archive_population(
    path: Path, state: StateConfig, followers: Followers | None
) -> tuple[kernels.Population, list[str]]:
    """The population at the end of ``path`` replayed with the window ``state``. Raises ValueError."""
    from streamer.app.replay import replay

    try:
        result = replay(path, config=state, followers=followers)
    except OSError as exc:
        raise ValueError(f"cannot read archive {path}: {exc}") from None
    if not result.report.readable:
        raise ValueError(f"nothing readable in {path}")
    return _population(result.state.snapshot(), path)


def window_population(path: Path, settings: Any, hours: float) -> kernels.Population:
    """The archive replayed with a window of ``hours`` (the sweep's ``window.hours``): as many of the settings'
    buckets as make it (one bucket of that width when it is shorter than a bucket), visibility as for the study."""
    from dataclasses import replace

    base = settings.state()
    buckets = max(1, round(hours / base.bucket_hours))
    width = hours if hours < base.bucket_hours else base.bucket_hours
    state = replace(base, bucket_hours=width, buckets=buckets)
    return archive_population(path, state, settings.follower_source())[0]


def _population(snap: Snapshot, path: Path) -> tuple[kernels.Population, list[str]]:
    if snap.graph is None or snap.graph.edges == 0:
        raise ValueError(f"{path} holds no attention edges in its window: nothing to study")
    x, visibility = np.asarray(snap.x, np.float64), np.asarray(snap.visibility, np.float64)
    return kernels.Population(x=x, visibility=visibility, graph=snap.graph), list(snap.dids)


def appview_visibility(
    pop: kernels.Population, dids: list[str], cfg: Any, url: str, cache: Path, bar: JobProgress
) -> tuple[kernels.Population, str]:
    """Population 0 with follower counts from the AppView as its visibility: asked for the candidates that can
    reach the head and middle tiers or the panel (:func:`streamer.sources.appview.candidates`), 0 for the others
    and for accounts the AppView no longer has. Returns the population and a sentence saying so."""
    from streamer.sources.appview import AppViewFollowers, AppViewVisibility

    fetch = AppViewFollowers(cache, url)
    task = bar.task("followers", total=None, unit="accounts", detail=f"getProfiles at {url}")
    source = AppViewVisibility(
        fetch, head=cfg.head, middle=cfg.middle, panel_size=cfg.panel_size,
        on_batch=lambda done, total: task.update(done, total=total),
    )  # fmt: skip
    visibility = source.visibility(dids, pop.visibility, pop.x)
    task.done()
    st = fetch.stats
    assert source.last is not None
    console.print(
        f"AppView {escape(url)}: {source.last.candidates:,} accounts, {st.asked:,} asked in {st.calls:,} calls, "
        f"{st.cached:,} from the cache, {st.rate_limited} rate-limited answer(s) waited out ({st.waited_s:.0f} s)",
        highlight=False,
    )
    return kernels.Population(x=pop.x, visibility=visibility, graph=pop.graph), source.describe()


@with_settings_options(include=STUDY_SETTINGS, check_finite=True)
def study_command(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Directory of the study (study.md/.html/.json, figures).")],
    population: Annotated[
        Path | None,
        typer.Argument(help="A population .npz, a checkpoint directory or an archive (default: --synthetic)."),
    ] = None,
    synthetic: Annotated[
        int | None, typer.Option(min=2, max=20_000_000, help="Study synthetic populations of this many agents.")
    ] = None,
    seeds: Annotated[int | None, typer.Option(min=1, max=1000, help="Synthetic populations (seeds 0, 1, ...).")] = None,
    bootstrap: Annotated[
        int | None, typer.Option(min=0, max=100_000, help="Vertex-bootstrap replicates of population 0.")
    ] = None,
    level: Annotated[float, typer.Option(min=0.5, max=0.999, help="Level of the intervals.")] = 0.95,
    indicators: Annotated[
        str | None, typer.Option(help="Comma-separated indicators (default: every registered one).")
    ] = None,
    panel_sizes: Annotated[str | None, typer.Option(help="Comma-separated panel sizes of the sweep.")] = None,
    pieces: Annotated[
        str | None, typer.Option(help="Comma-separated k of the Aumann–Shapley vs Shapley comparison ('' skips).")
    ] = None,
    edges_per_agent: Annotated[float, typer.Option(min=0.1, max=1000, callback=opt.finite)] = 8.0,
    follower_exponent: Annotated[
        float, typer.Option(min=0.05, max=10, callback=opt.finite, help="Pareto exponent of follower counts.")
    ] = 1.1,
    activity_exponent: Annotated[
        float, typer.Option(min=0.05, max=10, callback=opt.finite, help="Pareto exponent of activity.")
    ] = 1.6,
    inactive_fraction: Annotated[float, typer.Option(min=0, max=0.99, callback=opt.finite)] = 0.3,
    follower_scale: Annotated[
        float, typer.Option(min=0.01, max=1e6, callback=opt.finite, help="Scale of follower counts.")
    ] = 20.0,
    calibrated: Annotated[
        bool,
        typer.Option(
            help="Follower and activity exponents fitted to published Bluesky figures (docs/calibration.md)"
            " instead of the options'."
        ),
    ] = False,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            metavar="OPTION=V1,V2",
            help="Vary one option around the study (nodes, head, middle, <indicator>.<parameter>, "
            "generator.follower_exponent, ...); repeatable; 'none' for no sweep (default: a preset).",
        ),
    ] = None,
    epsilon: Annotated[
        float,
        typer.Option(
            min=0,
            max=0.5,
            callback=opt.finite,
            help="Target of the stratified panel: tier shares within this (0: none).",
        ),
    ] = 0.05,
    quick: Annotated[bool, typer.Option(help="Fewer replicates, panel sizes and pieces: minutes, not hours.")] = False,
    fresh: Annotated[bool, typer.Option(help="Discard a study already in DIR instead of resuming it.")] = False,
    config: opt.Config = None,
    progress: Annotated[
        bool, typer.Option(help="Progress on stderr: a bar on a terminal, else a line every 10 s.")
    ] = True,
    **flags: Any,
) -> None:
    """The paper's table for every indicator, with confidence intervals over agents (and over seeds for synthetic
    populations), the theorem's rows, a panel-size sweep and Aumann–Shapley vs exact Shapley on small games.

    Written into --out as study.md, study.html, study.json (every number) and figures. Each piece of work is kept
    as it is done: an interrupted study run again with the same options resumes where it stopped. The line naming
    the files written goes to stdout; progress and errors to stderr."""
    if population is not None and synthetic is not None:
        fail("give a population file or --synthetic N, not both")
    settings = load_or_exit(config, flags)
    cfg = settings.attribution()
    preset = QUICK if quick else FULL
    names = tuple(n.strip() for n in indicators.split(",") if n.strip()) if indicators else None
    names = names or tuple(kernels.available_indicators())
    for name in names:
        try:
            kernels.get_indicator(name, **(cfg.params if name == cfg.indicator else {}))
        except ValueError as exc:
            fail(str(exc))
    n_seeds = seeds if seeds is not None else preset[0]
    first = None
    window_hours: float | None = None
    window: Any = None
    visibility = "followers file" if settings.followers else "attention received in the window (the proxy)"
    if population is not None:
        try:
            first, dids = load_input(population, settings)
            if settings.appview is not None:
                if dids is None:
                    raise ValueError(f"{population} holds no DIDs: the AppView is asked by DID")
                with JobProgress(progress) as bar:
                    cache = settings.appview_cache.expanduser()
                    first, visibility = appview_visibility(first, dids, cfg, settings.appview, cache, bar)
        except (ValueError, AppViewError) as exc:
            fail(str(exc))
            return
        generator, seed_list, source = None, (), str(population)
        if is_archive(population):
            window_hours = settings.bucket_hours * settings.buckets

            def window(hours: float, path: Path = population) -> kernels.Population:
                return window_population(path, settings, hours)
    else:
        agents = synthetic if synthetic is not None else 20_000
        if settings.appview is not None:
            fail("--appview needs real accounts: a checkpoint, an archive or a population .npz with DIDs")
        generator = Generator(
            agents, edges_per_agent, follower_exponent, activity_exponent, inactive_fraction, follower_scale
        )
        if calibrated:
            from dataclasses import replace

            from kernels.synthetic import CALIBRATED

            generator = replace(generator, **CALIBRATED)
        visibility = "the generator's follower counts"
        seed_list, source = tuple(range(n_seeds)), f"synthetic, {agents:,} agents"
    if window_hours is None and any(t.strip().startswith("window.") for t in sweep or []):
        fail("--sweep window.hours replays an archive with each window: give the study an archive")
    plan = StudyPlan(
        indicators=names,
        source=source,
        generator=generator,
        seeds=seed_list,
        bootstrap=bootstrap if bootstrap is not None else preset[1],
        level=level,
        attribution={
            "nodes": cfg.nodes, "dtype": cfg.dtype, "head": cfg.head, "middle": cfg.middle,
            "panel_size": cfg.panel_size, "top_k": cfg.top_k, "rule": cfg.rule,
            "params": {cfg.indicator: dict(cfg.params)} if cfg.params else {},
        },
        panel_sizes=_ints(panel_sizes, "--panel-sizes") or preset[2],
        pieces=() if pieces == "" else (_ints(pieces, "--pieces") or preset[3]),
        sweeps=_sweeps(sweep, quick),
        visibility=visibility,
        epsilon=epsilon,
        window_hours=window_hours,
        stratified_draws=100 if quick else 200,
    )  # fmt: skip
    created = not out.exists()
    try:
        prepare_out_dir(out)
        workspace = Workspace(out, plan, fresh=fresh)
    except (ReportError, StudyDirError, OSError) as exc:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        fail(str(exc))
        return
    todo = units(plan)
    already = sum(workspace.done(u) for u in todo)
    if already:
        console.print(f"resuming the study in {escape(str(out))}: {already} of {len(todo)} units done", highlight=False)
    started = time.perf_counter()
    try:
        with JobProgress(progress) as bar:
            task = bar.task("study", total=len(todo), unit="units", detail=source)
            task.update(already)
            run_study(
                workspace, Populations(plan, first, window), on_unit=lambda u, done, _t: task.update(done, detail=u.key)
            )
            task.done()
    except KeyboardInterrupt:
        done = sum(workspace.done(u) for u in todo)
        console.print(
            f"interrupted: {done} of {len(todo)} units done and kept in {escape(str(out))}; run the same command "
            "again to resume",
            highlight=False,
        )
        raise typer.Exit(130) from None
    except ValueError as exc:
        fail(str(exc))
        return
    summary = summarise(workspace)
    summary["seconds_this_run"] = time.perf_counter() - started
    written = write_documents(summary, out)
    typer.echo(visible(f"wrote {len(written)} files to {out}: " + ", ".join(p.name for p in written)))


__all__ = ["load_input", "study_command"]
