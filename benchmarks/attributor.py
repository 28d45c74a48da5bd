"""The attributor's work per run at full size, without a broker: shards in, snapshot out.

``python -m benchmarks.attributor [--accounts 1671587 --edges 13000000 --partitions 4 --changed 0.01]`` makes one
synthetic window per partition (heavy-tailed degrees, the accounts split by partition as the ingest keys them),
publishes it as a worker does (a full shard, then a delta after ``--changed`` of its rows and edges moved), sends
both through the topic's encoding (chunks, zstd) into the attributor's :class:`~streamer.distributed.gather.
Gatherer`, and times each step: encoding, gathering a full run (decode, set each partition's copy, number its DIDs),
gathering a delta run (decode, move each copy on), the merge of the copies into one snapshot, and the bytes of each
kind of shard. Memory is about 3 GB at the default size.
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
    args = ap.parse_args(argv)
    t = time.perf_counter()
    parts = _windows(args.accounts, args.edges, args.partitions, 1)
    print(f"made {args.partitions} windows in {time.perf_counter() - t:.1f} s")
    config = StateConfig().as_dict()
    cfg = {"state": config}
    first_t, next_t = 3_600_000_000, 3_900_000_000

    def shards(kind: str) -> tuple[list[tuple[bytes, list[tuple[str, bytes]]]], float, int]:
        t0 = time.perf_counter()
        out = []
        for p, (names, window) in enumerate(parts):
            if kind == "full":
                arrays, base, at = window.full(names), -1, first_t
            else:
                known = np.ones(len(names), bool)
                arrays, base, at = _moved(window, args.changed, p).delta(window, names, known), first_t, next_t
            shard = Shard(at, False, p, args.partitions, 0, 0, 0, arrays, cfg, base)
            out += shard.to_chunks()
        return out, time.perf_counter() - t0, sum(len(v) for v, _ in out)

    full, full_enc_s, full_bytes = shards("full")
    delta, delta_enc_s, delta_bytes = shards("delta")
    gatherer = Gatherer(timeout_s=1e9, clock=lambda: 0.0)
    runs: list[tuple[str, float, Complete]] = []
    for label, chunks in (("full", full), ("delta", delta)):
        t0 = time.perf_counter()
        for offset, (value, headers) in enumerate(chunks):
            gatherer.add(offset, chunk_meta(headers), value)
        ready = gatherer.next_ready()
        assert isinstance(ready, Complete)
        runs.append((label, time.perf_counter() - t0, ready))
    rows = sum(len(w.ids) for _, w in parts)
    edges = sum(len(w.w) for _, w in parts)
    print(f"\n{args.accounts:,} accounts as {rows:,} shard rows, {edges:,} edges, {args.partitions} partitions\n")
    print("| step | seconds | bytes |")
    print("|---|---:|---:|")
    print(f"| encode full shards (worker) | {full_enc_s:.2f} | {full_bytes:,} |")
    print(f"| encode delta shards, {args.changed:.0%} changed (worker, diff included) | {delta_enc_s:.2f} | "
          f"{delta_bytes:,} |")  # fmt: skip
    for label, seconds, _ in runs:
        done = "set each copy, number its DIDs" if label == "full" else "move each copy on"
        print(f"| gather a {label} run (decode, {done}) | {seconds:.2f} | – |")
    import kernels.graph  # noqa: F401  # loaded before the clock starts (JAX's import is not the merge's)

    t0 = time.perf_counter()
    last = runs[-1][2]
    snap = merge(last.parts, last.numbers, StateConfig())
    print(f"| merge into one snapshot | {time.perf_counter() - t0:.2f} | – |")
    assert snap.graph is not None and len(snap.dids) == args.accounts


if __name__ == "__main__":
    main()
