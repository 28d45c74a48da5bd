"""Command line: ``skyattr attribute`` runs one full-scale vs panel attribution and prints the scale-bias table."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

import kernels
from streamer.app import options as opt
from streamer.app.daemon_commands import replay_command, run_command
from streamer.app.flags import ATTRIBUTION_FIELDS, load_or_exit, with_settings_options
from streamer.app.ingest_commands import events_command
from streamer.app.options import plain
from streamer.app.record import record_command
from streamer.app.relay_command import relay_command
from streamer.app.report import report_command
from streamer.app.synth_command import synth_command
from streamer.core.population import load_npz, save_npz, synthetic

console = Console(stderr=True, soft_wrap=True)
# click's exception classes as this typer uses them (typer >= 0.2x vendors its own copy of click)
_exc = sys.modules[typer.BadParameter.__module__]
_NoArgsIsHelp: type[Exception] = getattr(_exc, "NoArgsIsHelpError", type("NeverRaised", (Exception,), {}))


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


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, cls=OneLineErrors)


@app.callback()
def _root() -> None:
    """skyattr: which accounts, and which tiers of accounts, cause a macro phenomenon."""


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {plain(message)}", highlight=False)
    raise typer.Exit(2)


# The settings `attribute` reads (flags generated from Settings; also from --config and SKYATTR_*).
ATTRIBUTE_SETTINGS = ATTRIBUTION_FIELDS - {"top_k"}  # it prints tiers and figures, no top list


@app.command()
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
    **flags: Any,
) -> None:
    """Attribute INDICATOR over the whole population and over the top-visibility panel; report the gap."""
    cfg = load_or_exit(config, flags).attribution()
    nodes, dtype = cfg.nodes, cfg.dtype
    try:
        ind = kernels.get_indicator(cfg.indicator, **cfg.params)
        thresholds = cfg.thresholds
        pop = load_npz(population) if population else synthetic(agents, edges_per_agent, seed)
        if save:
            save_npz(pop, save)
        start = time.perf_counter()
        full = kernels.attribute(ind, pop.x, pop.graph, nodes=nodes, dtype=dtype)
        seconds = time.perf_counter() - start  # the full-population attribution only, as before
        tiers = kernels.assign_tiers(pop.visibility, head=cfg.head, middle=cfg.middle)
        panel = kernels.select_panel(pop.visibility, pop.x, size=cfg.panel_size)
        if panel.size == 0:
            _fail("no active agents: the panel is empty")
        panel_attr = kernels.panel_attribution(ind, pop.x, pop.graph, panel, nodes=nodes, dtype=dtype)
        bias = kernels.scale_bias(full, panel, panel_attr, tiers)
    except ValueError as exc:
        _fail(str(exc))
        return
    alert = bias.alert(thresholds)
    if json_out:
        # the field names and shapes of the skyattr.tiers message (streamer/schemas/tiers.schema.json), so one
        # reader serves both
        figures = bias.as_dict()
        shares = {
            scale: dict(zip(kernels.TIER_NAMES, figures.pop(f"tiers_{scale}"), strict=True))
            for scale in ("full", "panel")
        }
        out = {
            "indicator": ind.name,
            "params": dict(ind.params),
            "agents": pop.graph.n,
            "active_agents": int(np.count_nonzero(pop.x)),
            "edges": pop.graph.edges,
            "value": full.value,
            "baseline": full.baseline,
            "residual": full.residual,
            "nodes": full.nodes,
            "dtype": full.dtype,
            "tier_sizes": {name: int(np.sum(tiers == k)) for k, name in enumerate(kernels.TIER_NAMES)},
            "tiers": shares,
            "scale_bias": figures,
            "alert": {"active": bool(alert), "thresholds": cfg.as_dict()["thresholds"]},
            "runtime_s": seconds,
            "device": full.device,
            "config": {k: v for k, v in cfg.as_dict().items() if k != "top_k"},
        }
        sys.stdout.write(json.dumps(out) + "\n")
        return
    table = Table(title=f"{ind.name}: {pop.graph.n:,} agents, {pop.graph.edges:,} edges")
    table.add_column("tier")
    table.add_column("full", justify="right")
    table.add_column(f"panel ({bias.panel_size})", justify="right")
    for name, f, p in zip(kernels.TIER_NAMES, bias.tiers_full, bias.tiers_panel, strict=True):
        table.add_row(name, f"{f:.3f}", f"{p:.3f}")
    Console().print(table)
    Console().print(
        f"v(x)={full.value:.6g}  residual={full.residual:.1e}  {seconds:.2f}s on {full.device}\n"
        f"TVD={bias.tvd:.3f}  r*={bias.residual:.3f}  c*={bias.rescale:.3g}  panel share={bias.panel_share:.3f}  "
        f"spearman={bias.spearman:.2f}  top10 full/panel={bias.top10_full:.2f}/{bias.top10_panel:.2f}  "
        f"alert={'FIRING' if alert else 'ok'}"
    )


@app.command()
def indicators() -> None:
    """List the registered indicators (built-in and entry points)."""
    for name in kernels.available_indicators():
        ind = kernels.get_indicator(name)
        stem = "linear stem" if ind.linear_stem else "generic"
        typer.echo(f"{name}\t{stem}\t{json.dumps(dict(ind.params))}")


# Commands defined in other modules are registered here, one line each.
app.command("run")(run_command)
app.command("replay")(replay_command)
app.command("events")(events_command)
app.command("relay")(relay_command)
app.command("record")(record_command)
app.command("synth")(synth_command)
app.command("report")(report_command)


def main() -> None:
    np.seterr(all="ignore")
    app()
