"""The attribution kernels on an accelerator, against the same run's CPU: the table ``benchmarks/gpu.sh`` writes.

    python -m benchmarks.gpu --out DIR                       # 1e5, 1e6, 1.67e6, 1e7 agents x 8 edges each
    python -m benchmarks.gpu --out DIR --cpu --sizes 2000 5000   # the same script on the CPU, small (CI)

For each size a heavy-tailed population (``kernels.heavy_tailed_population``, ~8 edges per agent, seed 0) and, for
each indicator, on the default device: compile seconds (first call minus steady state), steady-state seconds (best
of ``--repeats`` later calls), the time per quadrature node against the time one node's sparse products need at the
device's measured copy bandwidth (cascade: a product with W and one with its transpose per node), the device's
peak memory and what the compiler planned for one pass (``kernels.memory.plan``), the graph's own bytes, and the
same attribution on the host CPU (sizes up to ``--cpu-max``) for the ratio: measured by this script run again
with ``--cpu`` in a process of its own (JAX picks its product path and keeps its device arrays per backend, so the
CPU's figures come from a process whose only backend is the CPU).
Sizes run in increasing order while the time spent stays under ``--budget`` seconds; a size left out is listed as
skipped. Writes ``gpu.json`` and ``gpu.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import reports

SIZES = (100_000, 1_000_000, 1_671_587, 10_000_000)
INDICATORS = ("cascade", "reach", "exposure")


def device_bandwidth(jax: Any, device: Any) -> float:
    """Bytes per second of a 256 MiB copy on ``device`` (read + write), best of 5."""
    jnp = jax.numpy
    with jax.default_device(device):
        a = jnp.ones(1 << 26, jnp.float32)
        copy = jax.jit(lambda v: v + 0.0)
        copy(a).block_until_ready()
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            copy(a).block_until_ready()
            best = min(best, time.perf_counter() - start)
    return 2 * a.nbytes / best


def peak_bytes(device: Any) -> int | None:
    """The device allocator's high-water mark (None where the backend keeps none, as the CPU's)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def measure(sizes: list[int], indicators: list[str], nodes: int, repeats: int, budget_s: float) -> dict:
    import jax

    import kernels
    from benchmarks.kernels import spmv_bytes, steady

    device = jax.devices()[0]
    bandwidth = device_bandwidth(jax, device)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.node(),
        "device": f"{device.platform}: {device.device_kind}",
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "nodes": nodes,
        "copy_bandwidth_gbs": bandwidth / 1e9,
        "rows": [],
        "skipped": [],
    }
    started = time.perf_counter()
    for n in sorted(sizes):
        if time.perf_counter() - started > budget_s:
            report["skipped"].append(n)
            continue
        made = time.perf_counter()
        pop = kernels.heavy_tailed_population(n, 8.0, seed=0)
        g = pop.graph
        row: dict[str, Any] = {"agents": n, "edges": g.edges, "build_s": time.perf_counter() - made, "indicators": {}}
        row["graph_bytes"] = int(g.attender.nbytes + g.source.nbytes + g.weight.nbytes)
        bound_s = 2 * spmv_bytes(n, g.edges) / bandwidth  # one node of cascade: W and W^T, float32
        for name in indicators:
            first, best, out = steady(
                lambda name=name, pop=pop, g=g: kernels.attribute(name, pop.x, g, nodes=nodes), repeats
            )
            entry = {
                "compile_s": first - best,
                "steady_s": best,
                "node_ms": best / out.nodes * 1e3,
                "bound_node_ms": bound_s * 1e3,
                "products": out.products,
                "device": out.device,
                "residual": out.residual,
            }
            row["indicators"][name] = entry
        row["peak_device_bytes"] = peak_bytes(device)
        from kernels.memory import plan

        # what the compiler says one pass of the first indicator needs, beside the peak the device reports
        row["planned_device_bytes"] = plan(n, g.edges, indicators[0], nodes).total
        report["rows"].append(row)
        print(_row_line(row), flush=True)
    return report


