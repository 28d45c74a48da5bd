"""Backfill from a Jetstream v2 archive against a replay of the firehose archive of the same events, and the bytes
each costs per event.

    python -m benchmarks.backfill                    # 20,000 accounts over 12 h (synthetic), 3 rounds
    python -m benchmarks.backfill --agents 5000 --hours 6 --rounds 1

One synthetic archive (relay frames, as ``skyattr synth`` writes them) is written once into ``--work-dir``; its
events are numbered as a local Jetstream v2 numbers them and sealed into ``jss0`` segments of 5,000 events, served by
the local v2's archive (:mod:`streamer.testing.jetstream2_archive`) from this process. Then, alternately, each in a
child process pinned to one core, measured in that process's CPU time:

* **firehose replay**: the archive read by :class:`~streamer.sources.archive.ArchiveSource` (relay frames decoded,
  seqs judged) into the dispatcher and the state (ingest only: no attribution);
* **v2 backfill**: :class:`~streamer.sources.jetstream2_backfill.Jetstream2Backfill` (``live=False``) sweeping the
  archive over HTTP (the SDK's planner and downloader, its segment reader, each row read by the live decoder) into
  the same dispatcher and state.

The figure is events per CPU-second of each and their ratio (target: the backfill at least as fast per event), and
the same final state is checked (accounts, activity). Each side's modules are imported before its clock starts (the
atproto SDK's models take about a second to import: a cost per process, not per event). Bytes per event: the
firehose's frames as the relay sends them, Jetstream v1 JSON, v2 frames (plain, and dict-zstd with a 64 KiB
dictionary trained on a tenth of them), and the v2 archive's segments. Printed as Markdown; ``--json`` writes
the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent

CHILD = r"""
import asyncio, json, os, sys, time
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from streamer.core.dispatch import SequentialDispatcher, repo_of
from streamer.core.source import SourceStats
from streamer.core.state import AgentState
kind, where = sys.argv[1], sys.argv[2]

async def main():
    stats = SourceStats()
    dispatcher = SequentialDispatcher(AgentState(), stats)
    if kind == "firehose":
        from streamer.sources.archive import ArchiveSource
        source = ArchiveSource(where)
    else:
        import atproto_jetstream.archive.downloader, atproto_jetstream.archive.matcher  # imported before the clock
        import atproto_jetstream.archive.planner, atproto_jetstream.archive.segment  # as the firehose's decoder is
        from streamer.sources.jetstream2_backfill import Jetstream2Backfill
        url, archive_url = where.split(" ")
        source = Jetstream2Backfill(url, api_key="local-archive-key", archive_url=archive_url, live=False, stats=stats)
    start = time.process_time()
    async for item in source:
        dispatcher.add(repo_of(item), item)
    dispatcher.shutdown()
    seconds = time.process_time() - start
    state = dispatcher.state
    snap = state.snapshot()
    print(json.dumps({"events": state.events, "cpu_s": seconds, "agents": len(state.dids), "x": float(snap.x.sum())}))

asyncio.run(main())
"""


def child(kind: str, where: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYATTR_")}
    env["PYTHONPATH"] = str(HERE)
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, where], capture_output=True, text=True, env=env,
                          timeout=1800, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sizes(archive: Path, payloads: list[dict[str, Any]], segments: list[bytes]) -> dict[str, float]:
    """Bytes per event of each wire and store."""
    import zstandard

    from streamer.core.frames import decode_frame
    from streamer.core.jetstream_json import to_jetstream
    from streamer.sources.archive import read_archive

    frames = events = v1 = 0
    for item in read_archive(archive):
        assert item.frame is not None
        decoded = decode_frame(item.frame, records=True)
        frames += len(item.frame)
        events += len(decoded.events)
        v1 += sum(len(json.dumps(to_jetstream(e), separators=(",", ":")).encode()) for e in decoded.events)
    texts = [json.dumps({"$type": "message", "payload": p}, separators=(",", ":")).encode() for p in payloads]
    dictionary = zstandard.train_dictionary(65_536, texts[::10][:50_000])
    compress = zstandard.ZstdCompressor(dict_data=dictionary)
    return {
        "events": events,
        "firehose": frames / events,
        "jetstream_v1_json": v1 / events,
        "v2_json": sum(map(len, texts)) / len(texts),
        "v2_dict_zstd": sum(len(compress.compress(t)) for t in texts) / len(texts),
        "v2_archive": sum(map(len, segments)) / len(payloads),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20_000)
    parser.add_argument("--hours", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import asyncio

    from streamer.testing import jss
    from streamer.testing.jetstream2_archive import ArchiveServer
    from streamer.testing.jetstream2_server import Jetstream2Server
    from streamer.testing.synth import write_synth_archive
    from streamer.testing.threaded import serving_in_thread

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="skyattr-backfill-"))
    archive = work / f"synth-{args.agents}-{args.hours:g}h.skyarch.zst"
    if not archive.exists():
        write_synth_archive(archive, agents=args.agents, hours=args.hours, seed=0)

    async def payloads_of() -> list[dict[str, Any]]:
        server = Jetstream2Server(archive)
        await server.start()
        try:
            return server.payloads()
        finally:
            await server.close()

    payloads = asyncio.run(payloads_of())
    rows = [jss.row_of(p) for p in payloads]
    chunks = [rows[i : i + 5000] for i in range(0, len(rows), 5000)]
    with serving_in_thread(ArchiveServer(chunks, "local-archive-key", page_segments=50, block_rows=512)) as store:
        where = f"ws://127.0.0.1:9 {store.url}"  # the tail is never reached (live=False)
        firehose, backfill = [], []
        for _ in range(args.rounds):
            firehose.append(child("firehose", str(archive)))
            backfill.append(child("backfill", where))
    f, b = firehose[-1], backfill[-1]
    assert (f["events"], f["agents"]) == (b["events"], b["agents"]), (f, b)
    assert abs(f["x"] - b["x"]) <= 1e-9 * max(1.0, f["x"]), (f, b)
    rate_f = statistics.median(r["events"] / r["cpu_s"] for r in firehose)
    rate_b = statistics.median(r["events"] / r["cpu_s"] for r in backfill)
    size = sizes(archive, payloads, [data for _, data, _ in store.files])
    out = {"agents": args.agents, "hours": args.hours, "events": f["events"], "rounds": args.rounds,
           "firehose_events_per_cpu_s": rate_f, "backfill_events_per_cpu_s": rate_b, "ratio": rate_b / rate_f,
           "bytes_per_event": size}  # fmt: skip
    print(f"{args.agents:,} accounts, {args.hours:g} h, {f['events']:,} events, median of {args.rounds} rounds, "
          "one core, CPU time")  # fmt: skip
    print("\n| path | events per CPU-second | vs firehose replay |\n|---|---:|---:|")
    print(f"| firehose archive replay (ingest only) | {rate_f:,.0f} | 1.00 |")
    print(f"| v2 archive backfill (ingest only) | {rate_b:,.0f} | {rate_b / rate_f:.2f} |")
    print("\n| bytes per event | |\n|---|---:|")
    for name, value in size.items():
        if name != "events":
            print(f"| {name.replace('_', ' ')} | {value:,.0f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
