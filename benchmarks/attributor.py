"""The attributor's work per run at full size, without a broker: shards in, snapshot out.

``python -m benchmarks.attributor [--accounts 1671587 --edges 13000000 --partitions 4 --changed 0.01]`` makes one
synthetic window per partition (heavy-tailed degrees, the accounts split by partition as the ingest keys them),
publishes it as a worker does (a full shard, then ``--runs`` deltas, each after ``--changed`` of its rows and edges
moved), sends them through the topic's encoding (chunks, zstd) into the attributor's
:class:`~streamer.distributed.gather.Gatherer`, and times each step: encoding, gathering a full run (decode, set
each partition's copy, number its DIDs), gathering a delta run (decode, move each copy on), the merge of the copies
into one snapshot after each run, and the bytes of each kind of shard. Memory is about 3 GB at the default size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from streamer.core.state import StateConfig
from streamer.distributed.gather import Complete, Gatherer
from streamer.distributed.merge import merge
from streamer.distributed.shards import Shard, Window, chunk_meta


def _windows(accounts: int, edges: int, partitions: int, seed: int) -> list[tuple[list[str], Window]]:
    """Per partition: the DIDs it interned and its window (ids in order of first position, edges by rank)."""
    rng = np.random.default_rng(seed)
    owner = rng.integers(0, partitions, accounts)
    dids = [f"did:plc:{i:024d}" for i in range(accounts)]
    weights = rng.pareto(1.2, accounts) + 1.0
    att = rng.integers(0, accounts, edges)
    src = rng.choice(accounts, edges, p=weights / weights.sum())
    keep = att != src
    att, src = att[keep], src[keep]
    out = []
    for p in range(partitions):
        mine = att[owner[att] == p], src[owner[att] == p]
        pair = np.unique(mine[0].astype(np.int64) * accounts + mine[1])
        a, s = pair // accounts, pair % accounts
        present = np.union1d(np.flatnonzero(owner == p), np.union1d(a, s))
        ids = np.arange(len(present))  # interned in order of first appearance
        local = np.full(accounts, -1, np.int64)
        local[present] = ids
        x = np.where(owner[present] == p, rng.integers(1, 20, len(present)).astype(float), 0.0)
        la, ls = local[a], local[s]
        order = np.lexsort((ls, la))
        window = Window(ids, 2 * ids, x, la[order], ls[order], rng.random(len(order))[order] + 0.5)
        out.append(([dids[i] for i in present.tolist()], window))
    return out


def _moved(window: Window, changed: float, seed: int) -> Window:
    """The window after ``changed`` of its activity and edge weights moved (and as many edges gone)."""
    rng = np.random.default_rng(seed)
    x = window.x.copy()
    rows = rng.random(len(x)) < changed
    x[rows] += 1.0
    w = window.w.copy()
    hit = rng.random(len(w)) < changed
    w[hit] += 1.0
    gone = rng.random(len(w)) < changed / 2
    return Window(window.ids, window.first, x, window.att_ids[~gone], window.src_ids[~gone], w[~gone])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=1_671_587)
    ap.add_argument("--edges", type=int, default=13_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--changed", type=float, default=0.01)
    ap.add_argument("--runs", type=int, default=4, help="delta runs after the full one")
    ap.add_argument(
        "--pipeline",
        type=int,
        nargs="*",
        default=[],
        help="also measure the delta runs (merge and attribution, as the attributor does) this many at once",
    )
    args = ap.parse_args(argv)
    t = time.perf_counter()
    parts = _windows(args.accounts, args.edges, args.partitions, 1)
    print(f"made {args.partitions} windows in {time.perf_counter() - t:.1f} s")
    cfg = {"state": StateConfig().as_dict()}
    interval = 300_000_000

    def shards(k: int) -> tuple[list[tuple[bytes, list[tuple[str, bytes]]]], float, int]:
        """Run ``k``'s shards: full at k = 0, else each partition's delta against run k - 1 (moved windows)."""
        t0 = time.perf_counter()
        out = []
        for p, (names, window) in enumerate(parts):
            if k == 0:
                arrays, base = window.full(names), -1
            else:
                moved = _moved(window, args.changed, 100 * k + p)
                arrays, base = moved.delta(window, names, np.ones(len(names), bool)), (k - 1) * interval
                parts[p] = (names, moved)
            out += Shard(k * interval, False, p, args.partitions, 0, 0, 0, arrays, cfg, base).to_chunks()
        return out, time.perf_counter() - t0, sum(len(v) for v, _ in out)

    import kernels.graph  # noqa: F401  # loaded before the clock starts (JAX's import is not the merge's)

    rows = sum(len(w.ids) for _, w in parts)
    edges = sum(len(w.w) for _, w in parts)
    gatherer = Gatherer(timeout_s=1e9, clock=lambda: 0.0)
    offset = 0
    steps: dict[str, list[float]] = {}
    delta_runs: list[Complete] = []
    sizes: dict[str, int] = {}
    for k in range(args.runs + 1):
        kind = "full" if k == 0 else "delta"
        chunks, encode_s, size = shards(k)
        steps.setdefault(f"encode {kind}", []).append(encode_s)
        sizes[kind] = size
        t0 = time.perf_counter()
        for value, headers in chunks:
            gatherer.add(offset, chunk_meta(headers), value)
            offset += 1
        ready = gatherer.next_ready()
        assert isinstance(ready, Complete)
        steps.setdefault(f"gather {kind}", []).append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        snap = merge(ready.parts, ready.numbers, StateConfig())
        steps.setdefault("merge", []).append(time.perf_counter() - t0)
        assert snap.graph is not None and len(snap.dids) == args.accounts
        if k > 0:
            delta_runs.append(ready)
    print(f"\n{args.accounts:,} accounts as {rows:,} shard rows, {edges:,} edges, {args.partitions} partitions; a full "
          f"run, then {args.runs} delta runs ({args.changed:.0%} of rows and edges changed each)\n")  # fmt: skip
    print("| step | seconds: first | later runs (median) | bytes |")
    print("|---|---:|---:|---:|")
    labels = {
        "encode full": "encode full shards (worker)",
        "encode delta": f"encode delta shards, {args.changed:.0%} changed (worker, diff included)",
        "gather full": "gather a full run (decode, set each copy, number its DIDs)",
        "gather delta": "gather a delta run (decode, move each copy on)",
        "merge": "merge the copies into one snapshot (the full run's, then the delta runs')",
    }
    for key, label in labels.items():
        got = steps[key]
        later = f"{float(np.median(got[1:])):.2f}" if len(got) > 1 else "–"
        size = f"{sizes[key.split()[1]]:,}" if key.startswith("encode") else "–"
        print(f"| {label} | {got[0]:.2f} | {later} | {size} |")

    if args.pipeline:
        pipelined(delta_runs, args.pipeline)


def pipelined(runs: list[Complete], depths: list[int]) -> None:
    """Each run merged and measured (:func:`~streamer.distributed.attributor.measure_run`: the daemon's whole
    attribution, panels and error estimate included) with ``depth`` runs at once in threads, as the attributor's
    ``--pipeline`` does; seconds per run, and each depth against the first."""
    from concurrent.futures import ThreadPoolExecutor

    from streamer.core.attribution import AttributionConfig
    from streamer.distributed.attributor import measure_run

    config = AttributionConfig()
    measure_run(runs[0], config, None)  # compiled once, before any clock
    print(f"\n| pipeline (runs at once) | seconds per run, {len(runs)} runs | runs per second × the first |")
    print("|---:|---:|---:|")
    first = None
    for depth in depths:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(depth) as pool:
            list(pool.map(lambda r: measure_run(r, config, None), runs))
        per_run = (time.perf_counter() - t0) / len(runs)
        first = first or per_run
        print(f"| {depth} | {per_run:.2f} | {first / per_run:.2f} |")


if __name__ == "__main__":
    main()
