"""Ingest speed (decode only, decode + state) and the memory of a full-size state.

    python -m benchmarks.ingest                         # synth archive of >= 1e6 events, 1.7e6 agents / 1e7 edges
    python -m benchmarks.ingest --events 200000 --skip-memory

* A synth archive in the real wire format (``streamer.testing.synth``) is written to a temporary directory.
* decode only: frames/s and events/s of skyattr's decoder (libipld: header, body, CAR) over the whole archive,
  and beside it, in the same run, the atproto SDK's own path (``Frame.from_bytes`` + ``parse_subscribe_repos_message``
  + ``CAR.from_bytes``) on the first ``--sdk-frames`` frames. The real relay sample is measured the same way.
* decode + state: ``streamer.core.ingest.replay`` of the archive (zstd read, decode, interning, window, compaction),
  one process, one thread.
* memory: a fresh process interns 1.7e6 DIDs and folds 1e7 distinct attention edges into a 14-day state; peak
  RSS (ru_maxrss) is reported, with the interpreter + libraries baseline measured in the same kind of process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(width=160)
SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/bluesky-sample/frames.bin.zst"


def _frames(path: Path) -> list[bytes]:
    from streamer.sources.archive import read_archive

    return [i.frame for i in read_archive(path) if i.frame is not None]


def decode_rates(frames: list[bytes]) -> tuple[float, float]:
    """(frames/s, events/s) of skyattr's decoder."""
    from streamer.core.frames import decode_frame

    start = time.perf_counter()
    events = 0
    for f in frames:
        events += len(decode_frame(f).events)
    dt = time.perf_counter() - start
    return len(frames) / dt, events / dt


def sdk_rate(frames: list[bytes]) -> float:
    """frames/s of the atproto SDK path (pydantic models + its CAR reader)."""
    from atproto import CAR, firehose_models, parse_subscribe_repos_message

    start = time.perf_counter()
    for f in frames:
        msg = parse_subscribe_repos_message(firehose_models.Frame.from_bytes(f))
        blocks = getattr(msg, "blocks", None)
        if blocks:
            CAR.from_bytes(blocks)
    return len(frames) / (time.perf_counter() - start)


def replay_rate(path: Path) -> tuple[float, float, int, int, int]:
    """(items/s, events/s, events, agents, edges) of a full replay into a fresh state."""
    from streamer.app.replay import replay

    result = replay(path)
    snap = result.state.snapshot()
    events = sum(result.stats.events.values())
    return result.stats.items / result.seconds, events / result.seconds, events, snap.agents, snap.edges


MEMORY_PROBE = """
import resource, sys, time
import numpy as np
from streamer.core.events import Event
from streamer.core.state import AgentState
agents, edges = int(sys.argv[1]), int(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rng = np.random.default_rng(0)
dids = [f"did:plc:{i:024x}" for i in range(agents)]
state = AgentState()
day = 86_400_000_000
# every agent posts once; then distinct (attender, source) likes spread over 14 days
t0 = time.perf_counter()
for i, d in enumerate(dids):
    state.apply(Event(i % 14 * day, 0, "post", d))
att = rng.integers(0, agents, edges)
src = (att + 1 + rng.integers(0, agents - 1, edges)) % agents
days = np.sort(rng.integers(0, 14, edges))
for a, s, t in zip(att.tolist(), src.tolist(), days.tolist()):
    state.apply(Event(t * day + 1, 0, "like", dids[a], dids[s]))
snap = state.snapshot()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, peak, snap.agents, snap.edges, time.perf_counter() - t0)
"""


def memory(agents: int, edges: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(agents), str(edges)], capture_output=True, text=True, check=True
    )
    base, peak, n, m, secs = out.stdout.split()
    return {
        "baseline_gib": int(base) / 2**20,
        "peak_gib": int(peak) / 2**20,
        "agents": int(n),
        "edges": int(m),
        "seconds": float(secs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="synth archive size (approximate events)")
    parser.add_argument("--synth-agents", type=int, default=100_000, help="accounts in the synth archive")
    parser.add_argument("--sdk-frames", type=int, default=50_000)
    parser.add_argument("--agents", type=int, default=1_700_000)
    parser.add_argument("--edges", type=int, default=10_000_000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from streamer.testing.synth import EVENTS_PER_AGENT_HOUR, write_synth_archive

    figures: dict[str, object] = {"machine": f"{os.cpu_count()} cores", "python": sys.version.split()[0]}
    # first, while this process is small: a child's ru_maxrss starts at its parent's RSS at fork
    if not args.skip_memory:
        mem = memory(args.agents, args.edges)
        figures["memory"] = mem
        console.print(
            f"state with {mem['agents']:,} agents and {mem['edges']:,} edges: peak RSS {mem['peak_gib']:.2f} GiB "
            f"(interpreter + libraries {mem['baseline_gib']:.2f} GiB); built in {mem['seconds']:.0f}s"
        )
    table = Table(title="Ingest (one process, one thread)")
    for col in ("input", "frames", "events", "decode frames/s", "decode events/s", "SDK frames/s", "replay events/s"):
        table.add_column(col, justify="right")

    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "synth.skyarch.zst"
        start = time.perf_counter()
        hours = args.events / (EVENTS_PER_AGENT_HOUR * args.synth_agents)
        info = write_synth_archive(archive, args.synth_agents, hours, seed=0)
        size = archive.stat().st_size / 2**20
        took = time.perf_counter() - start
        console.print(
            f"synth archive: {info.frames:,} frames in {took:.1f}s ({info.frames / took:,.0f} frames/s), "
            f"{size:.1f} MiB, {info.raw_bytes / info.frames:,.0f} bytes a frame"
        )
        console.print(f"  events by kind: {dict(info.counts)}")
        frames = _frames(archive)
        f_rate, e_rate = decode_rates(frames)
        sdk = sdk_rate(frames[: args.sdk_frames])
        _, events_s, events, agents, edges = replay_rate(archive)
        figures["synth"] = {
            "frames": len(frames),
            "events": events,
            "decode_frames_s": f_rate,
            "decode_events_s": e_rate,
            "sdk_frames_s": sdk,
            "replay_events_s": events_s,
            "frame_bytes": info.raw_bytes / info.frames,
            "write_frames_s": info.frames / took,
            "agents": agents,
            "edges": edges,
        }
        rates = (f"{f_rate:,.0f}", f"{e_rate:,.0f}", f"{sdk:,.0f}", f"{events_s:,.0f}")
        table.add_row("synth", f"{len(frames):,}", f"{events:,}", *rates)
    if SAMPLE.exists():
        sample = _frames(SAMPLE) * 200  # the 150 real frames, repeated for a stable figure
        f_rate, e_rate = decode_rates(sample)
        sdk = sdk_rate(sample[:30_000])
        figures["real_sample"] = {"decode_frames_s": f_rate, "decode_events_s": e_rate, "sdk_frames_s": sdk}
        figures["real_sample"]["frame_bytes"] = sum(map(len, sample)) / len(sample)
        rates = (f"{f_rate:,.0f}", f"{e_rate:,.0f}", f"{sdk:,.0f}", "-")
        table.add_row("real sample ×200", f"{len(sample):,}", "-", *rates)
    console.print(table)
    console.print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
