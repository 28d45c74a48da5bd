"""Attribution speed and memory, and the speed ratio against permutation-sampled Shapley at equal accuracy.

    python -m benchmarks.kernels                      # the full table (n = 1e3 ... 1.67e6)
    python -m benchmarks.kernels --sizes 1000 10000   # a subset
    python -m benchmarks.kernels --markdown out.md    # also write the tables as Markdown

Populations are synthetic and heavy-tailed (``kernels.heavy_tailed_population``, ~8 edges per agent, seed 0).

* compile = first call minus steady state; steady = best of ``--repeats`` calls after the first.
* peak RSS is the process's high-water mark after that size (sizes run in increasing order).
* Equal accuracy (5% relative L2 error, each method against its own target):
  - path integral: the fewest Gauss–Legendre nodes (1, 2, 4, ...) at which ``reach`` is within 5% of its closed
    form; its time is the steady time at that node count;
  - sampled Shapley: pilot permutations give the per-permutation variance of every agent's marginal (independent
    permutations), so P* = P_pilot * (err_pilot / 0.05)^2 permutations reach 5%; its time is P* times the measured
    time per permutation. Both modes (``blackbox``, ``incremental``) are measured at n = 1e3 and 1e4; beyond that
    the cost per permutation is extrapolated (blackbox ~ n * |W|, incremental ~ |W|) with P* held at its n = 1e4
    value, and the table marks those rows as extrapolated.
* time per quadrature node is compared with the memory-bandwidth bound: the bytes one sparse product must touch
  (indices, weights, the gathered and scattered vectors) over the measured copy bandwidth of this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from dataclasses import dataclass, field

import jax
import numpy as np
from rich.console import Console
from rich.table import Table

import kernels

SIZES = (1_000, 10_000, 100_000, 1_000_000, 1_671_587)
INDICATORS = ("reach", "cascade", "saturation")
TARGET = 0.05
SHAPLEY_MEASURED = (1_000, 10_000)
console = Console(width=160)


@dataclass
class Row:
    n: int
    edges: int
    times: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # indicator -> compile, steady, res
    rss_gib: float = 0.0
    node_ms: float = 0.0
    bound_ms: float = 0.0
    ratio: dict[str, tuple[float, bool]] = field(default_factory=dict)  # mode -> ratio, measured?
    as_nodes: int = 0
    as_seconds: float = 0.0


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def copy_bandwidth() -> float:
    """Bytes per second of a large array copy (read + write), best of 5."""
    src = np.ones(1 << 26, np.float32)  # 256 MiB
    dst = np.empty_like(src)
    best = np.inf
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def spmv_bytes(n: int, edges: int, itemsize: int = 4) -> int:
    """Bytes one e = W x product touches at least: attender, source, weight and the gathered x per edge, plus
    reading x and writing e once."""
    return edges * (4 + 4 + itemsize + itemsize) + 2 * n * itemsize


def steady(fn, repeats: int) -> tuple[float, float, object]:
    """(first call, best later call, last result)."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return first, best, out


def path_integral_to_target(pop: kernels.Population, repeats: int) -> tuple[int, float]:
    exact = kernels.reach_closed_form(pop.x, pop.graph)
    for m in (1, 2, 4, 8, 16, 32, 64):
        _, best, out = steady(lambda m=m: kernels.attribute("reach", pop.x, pop.graph, nodes=m), repeats)
        err = np.linalg.norm(out.phi - exact) / np.linalg.norm(exact)
        if err <= TARGET:
            return m, best
    raise RuntimeError("path integral did not reach 5% with 64 nodes")


def sampled_to_target(pop: kernels.Population, mode: str, budget_s: float) -> tuple[float, float, int]:
    """(seconds to 5%, seconds per permutation, pilot permutations)."""
    kernels.sampled_shapley("reach", pop.x, pop.graph, permutations=2, seed=99, mode=mode)  # compile / warm up
    pilot = 2
    while True:
        est = kernels.sampled_shapley("reach", pop.x, pop.graph, permutations=pilot, seed=1, mode=mode)
        per_perm = est.seconds / pilot
        if est.seconds > budget_s / 4 or pilot >= 256:
            break
        pilot *= 4
    needed = pilot * (est.relative_error / TARGET) ** 2
    return needed * per_perm, per_perm, pilot


