"""Decoding spread over processes (`DecodePool`, `ArchiveSource(decoders=N)`, `ingest --decoders N`): the same
items in the same order, the same counts and the same cursor as decoding in one process, whatever the chunking;
a child that dies ends the iteration with one clear error, never with items missing; a stopped source ends its
children."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from streamer.core.decode import decode_item
from streamer.core.decode_pool import DecodeFailed, DecodePool
from streamer.sources.archive import ArchiveSource, read_archive
from streamer.testing.synth import default_archive


def _items(path: Path, **kwargs: Any) -> tuple[list[Any], ArchiveSource]:
    source = ArchiveSource(path, **kwargs)

    async def take() -> list[Any]:
        return [
            (item.seq, item.type, item.error, item.source_cursor, [e.key() for e in item.events])
            async for item in source
        ]

    return asyncio.run(take()), source


def _counts(source: ArchiveSource) -> dict[str, Any]:
    stats = source.stats
    return {"items": stats.items, "yielded": stats.yielded, "errors": dict(stats.errors),
            "frames": dict(stats.frames), "cursor": source.cursor}  # fmt: skip


@pytest.mark.parametrize("decoders", [2, 3])
def test_an_archive_decoded_by_several_processes_is_the_one_process_stream(decoders: int) -> None:
    alone, one = _items(default_archive())
    spread, many = _items(default_archive(), decoders=decoders)
    assert len(alone) > 10_000
    assert spread == alone
    assert _counts(many) == _counts(one)


def test_a_resumed_archive_skips_the_same_items_with_several_decoders() -> None:
    alone, one = _items(default_archive(), skip=4321)
    spread, many = _items(default_archive(), skip=4321, decoders=2)
    assert spread == alone and _counts(many) == _counts(one)


def test_the_pool_keeps_the_order_across_chunks_of_any_size(sample_frames: list[bytes]) -> None:
    frames = [*sample_frames, b"\xa1", b"", sample_frames[3][:40]]  # undecodable ones among them
    expected = [decode_item(f) for f in frames]
    for chunk, ahead in [(1, 1), (3, 2), (7, 5), (1000, 4)]:
        with DecodePool(2, chunk_items=chunk, ahead=ahead) as pool:
            got = list(pool.decoded(iter(frames)))
        assert [(d.type, d.seq, d.error, [e.key() for e in d.events]) for d in got] == [
            (d.type, d.seq, d.error, [e.key() for e in d.events]) for d in expected
        ], (chunk, ahead)


def test_jetstream_lines_decoded_by_several_processes(sample_dir: Path, tmp_path: Path) -> None:
    lines = tmp_path / "events.jsonl"
    lines.write_bytes((sample_dir / "golden_v1.jsonl").read_bytes())
    alone, one = _items(lines)
    spread, many = _items(lines, decoders=2)
    assert alone and spread == alone and _counts(many) == _counts(one)


def test_a_decoding_process_that_dies_ends_the_stream_with_one_error(sample_frames: list[bytes]) -> None:
    frames = sample_frames * 40
    with DecodePool(2, chunk_items=8, ahead=2) as pool:
        stream = pool.decoded(iter(frames))
        first = next(stream)
        assert first.type
        executor = pool._executor
        assert executor is not None
        for pid in list(executor._processes):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(DecodeFailed, match="decoding process ended"):
            for _ in stream:
                pass


def test_a_stopped_source_ends_its_decoding_processes() -> None:
    source = ArchiveSource(default_archive(), decoders=2)

    async def take_some() -> int:
        n = 0
        async for _ in source:
            n += 1
            if n == 500:
                await source.aclose()
        return n

    taken = asyncio.run(take_some())
    assert taken == 500  # what was decoded ahead of the stop is not handed on
    assert source.cursor < len(list(read_archive(default_archive())))
    import multiprocessing

    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


CHILD = """
import sys, time
from streamer.core.decode_pool import DecodePool
from streamer.sources.archive import read_archive
from streamer.testing.synth import default_archive
frames = [i.frame for i in read_archive(default_archive())] * 50
pool = DecodePool(2, chunk_items=4, ahead=2)
stream = pool.decoded(iter(frames))
next(stream)
print(" ".join(str(pid) for pid in pool._executor._processes), flush=True)
time.sleep(600)
"""


def test_decoding_processes_end_when_their_parent_is_killed() -> None:
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
    assert not alive, f"decoding processes {alive} outlived their killed parent"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"
