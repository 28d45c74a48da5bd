"""The distributed mode's throughput: an archive through ``ingest --to-kafka``, N workers and the attributor,
against ``skyattr replay`` of the same archive, in one run on one machine.

``python -m benchmarks.distributed --bootstrap 127.0.0.1:9092 [--agents 100000 --hours 24 --workers 1 2]``
writes (once) a synthetic archive, replays it in one process (attribution every ``--interval`` s of event time),
ingests it into fresh topics, then for each worker count starts the workers and the attributor (``--until-final``)
on their own groups and times from their start to the attributor's exit: end-to-end events/s, and per run the
shard bytes and the gather time (first chunk to last shard) the attributor saw. CPU seconds are each phase's
children's own (user + system, from ``getrusage``; the broker's are not counted), so ``CPU per event`` compares what
the distributed roles spend with what the single process spends on the same events; shard bytes are compared with
the bytes of the event records the workers folded between two shards. Every figure is printed as a markdown table
and written as JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from streamer.distributed.defaults import PIPELINE

HERE = Path(__file__).resolve().parent.parent


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a running process (psutil)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _cli(*args: str, log: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYATTR_")}
    env["SKYATTR_METRICS_PORT"] = "0"
    out = log.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", *args], stdout=out, stderr=subprocess.STDOUT, env=env, text=True, cwd=HERE
    )


def _children_cpu() -> float:
    """CPU seconds (user + system) of the children waited for so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def single_process(archive: Path, interval: float, work: Path) -> dict[str, float]:
    start, cpu = time.perf_counter(), _children_cpu()
    proc = _cli(
        "replay", str(archive), "--quiet", "--no-progress", "--interval", str(interval), log=work / "replay.log"
    )
    if proc.wait() != 0:
        raise SystemExit((work / "replay.log").read_text()[-3000:])
    return {"seconds": time.perf_counter() - start, "cpu_s": _children_cpu() - cpu}


def ingest(
    bootstrap: str, archive: Path, interval: float, partitions: int, work: Path, run: str, decoders: int = 1
) -> dict[str, float]:
    """``ingest --to-kafka`` of the archive into fresh topics named after ``run``: wall and CPU seconds (the
    decoding processes' included: they are the ingest's children)."""
    start, cpu = time.perf_counter(), _children_cpu()
    proc = _cli(
        "ingest",
        str(archive),
        "--to-kafka",
        "--kafka-bootstrap",
        bootstrap,
        "--events-topic",
        f"bench.events.{run}",
        "--cursor-topic",
        f"bench.cursors.{run}",
        "--partitions",
        str(partitions),
        "--interval",
        str(interval),
        "--decoders",
        str(decoders),
        log=work / f"ingest-{run}.log",
    )
    if proc.wait() != 0:
        raise SystemExit((work / f"ingest-{run}.log").read_text()[-3000:])
    return {"decoders": decoders, "seconds": time.perf_counter() - start, "cpu_s": _children_cpu() - cpu}


