"""A poison archive: the bundled archive with hostile items spliced into its middle (a newline in a DID, a commit
from 2100 and one from 1970, CBOR nested 5,000 deep, absurd CBOR lengths, Jetstream lines with a lone surrogate, an
infinite or NaN ``time_us``). It replays with exit 0, every poison item counted by its reason, and the state it
leaves is the clean archive's state, item for item; a resume from its checkpoint gives the same state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import libipld
import pytest

from streamer.app.replay import replay, replay_archive
from streamer.core.events import rfc3339
from streamer.core.state import AgentState
from streamer.sources.archive import ArchiveWriter, read_archive
from streamer.sources.relay_server import with_seq
from streamer.testing.encode import commit_frame
from streamer.testing.synth import default_archive

SPLICE_AT = 6000
POISON_ACTOR = "did:plc:poisonpoisonpoisonpoison"


def _deep(depth: int) -> bytes:
    """A DAG-CBOR value nested ``depth`` arrays deep (0x81 = array of one item), ending in 0."""
    return b"\x81" * depth + b"\x00"


def _poison_frames(t_us: int) -> dict[str, bytes]:
    """Hostile frames by the reason they must be counted under; seqs are set when spliced."""
    like = "app.bsky.feed.like"
    subject = {"uri": "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3k", "cid": "bafyreib"}
    record = {"$type": like, "subject": subject, "createdAt": rfc3339(t_us)}
    out = {
        "newline_repo": commit_frame(0, "did:plc:evil\nline", t_us, [("create", like, "3kaaa", record)]),
        "newline_subject": commit_frame(
            0,
            POISON_ACTOR,
            t_us,
            [
                (
                    "create",
                    like,
                    "3kaab",
                    {**record, "subject": {**subject, "uri": "at://did:plc:a\nb/app.bsky.feed.post/1"}},
                )
            ],
        ),
        "far_future": commit_frame(0, POISON_ACTOR, 4_102_444_800_000_000, [("create", like, "3kaac", record)]),
        "far_past": commit_frame(0, POISON_ACTOR, 1_000_000, [("create", like, "3kaad", record)]),  # 1970
        "before_window": commit_frame(0, POISON_ACTOR, t_us - 30 * 86_400_000_000, [("create", like, "3kaae", record)]),
    }
    header = libipld.encode_dag_cbor({"op": 1, "t": "#commit"})
    out["deep_body"] = header + b"\xa2\x63seq\x01\x64deep" + _deep(5000)  # {"seq": 1, "deep": [[[...]]]}
    out["huge_length"] = header + b"\xa1\x63seq\x5b" + (2**60).to_bytes(8, "big")  # a 2^60-byte string, cut short
    return out


def _jetstream_poison(t_us: int) -> list[str]:
    base = {"did": POISON_ACTOR, "kind": "commit", "time_us": t_us}
    commit = {"rev": "3k", "operation": "create", "collection": "app.bsky.feed.like", "rkey": "3kzz", "record": {}}
    return [
        json.dumps({**base, "did": "did:plc:\ud800x", "commit": commit}),  # a lone surrogate, escaped as JSON allows
        json.dumps({**base, "time_us": float("inf"), "commit": commit}),  # Infinity
        json.dumps({**base, "time_us": float("nan"), "commit": commit}),  # NaN
    ]


def _write(directory: Path, frames: list[bytes], jetstream: list[str]) -> Path:
    with ArchiveWriter(directory / "a", source="test") as writer:
        for seq, raw in enumerate(frames, start=1):
            frame = raw
            with contextlib.suppress(ValueError, TypeError, OverflowError, RecursionError):  # undecodable poison
                frame = with_seq(raw, seq)
            writer.write(frame, seq)
    if jetstream:
        (directory / "a" / "zz-jetstream.jsonl").write_text("\n".join(jetstream) + "\n")
    return directory / "a"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    clean = [item.frame for item in read_archive(default_archive()) if item.frame is not None]
    t_us = json_time(clean[SPLICE_AT])
    poison = list(_poison_frames(t_us).values())
    clean_dir = _write(tmp_path_factory.mktemp("clean"), clean, [])
    poison_dir = _write(
        tmp_path_factory.mktemp("poison"), clean[:SPLICE_AT] + poison + clean[SPLICE_AT:], _jetstream_poison(t_us)
    )
    return clean_dir, poison_dir, len(poison)


def json_time(frame: bytes) -> int:
    from streamer.core.events import parse_time_us

    return parse_time_us(libipld.decode_dag_cbor_multi(frame)[1]["time"])


def _by_did(state: AgentState) -> dict[str, Any]:
    snap = state.snapshot()
    x = {d: float(v) for d, v in zip(snap.dids, snap.x, strict=True) if v}
    vis = {d: float(v) for d, v in zip(snap.dids, snap.visibility, strict=True) if v}
    g = snap.graph
    edges = set()
    if g is not None:
        pairs = zip(g.attender.tolist(), g.source.tolist(), g.weight.tolist(), strict=True)
        edges = {(snap.dids[a], snap.dids[s], float(v)) for a, s, v in pairs}
    return {"x": x, "visibility": vis, "edges": edges}


def test_a_poison_archive_replays_counting_every_poison_item_and_keeps_the_clean_state(
    archives: tuple[Path, Path, int],
) -> None:
    clean_dir, poison_dir, _ = archives
    clean = replay(clean_dir)
    poisoned = replay(poison_dir)
    st = poisoned.stats
    reasons = {**st.errors, **st.skipped}
    for reason in ("bad_did", "bad_subject", "future_time", "late", "too_deep", "bad_cbor", "bad_time"):
        assert reasons.get(reason, 0) >= 1, f"{reason} not counted: {reasons}"
    assert st.errors["bad_time"] == 3, "a commit from 1970, Infinity and NaN time_us"
    a, b = _by_did(clean.state), _by_did(poisoned.state)
    assert b["edges"] == a["edges"], "no poison item adds or removes attention"
    assert {d: v for d, v in b["x"].items() if d != POISON_ACTOR} == a["x"], "activity of every clean agent intact"
    assert b["x"].get(POISON_ACTOR, 0) <= 1, "only the like with a bad subject counts, as activity without an edge"
    assert all("\n" not in d and d.isprintable() for d in poisoned.state.dids)


def test_the_poison_archive_resumes_from_its_checkpoint_to_the_same_state(
    archives: tuple[Path, Path, int], tmp_path: Path
) -> None:
    _, poison_dir, _ = archives
    whole = _by_did(replay(poison_dir).state)
    ckpt = tmp_path / "ckpt"

    async def stopped_after_the_poison() -> Any:
        stop = asyncio.Event()

        def check(source: Any, _pipe: Any) -> None:
            if source.position >= SPLICE_AT + 20:
                stop.set()

        return await replay_archive(poison_dir, checkpoint_dir=ckpt, on_progress=check, progress_every=1, stop=stop)

    first = asyncio.run(stopped_after_the_poison())
    assert first.interrupted and first.position >= SPLICE_AT + 20
    second = replay(poison_dir, checkpoint_dir=ckpt)
    assert second.resumed_from == first.position and not second.interrupted
    assert _by_did(second.state) == whole


def test_the_cli_replays_the_poison_archive_with_exit_0(archives: tuple[Path, Path, int], tmp_path: Path) -> None:
    _, poison_dir, _ = archives
    proc = subprocess.run(
        [sys.executable, "-m", "streamer", "replay", str(poison_dir), "--no-progress", "--quiet", "--json",
         "--interval", "43200", "--checkpoint-dir", str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["stats"]["errors"].get("too_deep", 0) == 1
