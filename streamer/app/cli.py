"""The ``skyattr`` command line: the app, its one-line usage errors, and the commands, registered in the order
a newcomer meets them (``replay`` first)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from typer.core import TyperGroup

import kernels
from streamer.app import options as opt
from streamer.app.daemon_commands import replay_command, run_command
from streamer.app.distributed_commands import attributor_command, worker_command
from streamer.app.flags import ATTRIBUTION_FIELDS, load_or_exit, with_settings_options
from streamer.app.help import Command
from streamer.app.ingest_commands import events_command
from streamer.app.ingest_kafka_command import ingest_command
from streamer.app.options import fail, plain
from streamer.app.pipes import StdoutConsole, reader_gone
from streamer.app.progress import JobProgress
from streamer.app.record import record_command
from streamer.app.relay_command import relay_command
from streamer.app.report import report_command
from streamer.app.study_command import study_command
from streamer.app.synth_command import synth_command
from streamer.app.terminal import figures_line, scale_table
from streamer.core.population import load_npz, save_npz, synthetic

console = Console(stderr=True, soft_wrap=True)
# click's exception classes as this typer uses them (typer >= 0.2x vendors its own copy of click)
_exc = sys.modules[typer.BadParameter.__module__]
_NoArgsIsHelp: type[Exception] = getattr(_exc, "NoArgsIsHelpError", type("NeverRaised", (Exception,), {}))

DESCRIPTION = """skyattr: watch the Bluesky firehose, attribute a macro indicator (a two-hop adoption cascade, say) to
every account and to tiers of accounts (head, middle, tail by visibility), and measure the scale bias of a
visibility panel: how far a study of the ~100 most-followed accounts would be from the full-scale answer.

Start with `skyattr replay`: it replays a bundled synthetic firehose archive (2,000 accounts, 24 h) through the
whole pipeline and prints one line per attribution and the tier table. `skyattr COMMAND --help` describes each
command.