def distributed(
    bootstrap: str, archive: Path, interval: float, workers: int, partitions: int, work: Path, pipeline: int = PIPELINE
) -> dict:
    run = uuid.uuid4().hex[:8]
    events, shards, state = f"bench.events.{run}", f"bench.shards.{run}", f"bench.attributor.{run}"
    kafka = ("--kafka-bootstrap", bootstrap)
    ingested = ingest(bootstrap, archive, interval, partitions, work, run)
    ingest_s, ingest_cpu = ingested["seconds"], ingested["cpu_s"]
    start, cpu = time.perf_counter(), _children_cpu()
    procs = [
        _cli(
            "worker",
            *kafka,
            "--events-topic",
            events,
            "--shards-topic",
            shards,
            "--app-id",
            f"bench-w-{run}",
            log=work / f"worker{n}-{run}.log",
        )
        for n in range(workers)
    ]
    out = work / f"results-{run}.jsonl"
    attributor = _cli(
        "attributor",
        *kafka,
        "--shards-topic",
        shards,
        "--state-topic",
        state,
        "--name",
        f"bench-a-{run}",
        "--kafka-topic-tiers",
        f"bench.tiers.{run}",
        "--kafka-topic-alerts",
        f"bench.alerts.{run}",
        "--until-final",
        "--pipeline",
        str(pipeline),
        "--out",
        str(out),
        "--log-level",
        "DEBUG",
        log=work / f"attributor-{run}.log",
    )
    code = attributor.wait()
    seconds = time.perf_counter() - start
    worker_cpu = [_cpu_of(p.pid) for p in procs]  # each worker's own, before it stops
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(60)
    roles_cpu = _children_cpu() - cpu
    if code != 0:
        raise SystemExit((work / f"attributor-{run}.log").read_text()[-3000:])
    text = "".join((work / f"worker{n}-{run}.log").read_text() for n in range(workers))
    shipped = [(m[0], int(m[1]), float(m[2]), int(m[3])) for m in re.findall(
        r"(full|delta) shard at \d+ published \(\d+ accounts, \d+ edges(?: changed)?, (\d+) bytes, (\d+) ms; "
        r"(\d+) record bytes", text)]  # fmt: skip
    sizes = [b for _, b, _, _ in shipped]
    build_ms = [ms for _, _, ms, _ in shipped]
    folded = [f for _, _, _, f in shipped]
    deltas = [(b, f) for kind, b, _, f in shipped if kind == "delta"]
    accounts = [int(m) for m in re.findall(r"full shard at \d+ published \((\d+) accounts", text)]
    gathers = [float(m) for m in re.findall(r"gathered in ([0-9.]+) s", (work / f"attributor-{run}.log").read_text())]
    return {
        "workers": workers,
        "pipeline": pipeline,
        "ingest_s": ingest_s,
        "seconds": seconds,
        "runs": sum(1 for line in out.read_text().splitlines() if '"topic":"tiers"' in line),
        "shard_bytes_per_run": sum(sizes) / max(1, len(sizes)) * partitions,
        "shards": len(sizes),
        "full_shards": len(sizes) - len(deltas),
        "shard_bytes_per_folded_byte": sum(sizes) / max(1, sum(folded)),
        "delta_bytes_per_folded_byte": sum(b for b, _ in deltas) / max(1, sum(f for _, f in deltas)),
        "ingest_cpu_s": ingest_cpu,
        "roles_cpu_s": roles_cpu,
        "worker_cpu_s": worker_cpu,
        "gather_s_median": statistics.median(gathers) if gathers else None,
        "gather_s_p90": statistics.quantiles(gathers, n=10)[-1] if len(gathers) > 1 else None,
        "shard_ms_median": statistics.median(build_ms) if build_ms else None,
        "shard_ms_last": build_ms[-partitions:] if build_ms else [],
        "accounts_last": sum(accounts[-partitions:]),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--agents", type=int, default=100_000)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--interval", type=float, default=300.0)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument(
        "--decoders", type=int, nargs="*", default=[], help="also time the ingest alone with these decoder counts"
    )
    ap.add_argument("--pipeline", type=int, nargs="+", default=[PIPELINE], help="the attributor's --pipeline values")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "skyattr-bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from benchmarks.replay import large_archive

    archive = large_archive(args.work_dir, args.agents, args.hours)
    from streamer.sources.archive import read_archive

    frames = sum(1 for _ in read_archive(archive))
    logs = Path(tempfile.mkdtemp(prefix="skyattr-dist-"))
    single = single_process(archive, args.interval, logs)
    rows = [
        distributed(args.bootstrap, archive, args.interval, w, args.partitions, logs, k)
        for w in args.workers
        for k in args.pipeline
    ]
    alone = [
        ingest(args.bootstrap, archive, args.interval, args.partitions, logs, uuid.uuid4().hex[:8], d)
        for d in args.decoders
    ]
    report = {
        "machine": os.uname().nodename,
        "cpus": os.cpu_count(),
        "date": time.ctime(),
        "frames": frames,
        "single": single,
        "distributed": rows,
        "ingest": alone,
        "logs": str(logs),
    }
    print(f"\n{args.agents:,}-account archive, {args.hours:g} h ({frames:,} frames), {args.partitions} partitions\n")
    print(
        "| mode | seconds | frames/s | × single process | CPU s | CPU per event × single | shard bytes per run "
        "| shard bytes per folded byte (deltas) | gather s (median) | each worker's CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| single process (`replay`) | {single['seconds']:.1f} | {frames / single['seconds']:,.0f} | 1.0 | "
        f"{single['cpu_s']:.1f} | 1.0 | – | – | – | – |"
    )
    for r in rows:
        gather = f"{r['gather_s_median']:.2f}" if r["gather_s_median"] is not None else "–"
        cpu = r["ingest_cpu_s"] + r["roles_cpu_s"]
        print(
            f"| ingest (once, before) | {r['ingest_s']:.1f} | {frames / r['ingest_s']:,.0f} | – | "
            f"{r['ingest_cpu_s']:.1f} | – | – | – | – | – |\n"
            f"| {r['workers']} worker(s) + attributor (pipeline {r['pipeline']}) | {r['seconds']:.1f} | "
            f"{frames / r['seconds']:,.0f} | "
            f"{single['seconds'] / r['seconds']:.2f} | {r['roles_cpu_s']:.1f} | {cpu / single['cpu_s']:.2f} "
            f"(with ingest) | {r['shard_bytes_per_run']:,.0f} | {r['shard_bytes_per_folded_byte']:.2f} "
            f"({r['delta_bytes_per_folded_byte']:.2f}; {r['full_shards']} full of {r['shards']}) | {gather} | "
            f"{' / '.join(f'{c:.1f}' for c in r['worker_cpu_s'])} |"
        )
    if alone:
        print("\n| ingest alone | seconds | frames/s | × 1 decoder | CPU s |\n|---|---|---|---|---|")
        for r in alone:
            print(
                f"| {r['decoders']} decoder(s) | {r['seconds']:.1f} | {frames / r['seconds']:,.0f} | "
                f"{alone[0]['seconds'] / r['seconds']:.2f} | {r['cpu_s']:.1f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
