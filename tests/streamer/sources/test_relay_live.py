"""The live path end to end over real websockets on 127.0.0.1: Relay serving the real sample, FirehoseSource reading it.

No mocks: what these tests pass through is the same protocol (handshake, cursor query, binary frames, error frames,
dropped connections) the public relay speaks, so resume, de-duplication and error handling are checked as they will
run in production. The oracle is always a direct ``read_archive`` of the same sample.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import libipld
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus

from streamer.app.record import record, record_command
from streamer.core.backoff import Backoff, backoff_delay
from streamer.core.frames import MAX_FRAME_BYTES
from streamer.sources.archive import ArchiveWriter, ReadReport, read_archive
from streamer.sources.firehose import (
    FirehoseSource,
    RelayUnavailable,
    subscribe_url,
)
from streamer.sources.relay_server import Relay, error_frame, peek
from tests.faults import Lines, signal_when

FAST = {"backoff": Backoff(0.005, 0.02)}
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def archive(sample_dir: Path) -> Path:
    return sample_dir / "frames.bin.zst"


def seq_of(frame: bytes) -> int:
    return peek(frame)[0]


async def collect(source: FirehoseSource, n: int, timeout: float = 5.0) -> list[bytes]:
    """The first ``n`` frames of ``source``; the relay then idles, so stopping at ``n`` is how a run ends."""
    got: list[bytes] = []
    async with asyncio.timeout(timeout), source:
        async for frame in source.frames():
            got.append(frame)
            if len(got) >= n:
                break
    return got


async def test_relay_to_live_source_equals_direct_replay(archive: Path, sample_frames: list[bytes]) -> None:
    async with Relay(archive) as relay:
        source = FirehoseSource(relay.url, **FAST)
        got = await collect(source, len(sample_frames))
    assert got == sample_frames
    assert source.cursor == seq_of(sample_frames[-1])
    assert source.stats.reconnects == 0 and source.stats.duplicates == 0 and not source.stats.errors
    assert source.stats.frames == {"#commit": 148, "#identity": 1, "#account": 1}
    assert relay.connections == 1 and relay.frames_sent == len(sample_frames)


@pytest.mark.parametrize("drop_after", [1, 37])
async def test_dropped_connections_resume_without_loss_or_duplicates(
    archive: Path, sample_frames: list[bytes], drop_after: int
) -> None:
    async with Relay(archive, drop_after=drop_after) as relay:
        source = FirehoseSource(relay.url, max_retries=3, **FAST)
        got = await collect(source, len(sample_frames))
    assert got == sample_frames
    expected_drops = -(-len(sample_frames) // drop_after)  # the last connection is cut after its last frame too
    assert relay.drops >= expected_drops - 1
    assert source.stats.reconnects >= expected_drops - 1 > 0
    assert source.stats.disconnects["ConnectionClosedError"] == source.stats.reconnects
    assert source.stats.duplicates == 0


async def test_cursor_in_the_middle_yields_exactly_what_follows(archive: Path, sample_frames: list[bytes]) -> None:
    middle = 60
    async with Relay(archive) as relay:
        source = FirehoseSource(relay.url, cursor=seq_of(sample_frames[middle]), **FAST)
        got = await collect(source, len(sample_frames) - middle - 1)
        # nothing more arrives: the relay idles after the last frame instead of sending extras
        assert source.stats.yielded == len(got)
    assert got == sample_frames[middle + 1 :]
    assert not source.stats.info


async def test_outdated_cursor_is_counted_and_everything_is_delivered(
    archive: Path, sample_frames: list[bytes]
) -> None:
    async with Relay(archive) as relay:
        source = FirehoseSource(relay.url, cursor=seq_of(sample_frames[0]) - 1000, **FAST)
        got = await collect(source, len(sample_frames))
        # the cursor just before the first frame misses nothing: no OutdatedCursor then
        exact = FirehoseSource(relay.url, cursor=seq_of(sample_frames[0]) - 1, **FAST)
        assert await collect(exact, len(sample_frames)) == sample_frames
    assert got == sample_frames
    assert source.stats.info == {"OutdatedCursor": 1}
    assert source.stats.frames["#info"] == 1
    assert not exact.stats.info


async def test_future_cursor_follows_the_relay_from_its_head(archive: Path, sample_frames: list[bytes]) -> None:
    """A cursor beyond the relay's last seq means the relay's log now ends below it (it lost its tail or
    restarted): asking again would only repeat the error, so the source reconnects without a cursor."""
    future = seq_of(sample_frames[-1]) + 10
    async with Relay(archive) as relay:
        source = FirehoseSource(relay.url, cursor=future, max_retries=1, **FAST)
        got = await collect(source, len(sample_frames))
    assert got == sample_frames  # this relay, asked for no cursor, starts with the oldest frame it holds
    assert source.stats.relay_errors == {"FutureCursor": 1}
    assert source.stats.resets == 1 and source.stats.duplicates == 0
    assert source.stats.disconnects == {"error_frame": 1, "stopped": 1}, "the second connection ended by the stop"
    assert source.cursor == seq_of(sample_frames[-1]) and not source.recovering
    assert relay.connections == 2


async def test_idle_timeout_reconnects_and_max_retries_gives_up(archive: Path, sample_frames: list[bytes]) -> None:
    got: list[bytes] = []
    async with Relay(archive) as relay:
        source = FirehoseSource(relay.url, idle_timeout=0.1, max_retries=0, **FAST)
        with pytest.raises(RelayUnavailable):
            async with asyncio.timeout(5), source:
                async for frame in source.frames():
                    got.append(frame)
    assert got == sample_frames
    assert source.stats.disconnects == {"idle_timeout": 2}
    assert source.stats.reconnects == 1
    assert relay.connections == 2


async def test_stop_ends_an_idle_iteration_cleanly(archive: Path, sample_frames: list[bytes]) -> None:
    stop = asyncio.Event()
    got: list[bytes] = []

    async def consume(source: FirehoseSource) -> None:
        async for frame in source.frames():
            got.append(frame)
            if len(got) == len(sample_frames):
                stop.set()  # from inside; the iterator must finish without another frame

    async with Relay(archive) as relay:
        source = FirehoseSource(relay.url, stop=stop, **FAST)
        await asyncio.wait_for(consume(source), 5)
    assert got == sample_frames and source.stopped


async def test_garbage_and_error_frames_are_counted_and_do_not_stop_the_source(sample_frames: list[bytes]) -> None:
    """A hand-made relay misbehaving in every way the protocol allows, then resending part of what was sent."""
    seqs = [seq_of(f) for f in sample_frames]
    unknown = libipld.encode_dag_cbor({"op": 1, "t": "#labels"}) + libipld.encode_dag_cbor({"seq": seqs[20] + 0})
    # ops must be a list of maps; a bare int there is malformed in a way the decoder might not foresee
    bad_ops = libipld.encode_dag_cbor({"op": 1, "t": "#commit"}) + libipld.encode_dag_cbor(
        {"seq": seqs[5], "repo": "did:plc:x", "rev": "x", "time": "2026-07-04T14:38:07.517Z", "ops": [1], "blocks": b""}
    )
    connections: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws.request.path if ws.request else "")
        if len(connections) == 1:
            for frame in sample_frames[:20]:
                await ws.send(frame)
            await ws.send(b"\xff\x00 not cbor at all")
            await ws.send("a text message")
            await ws.send(sample_frames[20][:100])  # truncated in the middle of the body
            await ws.send(b"\x00" * (MAX_FRAME_BYTES + 1))
            await ws.send(libipld.encode_dag_cbor({"op": 1, "t": "#commit"}))  # a header and no body
            await ws.send(bad_ops)
            await ws.send(error_frame("ConsumerTooSlow", "you are too slow"))
            await ws.close(1008, "ConsumerTooSlow")
            return
        # Second connection: a relay that ignores the cursor a little, resending five frames already delivered.
        await ws.send(unknown)  # a type we do not know, with seq 20: skipped, but the cursor moves past it
        for frame in sample_frames[15:]:
            await ws.send(frame)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        source = FirehoseSource(f"ws://127.0.0.1:{port}", max_retries=2, **FAST)
        got = await collect(source, len(sample_frames) - 1)  # frame 20 is the one whose seq the unknown type took
    assert got == sample_frames[:20] + sample_frames[21:]
    assert connections[1].endswith(f"?cursor={seqs[19]}")
    errors = dict(source.stats.errors)
    # the frame with a bare int in ops decodes (the op is skipped as bad_op) and, its seq being old, is a duplicate
    assert errors == {"bad_cbor": 2, "text_message": 1, "too_big": 1, "bad_header": 1, "unknown_type": 1}
    assert source.stats.relay_errors == {"ConsumerTooSlow": 1}
    assert source.stats.reconnects == 1
    assert source.stats.duplicates == 7  # 15..19 again, 20 (seen via the unknown frame's seq), and the bad-ops frame


async def test_record_into_archive_reads_back_identical(
    archive: Path, sample_frames: list[bytes], tmp_path: Path
) -> None:
    async with Relay(archive, drop_after=50) as relay:
        source = FirehoseSource(relay.url, **FAST)
        with ArchiveWriter(tmp_path / "rec", source=relay.url, flush_every=16) as writer:
            count = await asyncio.wait_for(record(source, writer, limit=len(sample_frames)), 5)
        await source.aclose()
        # and through the command itself (its own event loop, in a thread), resuming from a cursor
        cursor = seq_of(sample_frames[99])
        await asyncio.to_thread(record_command, out=tmp_path / "cmd", cursor=cursor, limit=50, relay=relay.url)
    report = ReadReport()
    assert count == len(sample_frames)
    assert [item.frame for item in read_archive(tmp_path / "rec", report)] == sample_frames
    assert report.files[0].header["source"] == relay.url
    assert report.files[0].trailer == {"last_seq": seq_of(sample_frames[-1]), "frames": len(sample_frames)}
    assert [item.frame for item in read_archive(tmp_path / "cmd")] == sample_frames[100:]


async def test_record_command_closes_the_archive_on_ctrl_c(
    archive: Path, sample_frames: list[bytes], tmp_path: Path
) -> None:
    """SIGINT to a real ``record`` process: it stops, flushes and writes the trailer; nothing is lost."""
    out = tmp_path / "rec"
    code = "import typer; from streamer.app.record import record_command; typer.run(record_command)"
    async with Relay(archive) as relay:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SKYATTR_PROGRESS_EVERY": "0.05"}
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "--relay", relay.url, "--out", str(out)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        err = Lines(proc.stderr)
        try:
            # interrupted once its progress line says it has every frame the relay sent
            every = err.past(len(sample_frames))
            await asyncio.to_thread(signal_when, proc, every, 30, "every frame recorded", signal.SIGINT)
            await asyncio.to_thread(proc.wait, 10)
            stderr = err.text()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, stderr
    report = ReadReport()
    assert [item.frame for item in read_archive(out, report)] == sample_frames
    assert report.files[0].trailer is not None and report.files[0].trailer["frames"] == len(sample_frames)
    assert f"--cursor {seq_of(sample_frames[-1])}" in stderr


async def test_relay_rejects_other_paths_and_bad_cursors(archive: Path) -> None:
    async with Relay(archive) as relay:
        with pytest.raises(InvalidStatus) as err:
            async with connect(f"{relay.url}/xrpc/com.atproto.sync.getRepo"):
                pass
        assert err.value.response.status_code == 501, "an XRPC method this relay does not implement"
        with pytest.raises(InvalidStatus) as err:
            async with connect(f"{relay.url}/elsewhere"):
                pass
        assert err.value.response.status_code == 404
        async with connect(f"{relay.url}/xrpc/com.atproto.sync.subscribeRepos?cursor=abc") as ws:
            header, body = libipld.decode_dag_cbor_multi(await ws.recv())
        assert header == {"op": -1} and body["error"] == "InvalidRequest"


async def test_relay_paces_by_event_time(archive: Path, sample_frames: list[bytes]) -> None:
    span = (peek(sample_frames[-1])[1] - peek(sample_frames[0])[1]) / 1e6  # type: ignore[operator]
    speed = 4.0
    async with Relay(archive, speed=speed) as relay:
        start = time.monotonic()
        got = await collect(FirehoseSource(relay.url, **FAST), len(sample_frames))
        elapsed = time.monotonic() - start
    assert got == sample_frames
    assert span / speed * 0.9 <= elapsed < span / speed + 2.0


def test_relay_refuses_jetstream_archives(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text('{"did": "did:plc:x", "time_us": 1, "kind": "commit"}\n')
    with pytest.raises(ValueError, match="Jetstream"):
        asyncio.run(Relay(tmp_path / "events.jsonl").start())


def test_subscribe_url() -> None:
    assert subscribe_url("wss://bsky.network") == "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"
    assert subscribe_url("https://relay.example/", 42) == (
        "wss://relay.example/xrpc/com.atproto.sync.subscribeRepos?cursor=42"
    )
    full = "ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos?cursor=1"
    assert subscribe_url(full, 7) == "ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos?cursor=7"
    assert subscribe_url(full, -1) == "ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos"
    with pytest.raises(ValueError):
        subscribe_url("bsky.network")


def test_backoff_grows_caps_and_jitters() -> None:
    import random

    rng = random.Random(0)
    delays = [backoff_delay(k, 1.0, 60.0, rng) for k in range(10)]
    for k, d in enumerate(delays):
        nominal = min(60.0, 2.0**k)
        assert nominal / 2 <= d <= nominal
    assert len({round(backoff_delay(3, 1.0, 60.0, rng), 6) for _ in range(20)}) > 1


async def test_a_frame_over_the_websocket_limit_is_skipped_and_counted_not_fetched_for_ever(
    archive: Path, sample_frames: list[bytes]
) -> None:
    sizes = sorted(len(f) for f in sample_frames)
    limit = sizes[-3] - 1  # the three biggest frames of the real sample are over it
    small = [f for f in sample_frames if len(f) <= limit]
    assert len(small) == len(sample_frames) - 3
    async with Relay(archive) as relay:
        source = FirehoseSource(relay.url, max_size=limit, **FAST)
        got = await collect(source, len(small), timeout=20.0)
    assert got == small, "every other frame, in order: ingest moved past each big one"
    assert source.stats.errors["too_big"] == 3
    assert source.stats.duplicates == 0


async def test_a_consumer_that_is_done_closes_normally(sample_frames: list[bytes]) -> None:
    """Leaving after ``n`` frames is a normal close (1000): relays log a 1011 "internal error" as a failure."""
    codes: list[int | None] = []

    async def handler(ws: ServerConnection) -> None:
        for frame in sample_frames:
            await ws.send(frame)
        await ws.wait_closed()
        codes.append(ws.close_code)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        got = await collect(FirehoseSource(f"ws://127.0.0.1:{port}", **FAST), 5)
        async with asyncio.timeout(5):
            while not codes:
                await asyncio.sleep(0.01)
    assert len(got) == 5 and codes == [1000]


async def test_a_relay_that_comes_up_after_the_source_makes_it_connected(
    archive: Path, sample_frames: list[bytes]
) -> None:
    """A pod that starts before its relay: the refused attempts are counted as failed connects, not disconnects,
    so once the relay answers the source is connected (``/readyz`` and ``skyattr_source_connected`` read this)."""
    from tests.net import free_port

    port = free_port()
    source = FirehoseSource(f"ws://127.0.0.1:{port}", **FAST)
    got: list[bytes] = []

    async def read() -> None:
        async for frame in source.frames():
            got.append(frame)

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(10):
            while source.stats.reconnects < 2:
                await asyncio.sleep(0.01)
        assert not source.stats.connected and source.stats.connects == 0 and not source.stats.disconnects
        assert sum(source.stats.connect_failures.values()) >= 2
        async with Relay(archive, port=port):
            async with asyncio.timeout(10):
                while len(got) < len(sample_frames):
                    await asyncio.sleep(0.01)
            assert source.stats.connected and source.stats.connects == 1
    finally:
        source.stop()
        await asyncio.wait_for(reader, 10)
    assert got == sample_frames


def test_a_slow_relay_stops_at_once_after_a_client_came_and_left() -> None:
    """At 0.001x event time a handler waits minutes for its next frame; SIGTERM must not wait for it (it took
    11-12 s): the pause ends as soon as the connection closes."""
    import signal
    import subprocess
    import sys

    from streamer.testing.synth import default_archive
    from tests.faults import Lines, wait_until
    from tests.net import free_port

    port = free_port()
    relay = subprocess.Popen(
        [sys.executable, "-m", "streamer", "relay", str(default_archive()), "--port", str(port), "--speed", "0.001"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = Lines(relay.stdout)
        wait_until(out.seen(f"ws://127.0.0.1:{port}"), 60, "the relay's address")

        async def visit() -> None:
            async with connect(f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor=0") as ws:
                await asyncio.wait_for(ws.recv(), 10)  # the first frame; the next is minutes away

        asyncio.run(visit())
        start = time.monotonic()
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(30) == 0
        assert time.monotonic() - start < 5, f"stopped after {time.monotonic() - start:.1f} s"
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait(10)