def _row_line(row: dict[str, Any]) -> str:
    parts = [f"n={row['agents']:,} edges={row['edges']:,}"]
    for name, e in row["indicators"].items():
        parts.append(
            f"{name} {e['steady_s'] * 1e3:.1f} ms ({e['node_ms']:.2f} ms/node, bound {e['bound_node_ms']:.2f})"
        )
    return "  ".join(parts)


def with_cpu(report: dict[str, Any], cpu: dict[str, Any]) -> None:
    """The CPU run's steady times beside the device's, and their ratio."""
    by_size = {row["agents"]: row for row in cpu["rows"]}
    for row in report["rows"]:
        other = by_size.get(row["agents"])
        for name, e in row["indicators"].items():
            if other is not None and name in other["indicators"]:
                e["cpu_steady_s"] = other["indicators"][name]["steady_s"]
                e["cpu_products"] = other["indicators"][name]["products"]
                e["cpu_over_device"] = e["cpu_steady_s"] / e["steady_s"]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['device']} · JAX {report['jax']} · {report['nodes']} nodes, float32 · copy bandwidth "
        f"{report['copy_bandwidth_gbs']:.0f} GB/s · host {report['cpu']} · {report['machine']}, {report['date']}",
        "",
        "| agents | edges | indicator | compile s | steady ms | ms per node | cascade's bound ms per node | × bound | "
        "peak device MB | planned MB | CPU steady ms | CPU ÷ device |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        peak = row["peak_device_bytes"]
        peak_mb = "–" if peak is None else f"{peak / 2**20:,.0f}"
        planned_mb = f"{row['planned_device_bytes'] / 2**20:,.0f}"
        for name, e in row["indicators"].items():
            cpu = e.get("cpu_steady_s")
            cpu_ms = "–" if cpu is None else f"{cpu * 1e3:.0f}"
            ratio = "–" if cpu is None else f"{e['cpu_over_device']:.1f}"
            lines.append(
                f"| {row['agents']:,} | {row['edges']:,} | {name} | {e['compile_s']:.2f} | {e['steady_s'] * 1e3:.1f} | "
                f"{e['node_ms']:.3f} | {e['bound_node_ms']:.3f} | {e['node_ms'] / e['bound_node_ms']:.1f} | "
                f"{peak_mb} | {planned_mb} | {cpu_ms} | {ratio} |"
            )
    if report["skipped"]:
        lines += ["", f"Skipped (over the time budget): {', '.join(f'{n:,}' for n in report['skipped'])} agents."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--indicators", nargs="+", default=list(INDICATORS))
    ap.add_argument("--nodes", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-max", type=int, default=1_671_587, help="largest size also run on the host CPU")
    ap.add_argument("--budget", type=float, default=400.0, help="seconds after which larger sizes are skipped")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (no accelerator expected)")
    args = ap.parse_args(argv)
    if args.cpu:
        os.environ["JAX_PLATFORMS"] = "cpu"
    report = measure(args.sizes, args.indicators, args.nodes, args.repeats, args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    on_cpu = [n for n in args.sizes if n <= args.cpu_max]
    if not args.cpu and on_cpu and report["rows"]:
        cpu_out = args.out / "cpu"
        cmd = [sys.executable, "-m", "benchmarks.gpu", "--cpu", "--out", str(cpu_out), "--repeats", "1",
               "--nodes", str(args.nodes), "--sizes", *map(str, on_cpu), "--indicators", *args.indicators]  # fmt: skip
        done = subprocess.run(cmd, env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)
        if done.returncode == 0:
            with_cpu(report, json.loads((cpu_out / "gpu.json").read_text()))
        else:
            print(f"the CPU run failed (exit {done.returncode}): the table has no CPU column", flush=True)
    reports.write(args.out, "gpu", report, markdown(report))


if __name__ == "__main__":
    main()