Options come from their defaults, a --config YAML file, SKYATTR_* environment variables and flags, each
overriding the one before. Results (run lines, tables, JSON) go to stdout; progress, logs, warnings and errors
to stderr."""


class OneLineErrors(TyperGroup):
    """Usage errors (unknown option or command, bad or missing value, extra argument) as one ``error:`` line and
    exit 2, the same shape as every other bad input, instead of a framed panel."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp as exc:  # bare `skyattr`: the help, as before
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        except _exc.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "skyattr"
            console.print(
                f"[red]error:[/red] {plain(where)}: {plain(' '.join(exc.format_message().split()))} "
                f"(see {plain(where)} --help)",
                highlight=False,
            )
            sys.exit(exc.exit_code)
        except _exc.ClickException as exc:
            console.print(f"[red]error:[/red] {plain(' '.join(exc.format_message().split()))}", highlight=False)
            sys.exit(exc.exit_code)
        except typer.Abort:
            console.print("[red]aborted[/red]", highlight=False)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=DESCRIPTION,
    cls=OneLineErrors,
    rich_markup_mode=None,  # click's plain help: full option names at any width (see streamer.app.help)
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        try:
            version = metadata.version("skyattr")
        except metadata.PackageNotFoundError:  # run from a source tree that was never installed
            version = "unknown"
        typer.echo(f"skyattr {version}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


# The settings `attribute` reads (flags generated from Settings; also from --config and SKYATTR_*).
ATTRIBUTE_SETTINGS = ATTRIBUTION_FIELDS - {"top_k"}  # it prints tiers and figures, no top list


@with_settings_options(include=ATTRIBUTE_SETTINGS, check_finite=True)
def attribute(
    population: Annotated[
        Path | None, typer.Argument(help="An .npz with arrays x, visibility, attender, source, weight.")
    ] = None,
    agents: Annotated[
        int, typer.Option(min=1, max=20_000_000, help="Synthetic population size when no file is given.")
    ] = 100_000,
    edges_per_agent: Annotated[
        float, typer.Option(min=0, max=1000, callback=opt.finite, help="Synthetic attention edges per agent.")
    ] = 8.0,
    seed: Annotated[int, typer.Option(min=0, help="Synthetic population seed.")] = 0,
    config: opt.Config = None,
    save: Annotated[Path | None, typer.Option(help="Write the population used to this .npz.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    progress: Annotated[
        bool, typer.Option(help="Progress on stderr: a bar on a terminal, else a line every 10 s.")
    ] = True,
    **flags: Any,
) -> None:
    """Attribute INDICATOR over the whole population and over the top-visibility panel; report the gap.

    The table (or, with --json, one JSON object) goes to stdout. A million agents take a while to build and to
    attribute, so both show on stderr as they go, with a rate and an ETA: the population in edge steps (each edge
    drawn at both ends, then sorted into the graph), the attribution in quadrature nodes evaluated over the whole
    graph (the full attribution's and the same game's)."""
    if population is not None and (agents, edges_per_agent, seed) != (100_000, 8.0, 0):
        fail("--agents, --edges-per-agent and --seed make a synthetic population: not with a population file")
    cfg = load_or_exit(config, flags).attribution()
    nodes, dtype = cfg.nodes, cfg.dtype
    try:
        with JobProgress(progress) as bar:
            ind = kernels.get_indicator(cfg.indicator, **cfg.params)
            thresholds = cfg.thresholds
            if population is not None:
                loading = bar.task("population", 1, unit="file", detail=f"loading {population.name}", rate=False)
                pop = load_npz(population)
            else:
                loading = bar.task("population", unit="edge steps", detail=f"{agents:,} synthetic agents")
                pop = synthetic(
                    agents, edges_per_agent, seed, progress=lambda done, total: loading.update(done, total=total)
                )
            loading.done()
            if save:
                try:
                    save_npz(pop, save)
                except OSError as exc:  # a missing directory, a parent that is a file: one line, not a traceback
                    fail(f"cannot write the population to {save}: {exc.strerror or exc}")
            what = f"full and panel, {pop.graph.n:,} agents, {pop.graph.edges:,} edges"
            nodes_done = bar.task("attribution", unit="nodes", detail=what)
            start = time.perf_counter()
            st = kernels.scale_study(
                ind, pop.x, pop.graph, pop.visibility, nodes=nodes, dtype=dtype, head=cfg.head, middle=cfg.middle,
                panel_size=cfg.panel_size, estimate_error=cfg.estimate_error, rule=cfg.rule,
                tolerance=cfg.tolerance or None, progress=lambda done, total: nodes_done.update(done, total=total),
            )  # fmt: skip
            seconds = time.perf_counter() - start  # the study: the full population and the panel in both games
            nodes_done.done()
    except ValueError as exc:
        fail(str(exc))
        return
    from streamer.core.attribution import published_figures

    full, tiers = st.full, st.tiers
    figures = shares = decision = None
    if not st.nothing:
        figures, shares = published_figures({name: game.bias for name, game in st.games.items()})
        decision = kernels.decide_alert(st.games["same_game"].bias, thresholds)
    if json_out:
        # the field names and shapes of the skyattr.tiers message (streamer/schemas/tiers.schema.json), so one
        # reader serves both
        out = {
            "indicator": ind.name,
            "params": dict(ind.params),
            "outcome": "nothing_to_attribute" if st.nothing else "attributed",
            "agents": pop.graph.n,
            "active_agents": int(np.count_nonzero(pop.x)),
            "edges": pop.graph.edges,
            "value": full.value,
            "baseline": full.baseline,
            "residual": full.residual,
            "error_estimate": None if st.nothing else full.error_estimate,
            "error_max": None if st.nothing else full.error_max,
            "nodes": full.nodes,
            "rule": full.rule,
            "dtype": full.dtype,
            "tier_sizes": {name: int(np.sum(tiers == k)) for k, name in enumerate(kernels.TIER_NAMES)},
            "tiers": None if shares is None else shares.model_dump(mode="json"),
            "scale_bias": None if figures is None else figures.model_dump(mode="json"),
            "alert": {
                "active": bool(decision and decision.firing),
                "criteria": list(decision.criteria) if decision else [],
                "thresholds": cfg.as_dict()["thresholds"],
            },
            "runtime_s": seconds,
            "device": full.device,
            "config": {k: v for k, v in cfg.as_dict().items() if k != "top_k"},
        }
        sys.stdout.write(json.dumps(out) + "\n")
        return
    out = StdoutConsole(soft_wrap=True)  # stdout: the table is the result asked for
    if figures is None or shares is None or decision is None:
        out.print(
            f"{ind.name}: {pop.graph.n:,} agents, {pop.graph.edges:,} edges: {st.nothing} (no tier shares, no "
            f"scale-bias figures, no alert)"
        )
        return
    out.print(scale_table(f"{ind.name}: {pop.graph.n:,} agents, {pop.graph.edges:,} edges", None, shares, figures))
    error = "" if full.error_estimate is None else f"  error estimate={full.error_estimate:.1e}"
    out.print(
        f"v(x)={full.value:.6g}  residual={full.residual:.1e}{error}  {seconds:.2f}s on {full.device}\n"
        f"{figures_line(figures)}\nalert={'FIRING: ' + ', '.join(decision.criteria) if decision.firing else 'ok'}"
    )


STRUCTURES = (
    "structure: linear = v is c·x (exact attribution c_i x_i, the scale-bias reference); linear stem = v is a "
    "function of the exposures W x and of x (one Wᵀ product per quadrature node); generic = any JAX function of x "
    "(jax.grad at every node)"
)


def indicators() -> None:
    """List the registered indicators (built-in and entry points), one per line, tab-separated: name, structure
    (linear, linear stem or generic: a line on stderr says what each means), default parameters as JSON, and what
    the indicator measures."""
    for name in kernels.available_indicators():
        ind = kernels.get_indicator(name)
        stem = "linear" if ind.linear else "linear stem" if ind.linear_stem else "generic"
        typer.echo(f"{name}\t{stem}\t{json.dumps(dict(ind.params))}\t{ind.about or '(no description)'}")
    typer.echo(STRUCTURES, err=True)


# (name, function, the one line the command list shows), in the order a newcomer meets them.
COMMANDS = [
    ("replay", replay_command, "Replay an archive through the pipeline (start here)."),
    ("run", run_command, "Run live on a relay's firehose until SIGTERM."),
    ("attribute", attribute, "Attribute one population, full scale vs panel."),
    ("report", report_command, "Write a Markdown/HTML report of one attribution."),
    ("study", study_command, "The paper's table with intervals, theorem rows and sweeps."),
    ("synth", synth_command, "Write a synthetic firehose archive."),
    ("record", record_command, "Record a relay's firehose into an archive."),
    ("relay", relay_command, "Serve an archive as a local relay."),
    ("events", events_command, "Print an archive's events as JSON lines."),
    ("ingest", ingest_command, "Write a source's events to Kafka, exactly once."),
    ("worker", worker_command, "Fold Kafka events into partitioned state (distributed mode)."),
    ("attributor", attributor_command, "Attribute the workers' shards (distributed mode)."),
    ("indicators", indicators, "List the registered macro indicators."),
]
for _name, _fn, _line in COMMANDS:
    app.command(_name, cls=Command, short_help=_line)(_fn)


def main() -> None:
    np.seterr(all="ignore")
    try:
        app()
    except SystemExit as done:
        if done.code and reader_gone():  # `skyattr replay | head -1`: the reader has what it wanted
            raise SystemExit(0) from None
        raise
