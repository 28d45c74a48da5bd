"""Archives: skyattr's own rotated format, the sample's headerless layout, Jetstream JSONL, and damaged files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import zstandard

from streamer.core.frames import decode_frame
from streamer.sources.archive import ArchiveWriter, ReadReport, read_archive


def _frames(path: Path, report: ReadReport | None = None) -> list[bytes]:
    return [i.frame for i in read_archive(path, report) if i.frame is not None]


def test_writer_round_trips_and_rotates(tmp_path: Path, sample_frames: list[bytes]) -> None:
    with ArchiveWriter(tmp_path, "wss://relay.test", rotate_bytes=150_000, flush_every=10) as w:
        for f in sample_frames:
            w.write(f, decode_frame(f).seq)
    assert len(w.paths) > 1, "rotation by size"
    report = ReadReport()
    assert _frames(tmp_path, report) == sample_frames
    assert all(f.layout == "skyattr" and f.header and f.trailer for f in report.files)
    assert report.files[0].header["source"] == "wss://relay.test"
    assert report.files[0].header["first_seq"] == decode_frame(sample_frames[0]).seq
    assert report.files[-1].trailer["last_seq"] == decode_frame(sample_frames[-1]).seq
    assert sum(f.trailer["frames"] for f in report.files) == len(sample_frames)
    # a standard zstd tool reads the content too: headers are skippable frames
    with open(w.paths[0], "rb") as fh:
        content = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()
    assert struct.unpack("<I", content[:4])[0] == len(sample_frames[0])


def test_a_crash_before_close_loses_at_most_the_unflushed_frames(tmp_path: Path, sample_frames: list[bytes]) -> None:
    w = ArchiveWriter(tmp_path, "test", flush_every=20)
    for f in sample_frames[:50]:
        w.write(f, decode_frame(f).seq)
    w._fh.flush()  # the process dies here: no close, no trailer
    report = ReadReport()
    got = _frames(tmp_path, report)
    assert got == sample_frames[:40]
    assert report.files[0].trailer is None and report.files[0].error == ""


def test_truncated_file_yields_the_readable_prefix(tmp_path: Path, sample_frames: list[bytes]) -> None:
    with ArchiveWriter(tmp_path / "a", "test", flush_every=10) as w:
        for f in sample_frames:
            w.write(f, decode_frame(f).seq)
    data = w.paths[0].read_bytes()
    cut = tmp_path / "cut.skyarch.zst"
    cut.write_bytes(data[: len(data) // 2])
    report = ReadReport()
    got = _frames(cut, report)
    assert 0 < len(got) < len(sample_frames)
    assert got == sample_frames[: len(got)], "nothing out of order or altered"
    assert report.files[0].error and report.files[0].stopped_at is not None
    assert report.readable


def test_random_bytes_are_reported_not_raised(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    report = ReadReport()
    assert _frames(junk, report) == []
    assert not report.readable and report.errors
    zjunk = tmp_path / "junk.zst"
    zjunk.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(4096))
    report = ReadReport()
    assert _frames(zjunk, report) == [] and not report.readable
    with pytest.raises(FileNotFoundError):
        list(read_archive(tmp_path / "absent"))


def test_headerless_and_plain_layouts(tmp_path: Path, sample_dir: Path, sample_frames: list[bytes]) -> None:
    report = ReadReport()
    assert len(_frames(sample_dir / "frames.bin.zst", report)) == 150
    assert report.files[0].layout == "length-prefixed"
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"".join(struct.pack("<I", len(f)) + f for f in sample_frames[:5]))
    assert _frames(plain) == sample_frames[:5]


def test_jetstream_jsonl_plain_and_zstd(tmp_path: Path, sample_dir: Path) -> None:
    text = (sample_dir / "golden_v1.jsonl").read_bytes()
    z = tmp_path / "events.jsonl.zst"
    z.write_bytes(zstandard.ZstdCompressor().compress(text + b"{not json\n"))
    report = ReadReport()
    items = list(read_archive(z, report))
    assert len(items) == 10 and all(isinstance(i.json, dict) for i in items)
    assert report.files[0].layout == "jetstream-jsonl" and report.bad_lines == 1
    assert [i.json for i in items] == [json.loads(x) for x in text.splitlines() if x.strip()]


def test_a_frame_archive_starting_with_a_brace_byte_is_not_json(tmp_path: Path, sample_frames: list[bytes]) -> None:
    """A first frame of 0x17B bytes makes the file start with b"{"; it must still be read as frames."""
    frame = sample_frames[0]
    padded = frame + bytes((0x7B - len(frame)) % 256)
    assert len(padded) % 256 == 0x7B
    plain = tmp_path / "brace.bin"
    plain.write_bytes(struct.pack("<I", len(padded)) + padded + struct.pack("<I", len(frame)) + frame)
    report = ReadReport()
    assert _frames(plain, report) == [padded, frame]
    assert report.files[0].layout == "length-prefixed"
    with ArchiveWriter(tmp_path / "w", "test") as w:
        w.write(padded, 1)
    assert _frames(tmp_path / "w") == [padded]


def _record(frame: bytes) -> bytes:
    return struct.pack("<I", len(frame)) + frame


def test_zero_length_records_are_skipped_counted_and_reading_goes_on(tmp_path: Path) -> None:
    frames = [b"first" * 20, b"second" * 20, b"third" * 20]
    body = _record(frames[0]) + struct.pack("<I", 0) + _record(frames[1]) + bytes(4 * 1500) + _record(frames[2])
    for name, data in (("plain.bin", body), ("z.zst", zstandard.ZstdCompressor().compress(body))):
        path = tmp_path / name
        path.write_bytes(data)
        report = ReadReport()
        assert _frames(path, report) == frames, name
        (fr,) = report.files
        assert fr.items == 3 and fr.empty_records == 1501 and fr.first_empty_at == 4 + len(frames[0])
        assert fr.error == "" and report.skipped == 1501
        assert report.errors == [f"{path}: skipped 1501 zero-length record(s), the first at byte {fr.first_empty_at}"]
    # in skyattr's own format too, and a file that starts with one
    w = ArchiveWriter(tmp_path / "own", "test")
    w.write(frames[0], 1)
    w.write(b"", 2)
    w.write(frames[1], 3)
    w.close()
    report = ReadReport()
    assert _frames(tmp_path / "own", report) == frames[:2] and report.files[0].empty_records == 1
    lead = tmp_path / "lead.bin"
    lead.write_bytes(struct.pack("<I", 0) + _record(frames[2]))
    assert _frames(lead) == frames[2:]


def test_an_unknown_archive_version_is_not_read(tmp_path: Path) -> None:
    header = json.dumps({"format": "skyattr-frames", "version": 99}).encode()
    path = tmp_path / "future.skyarch.zst"
    path.write_bytes(
        struct.pack("<II", 0x184D2A50, len(header)) + header + zstandard.ZstdCompressor().compress(_record(b"x" * 9))
    )
    report = ReadReport()
    assert _frames(path, report) == []
    assert report.errors == [f"{path}: unsupported archive version 99"]


def test_json_lines_nested_too_deeply_are_counted_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"kind": "commit"}\n' + "[" * 100_000 + "\n" + '{"kind": "identity"}\n')
    report = ReadReport()
    items = list(read_archive(path, report))
    assert [i.json["kind"] for i in items] == ["commit", "identity"]
    assert report.bad_lines == 1 and report.skipped == 1
    assert report.errors == [f"{path}: skipped 1 line(s) that are not JSON"]


def test_a_cut_archive_is_reported_in_file_bytes(tmp_path: Path) -> None:
    from streamer.testing.synth import default_archive

    whole = default_archive().read_bytes()
    cut = tmp_path / "cut.skyarch.zst"
    cut.write_bytes(whole[:300_000])
    report = ReadReport()
    items = list(read_archive(cut, report))
    (fr,) = report.files
    assert fr.error == "truncated zstd frame" and fr.items == len(items) > 0
    assert fr.frame_at is not None and fr.frame_at < 300_000
    assert whole[fr.frame_at : fr.frame_at + 4] == b"\x28\xb5\x2f\xfd", "the offset is where a zstd frame starts"
    assert report.errors == [
        f"{cut}: truncated zstd frame (the 300,000-byte file ends inside the compressed frame that starts at byte "
        f"{fr.frame_at:,}: it was cut short, by a copy, download or recording that did not finish; the first "
        f"{len(items):,} items were read, the rest is lost)"
    ]


def test_an_empty_file_and_corrupt_zstd_say_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty.skyarch.zst"
    empty.write_bytes(b"")
    report = ReadReport()
    assert list(read_archive(empty, report)) == []
    assert report.errors == [f"{empty}: empty file (0 bytes)"], "no 'at byte None'"
    corrupt = tmp_path / "corrupt.zst"
    corrupt.write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage" * 4)
    report = ReadReport()
    assert list(read_archive(corrupt, report)) == []
    (line,) = report.errors
    assert line.startswith(f"{corrupt}: corrupt zstd data: ")
    assert line.endswith("(in the compressed frame at byte 0 of the 32-byte file, after 0 items)")
