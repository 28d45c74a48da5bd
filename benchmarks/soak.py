"""Soak: a long stream with a steady supply of new accounts, to show the state's memory is bounded by the window.

    python -m benchmarks.soak --events 3000000
    python -m benchmarks.soak --events 500000 --bucket-hours 0.1 --population 5000

Each bucket of event time brings a fresh population of DIDs (accounts seen in that bucket only) besides a core
that stays; buckets are small, so many expire over the run. Every ``--sample-every`` events the table shows the
agents held, edges, buckets, process RSS and the state's speed (events/s of ``AgentState.apply`` alone, the
generation of the synthetic events excluded). A sprinkle of items with hostile times (dated 2100 or 1970) rides
along; they must be refused without disturbing the window. After warm-up (two windows of events) RSS must stay
flat: the run exits 1 when it grows by more than ``--max-growth-mib``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np
import psutil

from streamer.core.events import KIND_COLLECTION, Event
from streamer.core.state import US_PER_HOUR, AgentState, StateConfig

KINDS = np.array(["like", "post", "repost", "follow", "reply", "quote", "delete", "profile"])
KIND_P = np.array([0.70, 0.09, 0.10, 0.04, 0.02, 0.01, 0.03, 0.01])
START_US = 1_783_123_200_000_000  # 2026-07-04T00:00:00Z
YEAR_2100_US = 4_102_444_800_000_000


def _did(n: int) -> str:
    return f"did:plc:{n:024x}"


def chunk(
    rng: np.random.Generator,
    first: int,
    count: int,
    per_bucket: int,
    bucket_us: int,
    core: int,
    population: int,
    hostile_rate: float,
) -> list[Event]:
    """Events ``first`` .. ``first + count - 1`` of the stream: time advances evenly (with a minute of jitter),
    actors and subjects are drawn 60/40 from the current bucket's fresh population and the persistent core."""
    k = np.arange(first, first + count)
    t = START_US + k * bucket_us // per_bucket + rng.integers(-60_000_000, 60_000_000, count)
    generation = k // per_bucket
    fresh_base = core + generation * population
    ids = []
    for _ in range(2):
        fresh = rng.random(count) < 0.6
        ids.append(np.where(fresh, fresh_base + rng.integers(0, population, count), rng.integers(0, core, count)))
    kinds = KINDS[rng.choice(len(KINDS), count, p=KIND_P)]
    hostile = rng.random(count) < hostile_rate
    t = np.where(hostile, np.where(rng.random(count) < 0.5, YEAR_2100_US, 1_000_000), t)
    # a delete names an earlier record of the chunk (up to a bucket back): its actor, collection and record key
    back = np.minimum(rng.integers(1, per_bucket + 1, count), np.maximum(k - first, 1))
    target = np.maximum(k - first - back, 0)
    out = []
    for i, (ti, ki, kind, a, b) in enumerate(
        zip(t.tolist(), k.tolist(), kinds.tolist(), ids[0].tolist(), ids[1].tolist(), strict=True)
    ):
        if kind == "delete":
            j = int(target[i])
            victim = str(kinds[j])
            collection = KIND_COLLECTION.get(victim, "app.bsky.feed.post")
            out.append(Event(int(ti), int(ki), kind, _did(int(ids[0][j])), "", collection, f"r{first + j}", "delete"))
        else:
            subject = _did(b) if kind in ("like", "repost", "follow", "reply") else ""
            collection = KIND_COLLECTION.get(kind, "app.bsky.actor.profile")
            out.append(Event(int(ti), int(ki), str(kind), _did(a), subject, collection, f"r{ki}", "create"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--bucket-hours", type=float, default=0.25, help="small, so that many buckets expire")
    parser.add_argument("--buckets", type=int, default=4)
    parser.add_argument("--per-bucket", type=int, default=50_000, help="events per bucket of event time")
    parser.add_argument("--population", type=int, default=20_000, help="fresh DIDs per bucket")
    parser.add_argument("--core", type=int, default=20_000, help="DIDs active in every bucket")
    parser.add_argument("--sample-every", type=int, default=100_000)
    parser.add_argument("--max-growth-mib", type=float, default=64.0, help="RSS growth allowed after warm-up")
    parser.add_argument("--hostile-rate", type=float, default=1e-5, help="share of items dated 2100 or 1970")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--record-budget", type=int, default=None, help="records held for deletes (default: the state's)"
    )
    args = parser.parse_args(argv)

    budget = {} if args.record_budget is None else {"record_budget": args.record_budget}
    config = StateConfig(bucket_hours=args.bucket_hours, buckets=args.buckets, **budget)
    state = AgentState(config)
    rng = np.random.default_rng(args.seed)
    proc = psutil.Process()
    warmup = 2 * args.buckets * args.per_bucket
    print(
        f"soak: {args.events:,} events, {args.buckets} buckets of {args.bucket_hours:g} h, {args.per_bucket:,} events "
        f"and {args.population:,} new DIDs per bucket, core {args.core:,}; warm-up {warmup:,} events"
    )
    header = (
        f"{'events':>10} {'event h':>8} {'agents':>9} {'edges':>10} {'records':>9} {'index MiB':>9} {'buckets':>7} "
        f"{'RSS MiB':>8} {'events/s':>10}"
    )
    print(header)
    print("-" * len(header))
    applied_s = 0.0
    rows: list[tuple[int, float]] = []
    done = 0
    while done < args.events:
        count = min(args.sample_every, args.events - done)
        events = chunk(
            rng, done, count, args.per_bucket, config.bucket_us, args.core, args.population, args.hostile_rate
        )
        start = time.perf_counter()
        for e in events:
            state.apply(e)
        state.flush()
        dt = time.perf_counter() - start
        applied_s += dt
        done += count
        del events
        gc.collect()
        rss = proc.memory_info().rss / 2**20
        rows.append((done, rss))
        edges = sum(len(b.att) for b in state.buckets.values())
        records = getattr(state, "records_indexed", 0)  # (0 on a release without the record index)
        index_mib = sum(getattr(b, "rkeys", np.zeros(0)).nbytes * 17 / 8 for b in state.buckets.values()) / 2**20
        hours = (state.last_time_us - START_US) / US_PER_HOUR
        print(
            f"{done:>10,} {hours:>8.1f} {len(state.dids):>9,} {edges:>10,} {records:>9,} {index_mib:>9.1f} "
            f"{len(state.buckets):>7} {rss:>8.1f} {count / dt:>10,.0f}"
        )
    after = [rss for n, rss in rows if n >= warmup]
    refused = {k: state.counters[k] for k in ("late", "future_time", "bad_did") if state.counters[k]}
    print("-" * len(header))
    pruned = state.counters["agents_pruned"]
    print(f"agents held at the end: {len(state.dids):,}; pruned over the run: {pruned:,}")
    print(f"buckets expired: {state.counters['buckets_expired']:,}; refused: {refused}")
    deletes = {k: state.counters[k] for k in ("delete", "delete_applied", "delete_unmatched", "records_unindexed")}
    print(f"deletes: {deletes}")
    print(f"state speed: {done / applied_s:,.0f} events/s (apply + flush, generation excluded)")
    if not after:
        print("the run ended before warm-up: no verdict on RSS")
        return 0
    growth = after[-1] - after[0]
    print(
        f"RSS after warm-up {after[0]:.1f} MiB, at the end {after[-1]:.1f} MiB (growth {growth:+.1f} MiB, "
        f"range {min(after):.1f}-{max(after):.1f})"
    )
    if growth > args.max_growth_mib:
        print(f"RSS grew by more than {args.max_growth_mib:g} MiB after warm-up")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
