"""End-to-end replay speed: the README's first command, and a large archive against its ingest-only rate.

``python -m benchmarks.replay --baseline DIR`` times, in one run and alternately, this tree and ``DIR`` (a
``git worktree`` of the release to compare with, sharing this venv):

* **bundled**: ``skyattr replay --quiet --no-progress`` of the bundled archive, the whole process (interpreter start,
  imports, JAX, compilation, ingest, every attribution run, the final table). This tree is timed twice: with an
  empty compilation cache (a fresh machine) and with the cache the previous run left (every later run).
* **large** (``--agents``, default 100,000 accounts over ``--hours`` 24): a synthetic archive written once into
  ``--work-dir``, replayed in a child process with no attribution (ingest only: decode, seq judge, dispatcher,
  state) and with the default attribution every 300 s of event time; the figure is events/s and the ratio of the
  two rates.

Each measurement runs in its own process so no tree sees the other's imports or compilations. Figures are printed
as a markdown table and written as JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

LARGE_CHILD = r"""
import json, sys, time
from streamer.app.replay import replay
from streamer.core.attribution import AttributionConfig
path, attribute = sys.argv[1], sys.argv[2] == "1"
kw = {"attribution": AttributionConfig(), "interval_s": 300.0} if attribute else {}
runs = []
start = time.perf_counter()
r = replay(path, deliver=lambda res: runs.append(1), **kw)
seconds = time.perf_counter() - start
print(json.dumps({"events": r.state.events, "seconds": seconds, "runs": r.runs, "agents": len(r.state.dids)}))
"""


def _env(tree: Path, cache: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYATTR_")}
    env["PYTHONPATH"] = str(tree)
    env["SKYATTR_METRICS_PORT"] = "0"
    if cache is not None:  # the baseline tree predates the setting: it keeps its own default
        env["SKYATTR_COMPILATION_CACHE"] = str(cache)
    return env


def bundled_once(tree: Path, cache: Path | None) -> float:
    """Wall seconds of one ``skyattr replay --quiet --no-progress`` of the bundled archive in ``tree``."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "streamer", "replay", "--quiet", "--no-progress"],
        cwd=tree,
        env=_env(tree, cache),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"replay in {tree} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def large_once(tree: Path, archive: Path, attribute: bool, cache: Path | None) -> dict[str, float]:
    """Events/s of the large archive replayed in ``tree``, with or without attribution."""
    proc = subprocess.run(
        [sys.executable, "-c", LARGE_CHILD, str(archive), "1" if attribute else "0"],
        cwd=tree,
        env=_env(tree, cache),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"large replay in {tree} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["rate"] = out["events"] / out["seconds"]
    return out


def large_archive(work: Path, agents: int, hours: float) -> Path:
    """The large synthetic archive, written once and reused (synth output is byte-identical for a seed)."""
    path = work / f"synth-{agents}-{hours:g}h.skyarch.zst"
    if not path.exists():
        from streamer.testing.synth import write_synth_archive

        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        res = write_synth_archive(path, agents, hours, 0)
        print(f"wrote {path} ({res.frames:,} frames) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="tree of the release to compare with (a git worktree)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--agents", type=int, default=100_000)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--skip-bundled", action="store_true")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "skyattr-bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    trees = [("this code", HERE)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    report: dict[str, object] = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "date": time.ctime()}
    if not args.skip_bundled:
        times: dict[str, list[float]] = {"baseline": [], "cold cache": [], "warm cache": []}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeat):
                cold = Path(tmp) / f"cold{i}"
                times["cold cache"].append(bundled_once(HERE, cold))
                times["warm cache"].append(bundled_once(HERE, cold))
                if args.baseline:
                    times["baseline"].append(bundled_once(args.baseline.resolve(), None))
        med = {k: statistics.median(v) for k, v in times.items() if v}
        report["bundled"] = {"seconds": times, "median": med}
        print("\n| bundled replay, whole process | median s | runs (s) | × baseline |\n|---|---|---|---|")
        for k, v in times.items():
            if v:
                ratio = f"{med['baseline'] / med[k]:.1f}× faster" if "baseline" in med and k != "baseline" else "–"
                print(f"| {k} | {med[k]:.2f} | {', '.join(f'{s:.2f}' for s in v)} | {ratio} |")
    if not args.skip_large:
        archive = large_archive(args.work_dir, args.agents, args.hours)
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, tree in trees:
                cache = Path(tmp) / name.replace(" ", "-") if tree == HERE else None
                ingest = large_once(tree, archive, False, cache)
                full = large_once(tree, archive, True, cache)
                rows[name] = {"ingest": ingest, "attributed": full, "ratio": ingest["rate"] / full["rate"]}
        report["large"] = {"archive": str(archive), "agents": args.agents, "hours": args.hours, "rows": rows}
        print(
            f"\n| {args.agents:,}-account archive, {args.hours:g} h | ingest only events/s | with attribution "
            "events/s (runs) | ingest / attributed |\n|---|---|---|---|"
        )
        for name, r in rows.items():
            print(
                f"| {name} | {r['ingest']['rate']:,.0f} | {r['attributed']['rate']:,.0f} ({r['attributed']['runs']}) "
                f"| {r['ratio']:.2f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
