"""Time to accuracy: what an attribution costs, in sparse mat-vecs of the same W, to reach a per-agent error.

    python -m benchmarks.accuracy                          # 1e5 and 1.67e6 agents, cascade and reach
    python -m benchmarks.accuracy --sizes 20000 --out DIR  # a subset; JSON and Markdown into DIR

Time per node says what a node costs; it does not say how many nodes an answer needs, and that differs by
indicator, rule and population. So, for each size (``kernels.heavy_tailed_population``, ~8 edges per agent, seed
0), indicator and rule, the float32 attribution at each node count is held against a float64 oracle (256 nodes of
that rule; the two rules' oracles agree to the figure printed) and timed (best of two calls after a first), and
every time is divided by one scipy CSR mat-vec of the same W (float32, one core, best of five, in the same
process): the ratios are the figures, the seconds vary 2-6x between runs on a shared machine.

The error is per agent, in the unit the product reports: max_i |phi_i - phi*_i| / sum_i |phi*_i| (each agent's
share of the phenomenon). "To 1e-4" is the fewest mat-vecs of a fixed node count whose error is within 1e-4 (a
count one would have to know beforehand) and, beside it, what the error-driven count (``tolerance=1e-4`` from 8
nodes: doubling until its own estimate is within it) costs and reaches without knowing it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import reports

SIZES = (100_000, 1_671_587)
INDICATORS = ("cascade", "reach")
RULES = ("uniform", "log-graded")
COUNTS = (4, 6, 8, 12, 16, 24, 32, 64)
TARGET = 1e-4
ORACLE_NODES = 256


def spmv_seconds(graph: Any, repeats: int = 5) -> float:
    """Best time of one scipy CSR W·x (float32, one core) on ``graph``."""
    import scipy.sparse as sp

    w = sp.csr_matrix(
        (graph.weight.astype(np.float32), (graph.attender, graph.source)), shape=(graph.n, graph.n), dtype=np.float32
    )
    x = np.random.default_rng(0).random(graph.n, dtype=np.float32)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        w @ x
        best = min(best, time.perf_counter() - start)
    return float(best)


def share_error(phi: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(phi - want)) / np.sum(np.abs(want)))


def timed(fn: Any) -> tuple[float, Any]:
    out = fn()
    best = np.inf
    for _ in range(2):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return float(best), out


def measure(n: int, indicators: list[str], counts: list[int], target: float) -> dict[str, Any]:
    import kernels

    pop = kernels.heavy_tailed_population(n, 8.0, seed=0)
    g = pop.graph
    spmv = spmv_seconds(g)
    row: dict[str, Any] = {"agents": n, "edges": g.edges, "spmv_ms": spmv * 1e3, "indicators": {}}
    for name in indicators:
        oracles = {r: kernels.attribute(name, pop.x, g, nodes=ORACLE_NODES, dtype="float64", rule=r) for r in RULES}
        want = oracles["uniform"].phi
        entry: dict[str, Any] = {"oracle_agreement": share_error(oracles["log-graded"].phi, want), "rules": {}}
        for rule in RULES:
            points = []
            for m in counts:
                seconds, a = timed(
                    lambda m=m, rule=rule, name=name: kernels.attribute(name, pop.x, g, nodes=m, rule=rule)
                )
                rel = float(np.linalg.norm(a.phi - want) / np.linalg.norm(want))
                points.append({"nodes": m, "spmv": seconds / spmv, "error": share_error(a.phi, want), "rel_l2": rel})
            met = [p for p in points if p["error"] <= target]
            seconds, a = timed(
                lambda rule=rule, name=name: kernels.attribute(name, pop.x, g, nodes=8, rule=rule, tolerance=target)
            )
            entry["rules"][rule] = {
                "points": points,
                "spmv_per_node": float(np.median([p["spmv"] / p["nodes"] for p in points])),
                "to_target": min(met, key=lambda p: p["spmv"]) if met else None,
                "search": {"nodes": a.nodes, "spmv": seconds / spmv, "error": share_error(a.phi, want)},
            }
        row["indicators"][name] = entry
        print(_line(n, name, entry, target), flush=True)
    return row


def _line(n: int, name: str, entry: dict[str, Any], target: float) -> str:
    parts = [f"n={n:,} {name}:"]
    for rule, r in entry["rules"].items():
        t = r["to_target"]
        fixed = "never" if t is None else f"{t['nodes']} nodes = {t['spmv']:.1f} SpMV"
        s = r["search"]
        parts.append(
            f"{rule} {r['spmv_per_node']:.2f} SpMV/node, to {target:g}: {fixed}; "
            f"search {s['nodes']} nodes = {s['spmv']:.1f} SpMV (error {s['error']:.1e})"
        )
    return "  ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    target = report["target"]
    lines = [
        f"{report['machine']} · JAX {report['jax']} · float32 · error = max_i |phi_i − phi*_i| / Σ|phi*| against "
        f"{ORACLE_NODES} float64 nodes · {report['date']}",
        "",
        f"| agents | indicator | rule | SpMV ms | SpMV per node | error at 8 / 16 / 32 nodes | "
        f"fewest SpMV to {target:g} (nodes) | error-driven from 8: SpMV (nodes, error) |",
        "|---:|---|---|---:|---:|---|---:|---:|",
    ]
    for row in report["rows"]:
        for name, entry in row["indicators"].items():
            for rule, r in entry["rules"].items():
                at = {p["nodes"]: p["error"] for p in r["points"]}
                errs = " / ".join(f"{at[m]:.1e}" if m in at else "–" for m in (8, 16, 32))
                t, s = r["to_target"], r["search"]
                fixed = "not reached" if t is None else f"{t['spmv']:.1f} ({t['nodes']})"
                lines.append(
                    f"| {row['agents']:,} | {name} | {rule} | {row['spmv_ms']:.2f} | {r['spmv_per_node']:.2f} | "
                    f"{errs} | {fixed} | {s['spmv']:.1f} ({s['nodes']}, {s['error']:.1e}) |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import platform

    import jax

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--indicators", nargs="+", default=list(INDICATORS))
    ap.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    ap.add_argument("--target", type=float, default=TARGET)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
        "jax": jax.__version__,
        "target": args.target,
        "rows": [measure(n, args.indicators, sorted(args.counts), args.target) for n in args.sizes],
    }
    reports.write(args.out, "accuracy", report, markdown(report))


if __name__ == "__main__":
    main()
