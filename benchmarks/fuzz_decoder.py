"""Fuzz the decoders with mutated real firehose input and count what comes out, by reason.

    python -m benchmarks.fuzz_decoder --mutations 100000 --seed 0

Each of ``--mutations`` inputs is a real relay frame of the sample (``shared/data/bluesky-sample``, or
``SKYATTR_SAMPLE_DIR``) mutated at one of three levels: its bytes (flips, truncations, insertions, deletions,
splices of two frames, length fields rewritten to lie, nesting thousands deep spliced in), its CBOR values (a
header, body or operation field replaced by an arbitrary value, hostile strings among them), or the CAR inside a
commit (its bytes damaged, or a record field replaced, re-hashed and re-packed). As many Jetstream lines are made
from the sample's real ones the same way (fields replaced by arbitrary JSON values: NaN, infinities, lone
surrogates, huge ints, deep nesting), plus some arbitrary JSON. Every result is checked: the decoder must not
raise, and what it accepts must carry valid DIDs, record keys and collections, a sane int time and UTF-8 strings.

Prints inputs tried, results by reason, skipped operations by reason, uncaught exceptions and invariant
violations, and the time taken. Exits 1 if anything raised or broke an invariant.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import libipld

from streamer.core.events import KINDS, MAX_TIME_US, MIN_TIME_US, is_valid_did, is_valid_nsid, is_valid_rkey
from streamer.core.frames import (
    ERROR_REASONS,
    MAX_DETAIL_CHARS,
    SKIP_REASONS,
    Decoded,
    decode_frame,
    nesting_exceeds,
)
from streamer.core.jetstream_json import from_jetstream
from streamer.testing.encode import car, cid_of

SAMPLE_DIR = Path(
    os.environ.get("SKYATTR_SAMPLE_DIR", Path(__file__).resolve().parents[2] / "shared/data/bluesky-sample")
)

HOSTILE_STRINGS = [
    "did:plc:aaaa\n",
    "did:plc:a\x00a",
    "did:plc:a a",
    "did:plc:" + "a" * 3000,
    "did:PLC:aaaa",
    "at://did:plc:b\n/app.bsky.feed.post/3k",
    "at://did:plc:bbbb/app.bsky.feed.post/3k",
    "at://bob.bsky.social/app.bsky.feed.post/3k",
    "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb",
    "did:web:example.com",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "1999-12-31T23:59:59Z",
    "2026-07-04T14:38:07.517Z",
    "2026-07-04T14:38:07.517Z\x00",
    "app.bsky.feed.like/3k",
    "app.bsky.feed.like/..",
    "app.bsky.feed.post/a b",
    "app.bsky.feed.post",
    "app.bsky.graph.follow",
    "create",
    "update",
    "delete",
    "#commit",
    "#identity",
    ".",
    "",
    "x" * 100_000,
]
JSON_ONLY_STRINGS = ["did:plc:\ud800aaaa", "hi \udc00", "\ud83d"]  # lone surrogates: JSON can carry them, CBOR not


class Mutator:
    """Seeded mutations of real frames and Jetstream lines (``random.Random``, so a seed reproduces a run)."""

    def __init__(self, frames: list[bytes], lines: list[dict[str, Any]], seed: int) -> None:
        self.rng = random.Random(seed)
        self.frames = frames
        self.commits = [f for f in frames if libipld.decode_dag_cbor_multi(f)[0].get("t") == "#commit"]
        self.lines = lines

    # --- values --------------------------------------------------------------------------------------------------

    def text(self, json_ok: bool = False) -> str:
        r = self.rng
        pool = HOSTILE_STRINGS + (JSON_ONLY_STRINGS if json_ok else [])
        if r.random() < 0.6:
            return r.choice(pool)
        top = 0x10FFFF if json_ok else 0xD7FF
        return "".join(chr(r.randint(0, top if r.random() < 0.3 else 127)) for _ in range(r.randint(0, 30)))

    def value(self, depth: int = 0, json_ok: bool = False) -> Any:
        r = self.rng
        roll = r.random()
        if depth < 4 and roll < 0.15:
            return [self.value(depth + 1, json_ok) for _ in range(r.randint(0, 3))]
        if depth < 4 and roll < 0.3:
            return {self.text(json_ok): self.value(depth + 1, json_ok) for _ in range(r.randint(0, 3))}
        choices: list[Any] = [
            None,
            r.random() < 0.5,
            r.randint(-(2**64), 2**64 - 1),
            r.randint(-5, 5),
            r.choice([1783175887517000, MIN_TIME_US, MAX_TIME_US - 1, MAX_TIME_US]),
            r.uniform(-1e20, 1e20),
            self.text(json_ok),
        ]
        if json_ok:
            choices += [float("nan"), float("inf"), -float("inf"), 1e30, 2**70]
        else:
            choices += [r.randbytes(r.randint(0, 40)), b"\x01\x71\x12\x20" + r.randbytes(32)]
        return r.choice(choices)

    # --- frames --------------------------------------------------------------------------------------------------

    def frame(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.4:
            return self.bytes_mutation()
        if roll < 0.7:
            return self.value_mutation()
        if roll < 0.95:
            return self.car_mutation()
        return self.deep_splice()

    def bytes_mutation(self) -> bytes:
        r = self.rng
        data = bytearray(r.choice(self.frames))
        for _ in range(r.randint(1, 4)):
            n = len(data)
            pos = r.randrange(max(n, 1))
            how = r.choice(("flip", "truncate", "insert", "delete", "splice", "length", "overwrite"))
            if how == "flip" and n:
                data[pos] ^= r.randint(1, 255)
            elif how == "truncate":
                del data[pos:]
            elif how == "insert":
                data[pos:pos] = r.randbytes(r.randint(1, 16))
            elif how == "delete":
                del data[pos : pos + r.randint(1, 64)]
            elif how == "splice":
                other = r.choice(self.frames)
                data = data[:pos] + other[r.randrange(len(other) + 1) :]
            elif how == "length":
                width = r.randint(0, 3)
                major = r.choice((2, 3, 4, 5))
                data[pos : pos + 1] = bytes([major << 5 | (24 + width)]) + r.getrandbits(8 << width).to_bytes(
                    1 << width, "big"
                )
            else:
                chunk = r.randbytes(r.randint(1, 16))
                data[pos : pos + len(chunk)] = chunk
        return bytes(data)

    def _encode(self, header: dict, body: dict) -> bytes:
        try:
            return libipld.encode_dag_cbor(header) + libipld.encode_dag_cbor(body)
        except (ValueError, TypeError, OverflowError):
            return self.bytes_mutation()  # a value DAG-CBOR cannot hold: fall back to a byte mutation

    def value_mutation(self) -> bytes:
        r = self.rng
        header, body = libipld.decode_dag_cbor_multi(r.choice(self.frames))
        for _ in range(r.randint(1, 3)):
            target = r.choice(("body", "body", "op", "header"))
            if target == "op" and isinstance(body.get("ops"), list) and body["ops"]:
                i = r.randrange(len(body["ops"]))
                op = body["ops"][i] if isinstance(body["ops"][i], dict) else {}
                body["ops"][i] = {**op, r.choice(("action", "path", "cid", "prev", "x")): self.value()}
            elif target == "header":
                header = {**header, r.choice(("t", "op")): self.value()}
            else:
                body = {**body, r.choice([*body, "x"]): self.value()}
        return self._encode(header, body)

    def car_mutation(self) -> bytes:
        r = self.rng
        header, body = libipld.decode_dag_cbor_multi(r.choice(self.commits))
        if r.random() < 0.5:
            data = bytearray(body["blocks"])
            pos = r.randrange(len(data))
            how = r.choice(("flip", "truncate", "insert", "varint"))
            if how == "flip":
                data[pos] ^= r.randint(1, 255)
            elif how == "truncate":
                del data[pos:]
            elif how == "insert":
                data[pos:pos] = r.randbytes(r.randint(1, 12))
            else:
                data[pos:pos] = bytes(0x80 | r.randint(0, 127) for _ in range(r.randint(1, 11)))
            return self._encode(header, {**body, "blocks": bytes(data)})
        roots, blocks = libipld.decode_car(body["blocks"])
        ops = [op for op in body["ops"] if op.get("cid") in blocks]
        if not ops:
            return self._encode(header, body)
        op = r.choice(ops)
        record = dict(blocks[op["cid"]])
        record[r.choice([*record, "subject", "reply", "embed", "x"])] = self.value()
        if r.random() < 0.05:
            data = libipld.encode_dag_cbor({**record, "deep": 0xFEED}).replace(
                libipld.encode_dag_cbor(0xFEED), b"\x81" * r.choice((65, 1000, 5000, 100_000)) + b"\x00"
            )
        else:
            try:
                data = libipld.encode_dag_cbor(record)
            except (ValueError, TypeError, OverflowError):
                return self.bytes_mutation()
        cid = cid_of(data)
        packed = [(c, libipld.encode_dag_cbor(b)) for c, b in blocks.items() if c != op["cid"]] + [(cid, data)]
        ops_out = [{**o, "cid": cid} if o is op else o for o in body["ops"]]
        return self._encode(header, {**body, "ops": ops_out, "blocks": car([roots["roots"][0]], packed)})

    def deep_splice(self) -> bytes:
        """Nesting of 65 to 100,000 levels, or a lying length, spliced into a real header or body."""
        r = self.rng
        header, body = libipld.decode_dag_cbor_multi(r.choice(self.frames))
        depth = r.choice((65, 1000, 5000, 100_000))
        raw = r.choice(
            (
                b"\x81" * depth + b"\x00",
                b"\xa1\x61a" * depth + b"\x00",
                b"\x5b" + r.getrandbits(64).to_bytes(8, "big"),
                b"\x9b" + r.getrandbits(64).to_bytes(8, "big"),
            )
        )
        marker = libipld.encode_dag_cbor(0xFEED)
        if r.random() < 0.2:
            return libipld.encode_dag_cbor({**header, "x": 0xFEED}).replace(marker, raw) + libipld.encode_dag_cbor(body)
        return libipld.encode_dag_cbor(header) + libipld.encode_dag_cbor({**body, "x": 0xFEED}).replace(marker, raw)

    # --- Jetstream -----------------------------------------------------------------------------------------------

    PATHS = (
        ("did",),
        ("time_us",),
        ("kind",),
        ("commit",),
        ("commit", "operation"),
        ("commit", "collection"),
        ("commit", "rkey"),
        ("commit", "rev"),
        ("commit", "cid"),
        ("commit", "record"),
        ("commit", "record", "subject"),
        ("commit", "record", "subject", "uri"),
        ("commit", "record", "reply", "parent", "uri"),
        ("commit", "record", "text"),
        ("identity", "seq"),
        ("account", "time"),
        ("x",),
    )

    def line(self) -> Any:
        r = self.rng
        if r.random() < 0.05:
            return self.value(json_ok=True)
        line: Any = json.loads(json.dumps(r.choice(self.lines)))
        for _ in range(r.randint(1, 3)):
            line = _set_path(line, r.choice(self.PATHS), self.value(json_ok=True))
        if r.random() < 0.02:
            deep: Any = 0
            for _ in range(r.choice((65, 500, 900))):
                deep = [deep]
            line = _set_path(line, ("commit", "record", "x"), deep)
        return line


def _set_path(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    if not path or not isinstance(obj, dict):
        return value
    return {**obj, path[0]: _set_path(obj.get(path[0]), path[1:], value)}


def violations(d: Any) -> list[str]:
    """The invariants a decoder result breaks (empty when it is clean)."""
    if not isinstance(d, Decoded):
        return [f"returned {type(d).__name__}"]
    out = []
    if d.error not in ("", *ERROR_REASONS):
        out.append(f"unknown error reason {d.error!r}")
    if not set(d.skipped) <= set(SKIP_REASONS) or any(n <= 0 for n in d.skipped.values()):
        out.append(f"bad skipped {dict(d.skipped)!r}")
    if len(d.detail) > MAX_DETAIL_CHARS or not d.detail.isprintable():
        out.append("detail too long or unprintable")
    if len(d.type) > 64 or not d.type.isprintable():
        out.append("type too long or unprintable")
    if d.error and d.events:
        out.append("events with an error")
    for e in d.events:
        if not is_valid_did(e.actor):
            out.append(f"invalid actor {e.actor[:60]!r}")
        if e.subject and not is_valid_did(e.subject):
            out.append(f"invalid subject {e.subject[:60]!r}")
        if e.kind not in KINDS:
            out.append(f"unknown kind {e.kind!r}")
        if type(e.time_us) is not int or not MIN_TIME_US <= e.time_us < MAX_TIME_US:
            out.append(f"time_us {e.time_us!r}")
        if e.operation and not (is_valid_nsid(e.collection) and is_valid_rkey(e.rkey)):
            out.append(f"invalid path {e.collection[:60]!r}/{e.rkey[:60]!r}")
        try:
            for s in (e.collection, e.rkey, e.operation, e.rev, e.cid):
                s.encode("utf-8")
            json.dumps({"record": e.record, "extra": e.extra}, ensure_ascii=False).encode("utf-8")
            if nesting_exceeds((e.record, e.extra)):
                out.append("record nested too deep")
        except Exception as exc:  # any failure here is a finding
            out.append(f"event not serializable: {type(exc).__name__}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutations", type=int, default=100_000, help="mutated relay frames to decode")
    parser.add_argument("--lines", type=int, default=None, help="mutated Jetstream lines (default: --mutations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-dir", type=Path, default=SAMPLE_DIR)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    lines_wanted = args.mutations if args.lines is None else args.lines

    from streamer.sources.archive import read_archive

    frames = [i.frame for i in read_archive(args.sample_dir / "frames.bin.zst") if i.frame is not None]
    golden = [json.loads(x) for x in (args.sample_dir / "golden_v1.jsonl").read_text().splitlines() if x.strip()]
    mutator = Mutator(frames, golden, args.seed)

    results: dict[str, Counter[str]] = {"frames": Counter(), "jetstream": Counter()}
    skipped: dict[str, Counter[str]] = {"frames": Counter(), "jetstream": Counter()}
    uncaught: Counter[str] = Counter()
    broken: Counter[str] = Counter()
    examples: list[str] = []
    decode_s = 0.0
    start = time.perf_counter()
    for source, count in (("frames", args.mutations), ("jetstream", lines_wanted)):
        for i in range(count):
            item = mutator.frame() if source == "frames" else mutator.line()
            t = time.perf_counter()
            try:
                d = decode_frame(item, records=i % 2 == 1) if source == "frames" else from_jetstream(item)
            except Exception as exc:  # the decoders promise not to raise; count what escapes
                decode_s += time.perf_counter() - t
                uncaught[f"{source}: {type(exc).__name__}"] += 1
                if len(examples) < 5:
                    examples.append(f"{source} #{i}: {traceback.format_exc(limit=3)[-600:]}")
                continue
            decode_s += time.perf_counter() - t
            results[source][d.error or "ok"] += 1
            skipped[source].update(d.skipped)
            for problem in violations(d):
                broken[f"{source}: {problem.split(' ', 2)[0]} {problem.split(' ', 2)[1:2]}"] += 1
                if len(examples) < 5:
                    examples.append(f"{source} #{i}: {problem}")
    seconds = time.perf_counter() - start

    tried = args.mutations + lines_wanted
    print(f"inputs tried: {tried:,} ({args.mutations:,} mutated relay frames, {lines_wanted:,} Jetstream lines)")
    for source in ("frames", "jetstream"):
        print(f"{source} results: " + ", ".join(f"{k} {v:,}" for k, v in results[source].most_common()))
        if skipped[source]:
            print(f"{source} skipped ops: " + ", ".join(f"{k} {v:,}" for k, v in skipped[source].most_common()))
    print(f"uncaught exceptions: {sum(uncaught.values())}" + (f" {dict(uncaught)}" if uncaught else ""))
    print(f"invariant violations: {sum(broken.values())}" + (f" {dict(broken)}" if broken else ""))
    for example in examples:
        print("  " + example.replace("\n", "\n  "))
    print(f"seconds: {seconds:.1f} total, {decode_s:.1f} in the decoders ({tried / decode_s:,.0f} inputs/s)")
    if args.json:
        figures = {
            "seed": args.seed,
            "inputs": tried,
            "results": {k: dict(v) for k, v in results.items()},
            "skipped": {k: dict(v) for k, v in skipped.items()},
            "uncaught": dict(uncaught),
            "violations": dict(broken),
            "seconds": seconds,
            "decode_seconds": decode_s,
        }
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 1 if uncaught or broken else 0


if __name__ == "__main__":
    sys.exit(main())
