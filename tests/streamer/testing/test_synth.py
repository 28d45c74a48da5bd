"""``skyattr synth``: synthetic archives must be real wire format (our decoder and the atproto SDK read them, every
CID is the hash of its block), follow the intended model (event mix, heavy tail, subjects that exist earlier in the
archive), and be reproducible byte for byte, the bundled default archive included."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from pathlib import Path
from typing import Any

import libipld
import pytest
from atproto import CAR, firehose_models, parse_subscribe_repos_message
from typer.testing import CliRunner

from streamer.app.cli import app
from streamer.core.events import parse_time_us, rfc3339
from streamer.core.frames import Decoded, decode_frame
from streamer.sources.archive import ReadReport, read_archive
from streamer.testing.encode import account_frame, commit_frame, tid, varint
from streamer.testing.synth import DEFAULT_START_US, MIX, default_archive, synth_frames, write_synth_archive

runner = CliRunner()
DID = re.compile(r"^did:plc:[a-z2-7]{24}$")
DAG_CBOR_SHA256 = b"\x01\x71\x12\x20"
POST_KINDS = ("post", "reply", "quote")
DID_A = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"


@pytest.fixture(scope="module")
def default_frames() -> list[bytes]:
    return [item.frame for item in read_archive(default_archive()) if item.frame is not None]


@pytest.fixture(scope="module")
def decoded(default_frames: list[bytes]) -> list[Decoded]:
    return [decode_frame(f, records=True) for f in default_frames]


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _car_blocks(car: bytes) -> tuple[dict, list[tuple[bytes, bytes]]]:
    """Our own reading of a CAR v1 file (independent of the encoder): header, then (cid, data) pairs. All CIDs here
    are CIDv1 dag-cbor/sha2-256, 36 bytes."""
    size, pos = _read_varint(car, 0)
    header = libipld.decode_dag_cbor(car[pos : pos + size])
    pos += size
    blocks = []
    while pos < len(car):
        size, pos = _read_varint(car, pos)
        blocks.append((car[pos : pos + 36], car[pos + 36 : pos + size]))
        pos += size
    return header, blocks


def test_bundled_archive_is_small_and_fully_readable(default_frames: list[bytes]) -> None:
    path = default_archive()
    # ~4 KB a frame (real ones ~5.5 KB): MST proofs are hashes, which barely compress
    assert path.is_file() and path.stat().st_size < 10 * 1024 * 1024
    report = ReadReport()
    frames = sum(1 for _ in read_archive(path, report))
    fr = report.files[0]
    assert fr.layout == "skyattr" and not fr.error
    assert fr.header is not None and fr.header["source"] == "synth:agents=2000,hours=24,seed=0"
    assert fr.trailer == {"last_seq": frames, "frames": frames} and frames == len(default_frames) > 5000


def test_every_frame_decodes_with_nothing_skipped(decoded: list[Decoded]) -> None:
    assert [d.error for d in decoded if d.error] == []
    assert sum((d.skipped for d in decoded), Counter()) == Counter()
    assert all(d.events for d in decoded)
    assert [d.seq for d in decoded] == list(range(1, len(decoded) + 1))
    times = [d.events[0].time_us for d in decoded]
    assert all(a <= b for a, b in itertools.pairwise(times))
    assert times[0] >= DEFAULT_START_US and times[-1] < DEFAULT_START_US + 24 * 3_600_000_000
    assert Counter(d.type for d in decoded).keys() == {"#commit", "#identity", "#account"}
    assert all(DID.match(e.actor) for d in decoded for e in d.events)


def test_the_atproto_sdk_reads_every_frame(default_frames: list[bytes], decoded: list[Decoded]) -> None:
    ops = 0
    for frame, ours in zip(default_frames, decoded, strict=True):
        msg = parse_subscribe_repos_message(firehose_models.Frame.from_bytes(frame))
        assert msg.seq == ours.seq
        if ours.type != "#commit":
            assert msg.did == ours.events[0].actor
            continue
        car = CAR.from_bytes(msg.blocks)
        assert car.root == msg.commit and msg.commit in car.blocks
        assert car.blocks[msg.commit]["did"] == msg.repo
        assert parse_time_us(msg.time) == ours.events[0].time_us
        for op in msg.ops:
            if op.action != "delete":
                assert op.cid in car.blocks
                ops += 1
    assert ops > 0.9 * len(default_frames)


def test_every_block_cid_is_the_hash_of_its_bytes(default_frames: list[bytes]) -> None:
    for frame in default_frames[:3000]:
        header, body = libipld.decode_dag_cbor_multi(frame)
        if header["t"] != "#commit":
            continue
        car_header, blocks = _car_blocks(body["blocks"])
        assert car_header == {"version": 1, "roots": [body["commit"]]}
        by_cid = {}
        for cid, data in blocks:
            assert cid == DAG_CBOR_SHA256 + hashlib.sha256(data).digest()
            by_cid[cid] = libipld.decode_dag_cbor(data)
        assert by_cid == libipld.decode_car(body["blocks"])[1]
        commit = by_cid[body["commit"]]
        assert commit["version"] == 3 and commit["did"] == body["repo"] and commit["rev"] == body["rev"]
        assert commit["data"] in by_cid and isinstance(commit["sig"], bytes) and len(commit["sig"]) == 64
        for op in body["ops"]:
            assert (op["cid"] in by_cid) == (op["action"] != "delete")


def test_event_mix_follows_the_real_sample(decoded: list[Decoded]) -> None:
    kinds = Counter(e.kind for d in decoded for e in d.events)
    total = sum(kinds.values())
    share = {k: v / total for k, v in kinds.items()}
    assert share["like"] == pytest.approx(0.70, abs=0.03)
    assert share["repost"] == pytest.approx(0.10, abs=0.02)
    assert sum(share[k] for k in POST_KINDS) == pytest.approx(0.11, abs=0.02)
    assert share["reply"] > 0.02 and share["quote"] > 0.003 and share["post"] > share["reply"]
    assert share["follow"] == pytest.approx(0.04, abs=0.01)
    assert share["delete"] == pytest.approx(0.03, abs=0.01)
    assert 0 < share["block"] < 0.015 and 0 < share["profile"] < 0.01
    assert kinds["identity"] == kinds["account"] > 0 and share["identity"] < 0.01
    others = {e.collection for d in decoded for e in d.events if e.kind == "other"}
    assert others == {"app.bsky.feed.threadgate"} and share["other"] < 0.01  # gates beside posts (sample: 1.4 %)
    assert sum(MIX.values()) == pytest.approx(1.0, abs=1e-9)


def test_subjects_exist_earlier_in_the_archive(decoded: list[Decoded]) -> None:
    """Every like/repost/reply/quote points at a live post created earlier, every follow/block at an account seen
    earlier, and every delete at a record its actor created earlier."""
    seen: set[str] = set()
    live: dict[str, str] = {}  # at:// uri of a live record -> author DID
    checked = Counter()
    for d in decoded:
        for e in d.events:
            uri = f"at://{e.actor}/{e.collection}/{e.rkey}"
            if e.kind in ("like", "repost", "reply", "quote"):
                record = e.record or {}
                if e.kind in ("like", "repost"):
                    target = record["subject"]["uri"]
                elif e.kind == "reply":
                    target = record["reply"]["parent"]["uri"]
                    assert record["reply"]["root"]["uri"].startswith("at://")
                else:
                    target = record["embed"]["record"]["uri"]
                assert target in live and live[target] == e.subject and "/app.bsky.feed.post/" in target
            if e.kind in ("like", "repost", "reply", "quote", "follow", "block"):
                assert e.subject in seen and e.subject != e.actor and DID.match(e.subject)
                checked[e.kind] += 1
            if e.operation == "create":
                live[uri] = e.actor
            elif e.operation == "delete":
                assert live.pop(uri) == e.actor
            seen.add(e.actor)
    assert min(checked[k] for k in ("like", "repost", "reply", "quote", "follow", "block")) > 0


def test_attention_is_heavy_tailed_with_a_large_tail(decoded: list[Decoded]) -> None:
    """Top 1% of the 2000 agents receive over a quarter of likes and reposts (a flat model gives ~1%), yet agents
    outside the top 10% still receive over a fifth (pure preferential attachment leaves them ~2%)."""
    agents = 2000
    received = Counter(e.subject for d in decoded for e in d.events if e.kind in ("like", "repost"))
    counts = sorted(received.values(), reverse=True)
    total = sum(counts)
    top1, top10 = sum(counts[: agents // 100]) / total, sum(counts[: agents // 10]) / total
    assert top1 > 0.25
    assert 1.0 - top10 > 0.20
    assert len(received) > agents // 5
    activity = sorted(Counter(e.actor for d in decoded for e in d.events).values(), reverse=True)
    assert sum(activity[: agents // 100]) / sum(activity) > 0.10  # a few very active accounts
    assert len(activity) < 0.9 * agents  # and a silent part of the population


def test_synth_is_deterministic() -> None:
    first = list(synth_frames(300, 4, seed=5))
    assert first == list(synth_frames(300, 4, seed=5))
    other = list(synth_frames(300, 4, seed=6))
    assert other != first and {f for _, f in other}.isdisjoint(f for _, f in first)
    shifted = list(synth_frames(300, 4, seed=5, start_time_us=DEFAULT_START_US + 3_600_000_000, first_seq=1000))
    assert [s for s, _ in shifted] == list(range(1000, 1000 + len(shifted)))


def test_archive_files_are_byte_identical(tmp_path: Path) -> None:
    a = write_synth_archive(tmp_path / "a.skyarch.zst", 200, 3, seed=1)
    b = write_synth_archive(tmp_path / "b.skyarch.zst", 200, 3, seed=1)
    assert a.frames > 50 and a.path.read_bytes() == b.path.read_bytes()
    assert not list(tmp_path.glob(".*tmp"))


def test_bundled_archive_is_what_the_command_regenerates(default_frames: list[bytes]) -> None:
    assert [f for _, f in synth_frames(2000, 24, seed=0)] == default_frames


def test_cli_writes_a_readable_skyattr_archive(tmp_path: Path) -> None:
    out = tmp_path / "s.skyarch.zst"
    args = ["synth", "--agents", "300", "--hours", "2", "--seed", "4", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "frames" in result.stdout and "like=" in result.stdout, "the line naming the file is the result: stdout"
    report = ReadReport()
    frames = [item.frame for item in read_archive(out, report)]
    fr = report.files[0]
    assert fr.layout == "skyattr" and not fr.error
    assert fr.header is not None and fr.trailer is not None
    assert fr.header["format"] == "skyattr-frames" and fr.header["version"] == 1
    assert fr.header["source"] == "synth:agents=300,hours=2,seed=4" and fr.header["first_seq"] == 1
    assert fr.header["created"] == "2026-07-04T00:00:00+00:00"
    assert fr.trailer == {"last_seq": len(frames), "frames": len(frames)}
    assert frames == [f for _, f in synth_frames(300, 2, seed=4)]
    again = runner.invoke(app, [*args[:-1], str(tmp_path)])  # a directory gets a named file inside it
    assert again.exit_code == 0 and (tmp_path / "synth-300-2h-4.skyarch.zst").read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agents", "1"], "--agents"),
        (["--agents", "-5"], "--agents"),
        (["--hours", "0"], "--hours"),
        (["--hours", "-2"], "--hours"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "bad.skyarch.zst"
    result = runner.invoke(app, ["synth", *args, "--out", str(out)])
    assert result.exit_code == 2
    assert message in result.stderr and not out.exists()


def test_encoder_primitives() -> None:
    assert varint(0) == b"\x00" and varint(127) == b"\x7f" and varint(300) == b"\xac\x02"
    assert rfc3339(DEFAULT_START_US + 1_517_999) == "2026-07-04T00:00:01.517Z"
    ids = [tid(DEFAULT_START_US + k * 1000, k) for k in range(100)]
    assert ids == sorted(ids) and all(len(i) == 13 for i in ids)
    frame = account_frame(9, DID_A, DEFAULT_START_US, False, "deactivated")
    msg = parse_subscribe_repos_message(firehose_models.Frame.from_bytes(frame))
    assert msg.active is False and msg.status == "deactivated"
    with pytest.raises(ValueError, match="needs a record"):
        commit_frame(1, DID_A, DEFAULT_START_US, [("create", "app.bsky.feed.like", "k", None)])


def test_an_interrupted_synth_leaves_no_file_and_no_temporary_one(tmp_path: Path, monkeypatch: Any) -> None:
    from streamer.testing import synth

    real = synth.synth_frames

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        for n, item in enumerate(real(*args, **kwargs)):
            if n == 2500:  # past the first zstd frame already written
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(synth, "synth_frames", interrupted)
    target = tmp_path / "a.skyarch.zst"
    with pytest.raises(KeyboardInterrupt):
        synth.write_synth_archive(target, 2000, 24, 0)
    assert list(tmp_path.iterdir()) == []
