"""Replay: determinism, exact accounting of bad input, and resuming from a checkpoint after a crash."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import libipld
import numpy as np
import pytest
from typer.testing import CliRunner

from streamer.app.cli import app
from streamer.app.replay import replay
from streamer.core.ingest import Ingestor
from streamer.core.state import AgentState, StateConfig
from streamer.sources.archive import ArchiveWriter
from streamer.testing.encode import commit_frame

runner = CliRunner()


def _same_snapshot(a: AgentState, b: AgentState) -> None:
    sa, sb = a.snapshot(), b.snapshot()
    assert sa.dids == sb.dids
    np.testing.assert_array_equal(sa.x, sb.x)
    np.testing.assert_array_equal(sa.visibility, sb.visibility)
    for f in ("attender", "source", "weight"):
        np.testing.assert_array_equal(getattr(sa.graph, f), getattr(sb.graph, f))
    assert a.counters == b.counters


def _archive(tmp_path: Path, frames: list[bytes]) -> Path:
    with ArchiveWriter(tmp_path / "arch", "test", flush_every=16) as w:
        for i, f in enumerate(frames):
            w.write(f, i)
    return tmp_path / "arch"


def test_two_replays_give_identical_state(sample_dir: Path) -> None:
    a = replay(sample_dir / "frames.bin.zst")
    b = replay(sample_dir / "frames.bin.zst")
    _same_snapshot(a.state, b.state)
    assert a.stats.as_dict() == b.stats.as_dict()
    assert a.cursor == 31527015471 and a.position == 150


def test_bad_frames_are_counted_and_nothing_accepted_is_lost(tmp_path: Path, sample_frames: list[bytes]) -> None:
    header, body = libipld.decode_dag_cbor_multi(sample_frames[3])
    bad_car = libipld.encode_dag_cbor(header) + libipld.encode_dag_cbor({**body, "blocks": b"\x05junk!"})
    unknown = libipld.encode_dag_cbor({**header, "t": "#labels"}) + libipld.encode_dag_cbor(body)
    huge = sample_frames[5] + bytes(6 * 1024 * 1024)
    # a record of a type nobody told us about, from an account that does nothing else
    odd_type = commit_frame(
        31527015500, "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz", 1783175887600000,
        [("create", "com.example.unknown.thing", "3k", {"$type": "com.example.unknown.thing", "x": 1})],
    )  # fmt: skip
    mixed = [*sample_frames[:50], b"\xff\xfe random", bad_car, unknown, huge, *sample_frames[50:], odd_type]
    result = replay(_archive(tmp_path, mixed))
    stats = result.stats
    assert stats.errors == {"bad_cbor": 1, "bad_car": 1, "unknown_type": 1, "too_big": 1}
    assert stats.items == len(mixed)
    clean = replay(_archive(tmp_path / "clean", sample_frames))
    assert stats.events - clean.stats.events == {"other": 1}, "the unknown record type is counted as other"
    got, ref = result.state.snapshot(), clean.state.snapshot()
    assert got.dids == [*ref.dids, "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz"]
    np.testing.assert_array_equal(got.x, [*ref.x, 0.0])  # "other" records carry no activity or attention
    for f in ("attender", "source", "weight"):
        np.testing.assert_array_equal(getattr(got.graph, f), getattr(ref.graph, f))


def test_duplicate_frames_are_not_counted_twice(sample_frames: list[bytes]) -> None:
    ing = Ingestor(AgentState())
    for f in [*sample_frames[:80], *sample_frames[60:]]:  # a reconnect that re-sends 20 frames
        ing.feed(f)
    ref = Ingestor(AgentState())
    for f in sample_frames:
        ref.feed(f)
    assert ing.stats.duplicates == 20
    _same_snapshot(ing.state, ref.state)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [1, 37, 149])
def test_resume_after_a_crash_equals_an_uninterrupted_replay(tmp_path: Path, sample_dir: Path, crash_at: int) -> None:
    archive = sample_dir / "frames.bin.zst"
    ckpt = tmp_path / "ckpt"

    def crash(source: Any, _pipe: Any) -> None:
        if source.position == crash_at:
            raise _Crash

    with pytest.raises(_Crash):
        replay(archive, checkpoint_dir=ckpt, checkpoint_every_items=10, on_progress=crash, progress_every=1)
    resumed = replay(archive, checkpoint_dir=ckpt, checkpoint_every_items=10)
    assert resumed.resumed_from == (crash_at // 10) * 10
    _same_snapshot(resumed.state, replay(archive).state)
    again = replay(archive, checkpoint_dir=ckpt)  # a finished replay resumes at the end: nothing double-counted
    assert again.resumed_from == 150
    _same_snapshot(again.state, resumed.state)


def test_checkpoint_made_with_another_window_is_refused(tmp_path: Path, sample_dir: Path) -> None:
    replay(sample_dir / "frames.bin.zst", checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="another window"):
        replay(sample_dir / "frames.bin.zst", checkpoint_dir=tmp_path, config=StateConfig(buckets=3))


def test_replay_and_events_commands(tmp_path: Path, sample_dir: Path) -> None:
    out = tmp_path / "snap.npz"
    result = runner.invoke(app, ["replay", str(sample_dir / "frames.bin.zst"), "--json", "--snapshot-out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stats"]["items"] == 150 and summary["stats"]["errors"] == {}
    assert sum(summary["stats"]["events"].values()) == 152
    data = np.load(out)
    assert len(data["x"]) == summary["state"]["agents"] and len(data["attender"]) == summary["state"]["edges"]
    events = runner.invoke(app, ["events", str(sample_dir / "frames.bin.zst")])
    lines = [json.loads(x) for x in events.stdout.splitlines()]
    assert len(lines) == 152
    first = lines[0]
    assert first["kind"] == "commit" and first["commit"]["collection"] == "app.bsky.feed.like"
    assert first["skyattr"]["event"] == "like" and first["skyattr"]["subject"].startswith("did:")
    assert first["commit"]["cid"].startswith("bafyrei")
    # time_us is monotone (a consumer resumes or deduplicates on it), the commit time and the seq stay available
    times = [line["time_us"] for line in lines]
    commits = [line["skyattr"]["commit_time_us"] for line in lines]
    assert all(a < b for a, b in itertools.pairwise(times)), "time_us strictly increasing"
    assert any(b < a for a, b in itertools.pairwise(commits)), "the real commit times do go back"
    assert all(t >= c for t, c in zip(times, commits, strict=True))
    assert [line["skyattr"]["cursor"] for line in lines] == [line["skyattr"]["seq"] for line in lines]
    bad = tmp_path / "junk.bin"
    bad.write_bytes(b"\x00" * 100)
    result = runner.invoke(app, ["replay", str(bad)])
    assert result.exit_code == 2 and "nothing readable" in result.output
    result = runner.invoke(app, ["replay", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "does not exist" in result.output
