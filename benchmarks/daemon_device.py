"""The attributor's device across a daemon's runs: memory that stays bounded, and the first run after a restart.

    python -m benchmarks.daemon_device --out DIR                         # 10^5 agents; 10^6 for the restart
    python -m benchmarks.daemon_device --out DIR --agents 3000 --runs 9 --restart-agents 3000   # small (CI)

Both measurements run the daemon's own run function (:func:`streamer.core.attribution.measure`: the full
population and the panel in both games, the error estimate, the stratified panel) in fresh child processes, since
JAX keeps compiled kernels and device arrays per process:

* **runs**: ``--runs`` runs on windows whose population moves by up to ±10 % from one run to the next (a random
  walk around ``--agents``, seed 0, ~8 edges per account), as a live window does. After each run: the bytes the
  device holds (its allocator's bytes in use where it keeps them, as a GPU's; else the bytes of JAX's live arrays),
  the process's resident memory, and the backend compilations so far. Bounded means the device holds nothing of
  a run once the run is over (each graph's padded device copy goes with the graph) and compilations stop once the
  size buckets the walk visits are all met, so the last third of the runs holds no more than the first.
* **restart**: the first run in a fresh process with an empty compilation cache (a pod without the cache), the
  first run of a second fresh process sharing that cache (a restarted pod), and a second run in the same process
  (the steady state), at ``--restart-agents``; with the compilations (kernels not found in the cache) and cache
  hits of each. On a CPU, graphs from 2^20 edges take the host products, whose kernels cannot be cached.

Prints both tables and writes ``daemon_device.json`` and ``daemon_device.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import reports

CHILD = r"""
import json, os, sys, time
import numpy as np

args = json.loads(sys.argv[1])
import jax
import kernels
from kernels.graph import bucket

compiles, hits = [0], [0]  # backend compilations, a kernel loaded from the cache included; cache hits


def on_duration(name, secs, **kw):
    compiles[0] += name == "/jax/core/compile/backend_compile_duration"


def on_event(name, **kw):
    hits[0] += name == "/jax/compilation_cache/cache_hits"


jax.monitoring.register_event_duration_secs_listener(on_duration)
jax.monitoring.register_event_listener(on_event)
kernels.use_compilation_cache(args["cache"])
import psutil
from streamer.core.attribution import AttributionConfig, measure
from streamer.core.state import Snapshot

device = jax.devices()[0]
config = AttributionConfig()


def held() -> int:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_in_use" in stats:
        return int(stats["bytes_in_use"])
    return sum(a.nbytes for a in jax.live_arrays())


def snapshot(n: int, seed: int) -> Snapshot:
    pop = kernels.heavy_tailed_population(n, 8.0, seed=seed)
    dids = [f"did:plc:{i:024d}" for i in range(n)]
    return Snapshot(pop.x, pop.visibility, pop.graph, dids, 0, 0, n)


def run(n: int, seed: int) -> dict:
    snap = snapshot(n, seed)
    start = time.perf_counter()
    out = measure(snap, config)
    seconds = time.perf_counter() - start
    del snap, out
    return {"agents": n, "bucket": bucket(n), "seconds": seconds, "device_bytes": held(),
            "rss_bytes": psutil.Process().memory_info().rss, "compiles": compiles[0] - hits[0], "cache_hits": hits[0]}

if args["mode"] == "runs":
    rng = np.random.default_rng(0)
    n = args["agents"]
    rows = []
    for k in range(args["runs"]):
        rows.append(run(n, k))
        n = int(min(max(n * (1 + rng.uniform(-0.1, 0.1)), 0.7 * args["agents"]), 1.3 * args["agents"]))
    print(json.dumps({"device": str(device.device_kind), "rows": rows}))
else:
    first, second = run(args["agents"], 0), run(args["agents"], 1)
    print(json.dumps({"device": str(device.device_kind), "first": first, "second": second}))
"""


def child(args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One fresh process running :data:`CHILD` with ``args``; its JSON line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYATTR_")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env, timeout=timeout
    )
    if done.returncode != 0:
        raise SystemExit(f"the child process failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def runs_table(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [
        "| run | agents | size bucket | seconds | device MB held after | resident MB | compilations so far |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, r in enumerate(rows, start=1):
        lines.append(
            f"| {k} | {r['agents']:,} | {r['bucket']:,} | {r['seconds']:.2f} | {r['device_bytes'] / 2**20:.2f} | "
            f"{r['rss_bytes'] / 2**20:,.0f} | {r['compiles']} |"
        )
    return "\n".join(lines)


def restart_table(report: dict[str, Any]) -> str:
    lines = [
        "| process | first run s | compilations | cache hits | second run s (steady) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key in (("fresh, empty cache", "cold"), ("restarted, same cache", "warm"), ("cache off", "off")):
        r = report[key]
        lines.append(
            f"| {label} | {r['first']['seconds']:.2f} | {r['first']['compiles']} | {r['first']['cache_hits']} | "
            f"{r['second']['seconds']:.2f} |"
        )
    return "\n".join(lines)


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the runs show: the device bytes held after the runs of each third, and the compilations of each."""
    rows = report["runs"]["rows"]
    third = max(len(rows) // 3, 1)
    first, last = rows[:third], rows[-third:]
    buckets = len({r["bucket"] for r in rows})
    return {
        "held_first_third_max": max(r["device_bytes"] for r in first),
        "held_last_third_max": max(r["device_bytes"] for r in last),
        "compiles_first_third": first[-1]["compiles"],
        "compiles_last_third": last[-1]["compiles"] - rows[-third - 1]["compiles"] if len(rows) > third else 0,
        "buckets": buckets,
        "restart_first_over_steady": report["restart"]["warm"]["first"]["seconds"]
        / report["restart"]["warm"]["second"]["seconds"],
        "cold_first_over_steady": report["restart"]["cold"]["first"]["seconds"]
        / report["restart"]["cold"]["second"]["seconds"],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--agents", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--restart-agents", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for each child process")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "agents": args.agents}
    report["runs"] = child({"mode": "runs", "agents": args.agents, "runs": args.runs, "cache": None}, args.timeout)
    with tempfile.TemporaryDirectory(prefix="skyattr-jax-cache-") as cache:
        restart = {"mode": "restart", "agents": args.restart_agents, "cache": cache}
        report["restart"] = {
            "agents": args.restart_agents,
            "cold": child(restart, args.timeout),
            "warm": child(restart, args.timeout),
            "off": child({**restart, "cache": None}, args.timeout),
        }
    report["device"] = report["runs"]["device"]
    report["summary"] = summary(report)
    report["seconds"] = time.perf_counter() - started
    text = (
        f"{report['device']}, {report['date']}\n\nRuns on a window moving ±10 % around {args.agents:,} agents:\n\n"
        f"{runs_table(report['runs'])}\n\nThe first run after a restart, {args.restart_agents:,} agents:\n\n"
        f"{restart_table(report['restart'])}\n\n{json.dumps(report['summary'])}\n"
    )
    reports.write(args.out, "daemon_device", report, text)


if __name__ == "__main__":
    main()
