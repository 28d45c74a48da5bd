"""Archives of raw firehose frames: write them while recording, read them back for replay.

skyattr's own format (``*.skyarch.zst``) is a standard zstd file that any ``zstd -d`` can open:

* a zstd *skippable frame* holding a JSON header ``{"format": "skyattr-frames", "version": 1, "source", "created",
  "first_seq"}``;
* zstd frames whose content is ``[u32 little-endian length][raw websocket frame]`` repeated, exactly the bytes the
  relay sent; a frame is closed every ``flush_every`` records so a crash loses at most that many;
* a skippable trailer ``{"last_seq", "frames"}`` written when the file is closed (absent after a crash).

Files rotate at ``rotate_bytes`` of compressed output, named by their first seq so a directory sorts in order.

The reader also takes, detected by content: the same layout without header (``zstd([u32 len][frame]...)``, as in
the bundled real sample), uncompressed length-prefixed frames, and Jetstream JSON Lines (plain or zstd). A truncated
or corrupt file yields everything readable before the damage; :class:`ReadReport` says where it stopped. What can
be stepped over is skipped and counted instead: a zero-length record (no frame is empty; a length prefix of zeros is
what a crash can leave behind) and a JSON line that does not parse.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from streamer.core.frames import Decoded, decode_frame
from streamer.core.jetstream_json import from_jetstream, to_jetstream

FORMAT = "skyattr-frames"
VERSION = 1
SUFFIX = ".skyarch.zst"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE_LOW, SKIPPABLE_HIGH = 0x184D2A50, 0x184D2A5F
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a length above this is corruption, not a frame
CHUNK = 1 << 20


@dataclass(slots=True)
class ArchiveItem:
    """One archived item: a raw relay frame, or one parsed Jetstream JSON event."""

    frame: bytes | None = None
    json: Any = None
    file: str = ""


@dataclass
class FileReport:
    path: str
    layout: str = ""
    items: int = 0
    header: dict[str, Any] | None = None
    trailer: dict[str, Any] | None = None
    error: str = ""
    stopped_at: int | None = None  # offset in the decompressed stream where reading stopped
    empty_records: int = 0  # zero-length records skipped
    first_empty_at: int | None = None  # offset of the first one in the decompressed stream
    bad_lines: int = 0  # JSON Lines that did not parse, skipped
    file_bytes: int | None = None  # the file's size
    frame_at: int | None = None  # file offset of the zstd frame reading stopped in (None: not in one)
    compressed: bool = False  # zstd (offsets in the decompressed stream differ from file offsets)
    read_bytes: int = 0  # bytes of the file read so far (progress against ``file_bytes``)

    def where(self) -> str:
        """Where reading stopped, in words a user can check against the file: its size, the compressed frame's
        offset in the file or the offset in the decompressed stream, and how many items were read first."""
        size = f"{self.file_bytes:,}-byte file" if self.file_bytes is not None else "file"
        if self.error == "truncated zstd frame" and self.frame_at is not None:
            return (
                f"the {size} ends inside the compressed frame that starts at byte {self.frame_at:,}: it was cut "
                f"short, by a copy, download or recording that did not finish; the first {self.items:,} items were "
                "read, the rest is lost"
            )
        if self.file_bytes == 0:
            return ""
        if self.frame_at is not None:
            where = f"in the compressed frame at byte {self.frame_at:,} of the {size}"
        elif self.stopped_at is not None and not self.compressed:
            where = f"at byte {self.stopped_at:,} of the {size}"
        elif self.stopped_at is not None:
            where = f"at byte {self.stopped_at:,} of the decompressed stream of the {size}"
        else:  # a whole-file problem (an unknown archive version): no position to give
            return ""
        return f"{where}, after {self.items:,} items"


@dataclass
class ReadReport:
    """What the reader saw, file by file; ``readable`` is False only if nothing at all could be read."""

    files: list[FileReport] = field(default_factory=list)
    bad_lines: int = 0

    @property
    def items(self) -> int:
        return sum(f.items for f in self.files)

    @property
    def skipped(self) -> int:
        """Records and lines stepped over (reading went on after each)."""
        return sum(f.empty_records + f.bad_lines for f in self.files)

    @property
    def errors(self) -> list[str]:
        """One line per problem: where a file stopped being readable, and what was skipped in it."""
        out: list[str] = []
        for f in self.files:
            if f.error:
                where = f.where()
                out.append(f"{f.path}: {f.error}" + (f" ({where})" if where else ""))
            if f.empty_records:
                out.append(
                    f"{f.path}: skipped {f.empty_records} zero-length record(s), the first at byte {f.first_empty_at}"
                )
            if f.bad_lines:
                out.append(f"{f.path}: skipped {f.bad_lines} line(s) that are not JSON")
        return out

    @property
    def readable(self) -> bool:
        return self.items > 0


def _skippable(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, sort_keys=True).encode()
    return struct.pack("<II", SKIPPABLE_LOW, len(data)) + data


class ArchiveWriter:
    """Append raw frames to rotated ``.skyarch.zst`` files in ``directory``. Use as a context manager.

    With ``file`` instead, everything goes to that one file, written under a temporary name and renamed when
    closed cleanly (an interrupted writer leaves nothing half-written under the name, and no temporary file
    either), with ``created`` in its header instead of the wall clock: that is how a synthetic archive is
    byte-identical on every run."""

    def __init__(
        self,
        directory: str | Path | None,
        source: str,
        *,
        rotate_bytes: int = 256 * 1024 * 1024,
        flush_every: int = 1000,
        level: int = 3,
        file: str | Path | None = None,
        created: str | None = None,
    ) -> None:
        if (directory is None) == (file is None):
            raise ValueError("ArchiveWriter needs a directory or a file, not both")
        self.file = Path(file) if file is not None else None
        self.directory = Path(directory) if directory is not None else self.file.parent  # type: ignore[union-attr]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.source, self.rotate_bytes, self.flush_every = source, rotate_bytes, flush_every
        self.created = created
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._fh: BinaryIO | None = None
        self._pending: list[bytes] = []
        self._frames = 0
        self._last_seq = -1
        self.paths: list[Path] = []
        self.total_frames = 0  # frames written, all files
        self.raw_bytes = 0  # their bytes before compression
        self.last_seq = -1

    def write(self, frame: bytes, seq: int) -> None:
        if self._fh is None:
            self._open(seq)
        self._pending.append(struct.pack("<I", len(frame)))
        self._pending.append(frame)
        self._frames += 1
        self._last_seq = max(self._last_seq, seq)
        self.total_frames, self.raw_bytes, self.last_seq = self.total_frames + 1, self.raw_bytes + len(frame), seq
        if len(self._pending) >= 2 * self.flush_every:
            self.flush()
            if self.file is None and self._fh is not None and self._fh.tell() >= self.rotate_bytes:
                self._close_file()

    def flush(self) -> None:
        """Close the current zstd frame so everything written so far survives a crash."""
        if self._fh is not None and self._pending:
            self._fh.write(self._compressor.compress(b"".join(self._pending)))
            self._fh.flush()
            self._pending.clear()

    def close(self) -> None:
        if self._fh is not None:
            self._close_file()

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is not None and self.file is not None and self._fh is not None:
            self._fh.close()  # a single file not finished: no half file, and no temporary one left behind
            self._fh = None
            self._temporary().unlink(missing_ok=True)
            return
        self.close()

    def _temporary(self) -> Path:
        assert self.file is not None
        return self.file.with_name(f".{self.file.name}.tmp")

    def _open(self, first_seq: int) -> None:
        if self.file is not None:
            path = self.file
            self._fh = open(self._temporary(), "wb")  # noqa: SIM115 - renamed onto ``file`` in _close_file
        else:
            path = self.directory / f"frames-{max(first_seq, 0):020d}{SUFFIX}"
            n = 1
            while path.exists():
                path = self.directory / f"frames-{max(first_seq, 0):020d}-{n}{SUFFIX}"
                n += 1
            self._fh = open(path, "wb")  # noqa: SIM115 - kept open across writes, closed in _close_file
        header = {"format": FORMAT, "version": VERSION, "source": self.source, "first_seq": first_seq}
        header["created"] = self.created or datetime.now(UTC).isoformat(timespec="seconds")
        self._fh.write(_skippable(header))
        self.paths.append(path)
        self._frames, self._last_seq = 0, first_seq

    def _close_file(self) -> None:
        assert self._fh is not None
        self.flush()
        self._fh.write(_skippable({"last_seq": self._last_seq, "frames": self._frames}))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        if self.file is not None:
            os.replace(self._temporary(), self.file)


def archive_bytes(path: str | Path) -> int:
    """The size in bytes of the files an archive path stands for (progress where the item count is unknown)."""
    return sum(f.stat().st_size for f in archive_files(path))


ARCHIVE_SUFFIXES = (SUFFIX, ".bin.zst", ".bin", ".jsonl.zst", ".jsonl")  # what a directory's archive files end in


def archive_files(path: str | Path) -> list[Path]:
    """The files an archive path stands for: the file itself, or a directory's archive files in name order — those
    ending in one of :data:`ARCHIVE_SUFFIXES` (recorded frames or Jetstream JSON lines), DID documents, hidden files
    and anything else (a README, a manifest) left aside. A directory with none is an error naming what it holds."""
    p = Path(path)
    if p.is_dir():
        from streamer.sources.did_documents import DOCUMENTS_SUFFIX

        held = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        files = [f for f in held if f.name.endswith(ARCHIVE_SUFFIXES) and not f.name.endswith(DOCUMENTS_SUFFIX)]
        if not files:
            others = ", ".join(f.name for f in held[:5]) + (", ..." if len(held) > 5 else "")
            what = f"only {others}" if held else "no files"
            raise FileNotFoundError(
                f"archive directory {p} holds no archive files ({', '.join(ARCHIVE_SUFFIXES)}; it holds {what})"
            )
        return files
    if not p.exists():
        raise FileNotFoundError(f"archive {p} does not exist")
    return [p]


def _read(fh: BinaryIO, report: FileReport) -> bytes:
    data = fh.read(CHUNK)
    report.read_bytes += len(data)
    return data


def _chunks(fh: BinaryIO, report: FileReport) -> Iterator[bytes]:
    """Decompressed content of ``fh``: zstd frames decoded in turn, skippable frames parsed as header/trailer,
    an uncompressed file passed through. Stops (recording the error) at the first damaged byte."""
    buf = _read(fh, report)
    if buf[:4] != ZSTD_MAGIC and not (
        len(buf) >= 4 and SKIPPABLE_LOW <= struct.unpack("<I", buf[:4])[0] <= SKIPPABLE_HIGH
    ):
        while buf:
            yield buf
            buf = _read(fh, report)
        return
    report.compressed = True
    eof = False
    while True:
        while len(buf) < 8 and not eof:
            more = _read(fh, report)
            eof = not more
            buf += more
        if not buf:
            return
        magic = struct.unpack("<I", buf[:4])[0] if len(buf) >= 4 else 0
        if SKIPPABLE_LOW <= magic <= SKIPPABLE_HIGH and len(buf) >= 8:
            size = struct.unpack("<I", buf[4:8])[0]
            while len(buf) < 8 + size and not eof:
                more = _read(fh, report)
                eof = not more
                buf += more
            if len(buf) < 8 + size:
                report.error = "truncated metadata frame"
                return
            _metadata(buf[8 : 8 + size], report)
            if report.error:  # an archive version this reader does not know: its records cannot be trusted
                return
            buf = buf[8 + size :]
            continue
        if buf[:4] != ZSTD_MAGIC:
            report.error = "not a zstd frame (corrupt or foreign data)"
            report.frame_at = fh.tell() - len(buf)
            return
        report.frame_at = fh.tell() - len(buf)  # where this frame starts in the file
        dobj = zstandard.ZstdDecompressor().decompressobj()
        try:
            while True:
                out = dobj.decompress(buf)
                if out:
                    yield out
                if dobj.eof:
                    buf = dobj.unused_data
                    report.frame_at = None
                    break
                buf = _read(fh, report)
                if not buf:
                    report.error = "truncated zstd frame"
                    return
        except zstandard.ZstdError as exc:
            report.error = f"corrupt zstd data: {exc}"
            return


def _metadata(data: bytes, report: FileReport) -> None:
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):  # not ours (any skippable frame may appear in a zstd file)
        return
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        report.header = meta
        if meta.get("version") != VERSION:
            report.error = f"unsupported archive version {meta.get('version')!r}"
    elif isinstance(meta, dict) and "last_seq" in meta:
        report.trailer = meta


def _length_prefixed(chunks: Iterator[bytes], report: FileReport) -> Iterator[ArchiveItem]:
    buf, consumed = b"", 0  # consumed: decompressed bytes before buf
    for chunk in chunks:
        buf += chunk
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = struct.unpack_from("<I", buf, pos)
            if size == 0:  # nothing to decode and nothing lost: count it and go on with the next record
                if report.first_empty_at is None:
                    report.first_empty_at = consumed + pos
                # a run of them at once (a zero-filled tail is what some crashes leave): whole zero words only
                window = buf[pos : pos + 4096]
                run = (len(window) - len(window.lstrip(b"\0"))) // 4
                report.empty_records += run
                pos += 4 * run
                continue
            if size > MAX_RECORD_BYTES:
                report.error = f"implausible frame length {size}"
                report.stopped_at = consumed + pos
                return
            if len(buf) - pos - 4 < size:
                break
            yield ArchiveItem(frame=buf[pos + 4 : pos + 4 + size], file=report.path)
            report.items += 1
            pos += 4 + size
        consumed += pos
        buf = buf[pos:]
    if buf:
        report.error = report.error or f"truncated frame ({len(buf)} trailing bytes)"
    if report.error:
        report.stopped_at = consumed


def _json_lines(chunks: Iterator[bytes], report: FileReport, rr: ReadReport) -> Iterator[ArchiveItem]:
    def emit(line: bytes) -> Iterator[ArchiveItem]:
        if not line.strip():
            return
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            rr.bad_lines += 1
            report.bad_lines += 1
            return
        report.items += 1
        yield ArchiveItem(json=obj, file=report.path)

    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield from emit(line)
    yield from emit(buf)


def _looks_like_json_lines(head: bytes) -> bool:
    """A JSON object on the first line. A frame archive can begin with a ``{`` byte too (a first frame of length
    123 mod 256), but then what follows is binary CBOR, not a JSON line."""
    if head.lstrip()[:1] != b"{":
        return False
    line = head.lstrip().split(b"\n", 1)[0]
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def read_archive(path: str | Path, report: ReadReport | None = None) -> Iterator[ArchiveItem]:
    """Every readable item of the archive at ``path`` (file or directory), in order. Problems are recorded in
    ``report`` (one :class:`FileReport` per file) instead of raised, except a path that does not exist."""
    rr = report if report is not None else ReadReport()
    for file in archive_files(path):
        fr = FileReport(str(file))
        rr.files.append(fr)
        with open(file, "rb") as fh:
            fr.file_bytes = os.fstat(fh.fileno()).st_size
            chunks = _chunks(fh, fr)
            first = b""
            for chunk in chunks:
                first += chunk
                if len(first) >= 8 and (b"\n" in first or len(first) >= CHUNK):
                    break
            if not first:
                fr.error = fr.error or ("empty file (0 bytes)" if fr.file_bytes == 0 else "no readable content")
                continue
            if fr.header is None and _looks_like_json_lines(first):
                fr.layout = "jetstream-jsonl"
                yield from _json_lines(itertools.chain([first], chunks), fr, rr)
            else:
                fr.layout = "skyattr" if fr.header else "length-prefixed"
                yield from _length_prefixed(itertools.chain([first], chunks), fr)


def jetstream_lines(
    path: str | Path, report: ReadReport | None = None, skipped: Callable[[Decoded], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Every event of an archive as a Jetstream v1 line with skyattr's fields: what ``skyattr events`` prints and
    the local Jetstreams serve. ``time_us`` is monotone in the archive's order (the order the relay sent the
    frames, which is what a Jetstream's receive clock gives): the commit time, moved 1 µs past the previous line's
    where it would go back, so it is a cursor; ``skyattr.commit_time_us`` keeps the commit's own time and
    ``skyattr.cursor`` the source's position (the relay seq; Jetstream input: its ``time_us``). An item that does
    not decode is handed to ``skipped`` and left out."""
    last_us = -1
    for item in read_archive(path, report):
        decoded = from_jetstream(item.json) if item.frame is None else decode_frame(item.frame, records=True)
        if decoded.error:
            if skipped is not None:
                skipped(decoded)
            continue
        for event in decoded.events:
            line = to_jetstream(event)
            last_us = line["time_us"] = max(event.time_us, last_us + 1)
            line["skyattr"].update(cursor=event.seq, commit_time_us=event.time_us)
            yield line


class ArchiveSource:
    """An archive as a source: items read, decoded by the one decoder and judged by the one seq judge, in order.

    ``cursor`` is the position (items consumed so far, whatever became of them), the unit a replay resumes in:
    Jetstream archives carry no relay seq, and their ``time_us`` is not strictly monotone. ``skip`` items are
    read past without being decoded (they are what a checkpoint already holds). The relay-seq bookkeeping
    (``seq_cursor`` and ``seen``, from the checkpoint) tells a re-sent frame the recording kept from a late one.
    ``decoders``: processes decoding ahead of the judge (:class:`~streamer.core.decode_pool.DecodePool`; 1: this
    process decodes). Iterating is synchronous underneath (:meth:`items`); the async form is the Source
    protocol's."""

    def __init__(
        self,
        path: str | Path,
        *,
        skip: int = 0,
        seq_cursor: int | None = None,
        seen: Any = None,
        stats: Any = None,
        max_frame_bytes: int | None = None,
        records: bool = False,
        decoders: int = 1,
    ) -> None:
        from streamer.core.frames import MAX_FRAME_BYTES
        from streamer.core.seqs import SeqJudge
        from streamer.core.source import SourceStats

        self.path = Path(path)
        self.stats = stats if stats is not None else SourceStats()
        self.report = ReadReport()
        self.skip = skip
        self.position = 0
        self.max_frame_bytes = max_frame_bytes or MAX_FRAME_BYTES
        self.records = records
        if decoders < 1:
            raise ValueError("decoders must be at least 1")
        self.decoders = decoders
        self._items: Generator[Any, None, None] | None = None
        self.seq = SeqJudge(
            self.stats,
            cursor=seq_cursor if seq_cursor is not None and seq_cursor >= 0 else None,
            seen=seen,
            name=str(path),
            fingerprints=False,  # an archive holds what the recorder yielded once: "seen" is enough
        )
        self.seq.opened(None)
        self._stopped = False
        self.bytes_total = archive_bytes(self.path)

    @property
    def bytes_read(self) -> int:
        """Bytes of the archive's files read so far (for progress where the item count is not known ahead)."""
        return sum(f.read_bytes for f in self.report.files)

    @property
    def cursor(self) -> int:
        # a frame held by the seq judge (a possible relay restart, waiting for the frame after it) is not applied
        # yet: a checkpoint taken now resumes at it
        return self.position - (1 if self.seq.holding else 0)

    def stop(self) -> None:
        self._stopped = True

    async def aclose(self) -> None:
        self.stop()
        if self._items is not None:
            self._items.close()  # its decoding processes end with it

    def items(self) -> Generator[Any, None, None]:
        """The decoded, deduplicated items (:class:`~streamer.core.seqs.Sequenced`) of the archive."""
        from streamer.core.decode_pool import DecodePool
        from streamer.core.seqs import Sequenced

        raw = read_archive(self.path, self.report)
        for _ in range(self.skip):
            if next(raw, None) is None:
                return
            self.position += 1
        frames: deque[bool] = deque()  # of the items handed to the decoder and not back yet: which were frames

        def payloads() -> Iterator[Any]:
            for item in raw:
                if self._stopped:
                    return
                frames.append(item.frame is not None)
                yield item.frame if item.frame is not None else item.json

        stats, seq = self.stats, self.seq
        with DecodePool(self.decoders, records=self.records, max_bytes=self.max_frame_bytes) as pool:
            for decoded in pool.decoded(payloads()):
                if self._stopped:
                    return
                self.position += 1
                stats.items += 1
                if frames.popleft():
                    for _, sequenced in seq.judge(None, decoded):
                        stats.yielded += 1
                        yield sequenced
                    continue
                if decoded.error:
                    stats.errors[decoded.error] += 1
                    continue
                stats.frames[decoded.type] += 1
                stats.yielded += 1
                yield Sequenced.of(decoded, -1, 0)
        for _, sequenced in seq.flush():
            stats.yielded += 1
            yield sequenced

    async def __aiter__(self) -> Any:
        self._items = self.items()
        for item in self._items:
            yield item