def run(sizes: list[int], indicators: list[str], nodes: int, repeats: int, budget_s: float) -> list[Row]:
    bandwidth = copy_bandwidth()
    console.print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores); copy bandwidth {bandwidth / 1e9:.1f} GB/s; {nodes} nodes, float32"
    )
    rows: list[Row] = []
    shapley_ref: dict[str, tuple[float, float, int, int]] = {}  # mode -> seconds/perm, P*, n, edges at 1e4
    for n in sorted(sizes):
        pop = kernels.heavy_tailed_population(n, 8.0, seed=0)
        row = Row(n=n, edges=pop.graph.edges)
        for name in indicators:
            first, best, out = steady(
                lambda name=name, pop=pop: kernels.attribute(name, pop.x, pop.graph, nodes=nodes), repeats
            )
            row.times[name] = (first - best, best, out.residual)
            if name == "cascade":
                row.node_ms = best / nodes * 1e3
                # cascade: two sparse products per node (W a in the forward pass, W^T in the backward pass)
                row.bound_ms = 2 * spmv_bytes(pop.graph.size, pop.graph.edges) / bandwidth * 1e3
        row.as_nodes, row.as_seconds = path_integral_to_target(pop, repeats)
        for mode in ("blackbox", "incremental"):
            if n in SHAPLEY_MEASURED:
                t_target, per_perm, pilot = sampled_to_target(pop, mode, budget_s)
                row.ratio[mode] = (t_target / row.as_seconds, True)
                shapley_ref[mode] = (per_perm, t_target / per_perm, n, pop.graph.edges)
                console.print(
                    f"  n={n:,} {mode}: {pilot} pilot permutations, {per_perm:.3g} s each, "
                    f"P*={t_target / per_perm:,.0f} to 5%; path integral {row.as_nodes} nodes {row.as_seconds:.3g} s"
                )
            elif mode in shapley_ref:
                per_perm, p_star, n0, e0 = shapley_ref[mode]
                scale = (n / n0) * (pop.graph.edges / e0) if mode == "blackbox" else pop.graph.edges / e0
                row.ratio[mode] = (per_perm * scale * p_star / row.as_seconds, False)
        row.rss_gib = peak_rss_gib()
        rows.append(row)
        print_row(row, indicators)
    return rows


def print_row(row: Row, indicators: list[str]) -> None:
    parts = [f"n={row.n:,} edges={row.edges:,}"]
    for name in indicators:
        c, s, r = row.times[name]
        parts.append(f"{name} {s:.3f}s (compile {c:.2f}s, res {r:.1e})")
    console.print("  " + "; ".join(parts) + f"; peak RSS {row.rss_gib:.2f} GiB")


def _ratio(row: Row, mode: str) -> str:
    if mode not in row.ratio:
        return "-"
    value, measured = row.ratio[mode]
    return f"{value:.2e}" + ("" if measured else " (extrap.)")


def table(rows: list[Row], indicators: list[str]) -> Table:
    t = Table(title="Aumann–Shapley attribution (steady-state seconds; compile seconds in brackets)")
    t.add_column("agents", justify="right")
    t.add_column("edges", justify="right")
    for name in indicators:
        t.add_column(name, justify="right")
    t.add_column("peak RSS GiB", justify="right")
    t.add_column("ms/node (bound)", justify="right")
    t.add_column("AS to 5%", justify="right")
    t.add_column("× blackbox Shapley", justify="right")
    t.add_column("× incremental Shapley", justify="right")
    for r in rows:
        t.add_row(
            f"{r.n:,}",
            f"{r.edges:,}",
            *[f"{r.times[name][1]:.3g} ({r.times[name][0]:.2f})" for name in indicators],
            f"{r.rss_gib:.2f}",
            f"{r.node_ms:.3g} ({r.bound_ms:.3g})" if r.node_ms else "-",
            f"{r.as_seconds * 1e3:.1f} ms @{r.as_nodes}",
            _ratio(r, "blackbox"),
            _ratio(r, "incremental"),
        )
    return t


def markdown(rows: list[Row], indicators: list[str]) -> str:
    head = ["agents", "edges", *[f"{n} s (compile s)" for n in indicators], "peak RSS GiB"]
    head += ["ms/node cascade (bandwidth bound)", "AS to 5% (nodes)", "× blackbox", "× incremental"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r.n:,}", f"{r.edges:,}"]
        cells += [f"{r.times[n][1]:.3g} ({r.times[n][0]:.2f})" for n in indicators]
        cells += [f"{r.rss_gib:.2f}", f"{r.node_ms:.3g} ({r.bound_ms:.3g})"]
        cells += [f"{r.as_seconds * 1e3:.1f} ms ({r.as_nodes})", _ratio(r, "blackbox"), _ratio(r, "incremental")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--indicators", nargs="+", default=list(INDICATORS))
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapley-budget", type=float, default=60.0, help="seconds of pilot sampling per mode")
    parser.add_argument("--markdown", help="also write the table as Markdown to this file")
    args = parser.parse_args()
    np.seterr(all="ignore")
    rows = run(args.sizes, args.indicators, args.nodes, args.repeats, args.shapley_budget)
    console.print(table(rows, args.indicators))
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(markdown(rows, args.indicators))


if __name__ == "__main__":
    main()
