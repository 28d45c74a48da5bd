"""A worker started again, over and over: how long until it is ready, and until it stops.

    python -m benchmarks.worker_recovery --bootstrap 127.0.0.1:9092 --loops 8 --load 2

Once: the bundled archive is ingested into fresh topics (4 partitions) and a first worker folds it and stays up.
Then, ``--loops`` times: a second worker starts (the group rebalances, it gets partitions and reads their state
back from the changelog), the time until its ``/readyz`` answers 200 is measured (``--ready-timeout`` at most),
then it gets SIGTERM and the time until it exits is measured. ``--load`` busy processes share the CPU meanwhile.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _busy() -> None:
    while True:
        pass


def _ready(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return reply.status, reply.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()
    except OSError:
        return 0, "not listening"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--loops", type=int, default=8)
    ap.add_argument("--load", type=int, default=1, help="busy processes sharing the CPU")
    ap.add_argument("--ready-timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    run = uuid.uuid4().hex[:8]
    events, cursors, shards = f"bench.events.{run}", f"bench.cursors.{run}", f"bench.shards.{run}"
    app_id = f"bench-worker-{run}"
    cli = [sys.executable, "-m", "streamer"]
    kafka = ["--kafka-bootstrap", args.bootstrap]
    tmp = Path(tempfile.mkdtemp(prefix="skyattr-recovery-"))
    procs: list[subprocess.Popen[bytes]] = []
    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    rows = []
    try:
        subprocess.run(
            [*cli, "ingest", str(REPO / "streamer/data/default.skyarch.zst"), "--to-kafka", "--events-topic",
             events, "--cursor-topic", cursors, "--partitions", "4",
             "--interval", "3600", *kafka],
            check=True, cwd=REPO, capture_output=True,
        )  # fmt: skip

        def worker(name: str, port: int) -> subprocess.Popen[bytes]:
            log = (tmp / f"{name}.log").open("ab")
            proc = subprocess.Popen(
                [*cli, "worker", "--events-topic", events, "--shards-topic", shards,
                 "--app-id", app_id, "--session-timeout", "8", "--metrics-port", str(port), *kafka],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            procs.append(proc)
            return proc

        first_port = _free_port()
        worker("first", first_port)
        deadline = time.monotonic() + args.ready_timeout
        while _ready(first_port)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        for p in busy:
            p.start()
        for loop in range(1, args.loops + 1):
            port = _free_port()
            started = time.monotonic()
            proc = worker(f"second{loop}", port)
            replies: list[str] = []
            ready_s = None
            while time.monotonic() - started < args.ready_timeout and proc.poll() is None:
                status, text = _ready(port)
                if not replies or replies[-1] != text:
                    replies.append(text)
                if status == 200:
                    ready_s = time.monotonic() - started
                    break
                time.sleep(0.2)
            stop = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
                stop_s: float | None = time.monotonic() - stop
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
                stop_s = None
            rows.append((loop, ready_s, stop_s, proc.returncode, replies))
            print(
                f"loop {loop}: ready after {ready_s if ready_s is None else round(ready_s, 1)} s, stopped after "
                f"{stop_s if stop_s is None else round(stop_s, 1)} s (exit {proc.returncode}); {' → '.join(replies)}",
                flush=True,
            )
    finally:
        for p in busy:
            if p.is_alive():
                p.terminate()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    ready = [r[1] for r in rows if r[1] is not None]
    stops = [r[2] for r in rows if r[2] is not None]
    print("\n| loops | ready (median, max s) | never ready | SIGTERM to exit (median, max s) | hung on SIGTERM |")
    print("|---|---|---|---|---|")
    print(
        f"| {len(rows)} | {statistics.median(ready):.1f}, {max(ready):.1f} | {len(rows) - len(ready)} | "
        f"{statistics.median(stops):.1f}, {max(stops):.1f} | {len(rows) - len(stops)} |"
        if ready and stops
        else f"| {len(rows)} | – | {len(rows) - len(ready)} | – | {len(rows) - len(stops)} |"
    )
    return 0 if len(ready) == len(rows) and len(stops) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
