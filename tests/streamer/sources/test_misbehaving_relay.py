"""A relay that misbehaves, over real websockets on 127.0.0.1: every frame it sends is accounted for.

The local :class:`Relay` serves the real firehose sample and goes wrong the ways a relay can (its sequence restarts
from 1 or from a lower head, seqs are skipped, neighbours swapped, the cursor ignored); :class:`FirehoseSource` reads
it. The books must balance for each: frames yielded + duplicates = frames the relay sent, with gaps, late frames
and resets counted, and recovery without anyone stepping in. The daemon's tests scrape ``/metrics`` and
``/readyz`` over HTTP; the capacity tests open real connections against a relay process and read its memory.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus

from streamer.app.daemon import live_pipeline
from streamer.app.replay import replay
from streamer.app.settings import load_settings
from streamer.core.backoff import Backoff
from streamer.core.checkpoint import load_checkpoint
from streamer.core.frames import decode_frame
from streamer.core.seqs import Sequenced
from streamer.sources.archive import ArchiveWriter
from streamer.sources.firehose import FirehoseSource
from streamer.sources.relay_server import SUBSCRIBE_PATH, Misbehaviour, Relay, peek, with_seq
from streamer.testing.synth import default_archive
from tests.net import free_port, http_get

FAST = {"backoff": Backoff(0.005, 0.02)}
ROOT = Path(__file__).resolve().parents[3]
N = 150  # frames in the sample


@pytest.fixture(scope="module")
def archive(sample_dir: Path) -> Path:
    return sample_dir / "frames.bin.zst"


@pytest.fixture(scope="module")
def seqs(sample_frames: list[bytes]) -> list[int]:
    got = [peek(f)[0] for f in sample_frames]
    assert got == list(range(got[0], got[0] + N)), "these tests count on the sample's seqs being dense"
    return got


def content(frame: bytes) -> tuple[Any, ...]:
    """What a frame says, apart from its seq: equal for a frame and its renumbered copy."""
    d = decode_frame(frame)
    return d.type, tuple((e.time_us, e.kind, e.actor, e.subject, e.rkey, e.rev) for e in d.events)


async def take(source: FirehoseSource, done: Any, timeout: float = 5.0) -> list[tuple[bytes, Sequenced]]:
    """Items of ``source`` until ``done(source, items)``, checked as items come and every 10 ms (a duplicate
    yields nothing); the relay idles at its end, so that is how a run ends."""
    got: list[tuple[bytes, Sequenced]] = []

    async def consume() -> None:
        async for item in source.items():
            got.append(item)

    task = asyncio.create_task(consume())
    try:
        async with asyncio.timeout(timeout):
            while not done(source, got):
                if task.done():
                    task.result()  # the source gave up (RelayUnavailable): say why
                    raise AssertionError("the source ended early")
                await asyncio.sleep(0.01)
    finally:
        await source.aclose()
        await asyncio.wait_for(task, 5)
    return got


def until(n: int) -> Any:
    return lambda _source, got: len(got) >= n


def balanced(source: FirehoseSource, relay: Relay) -> None:
    """Nothing lost, nothing doubled, nothing unexplained: the relay's frames are yielded or counted duplicates."""
    st = source.stats
    assert st.yielded + st.duplicates == relay.frames_sent
    assert not st.errors


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


# -- relay restarts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "connections", "said"),
    [
        ({"restart_mid_stream": True}, 1, "restarted its sequence: seq 1 after cursor {}; following the new stream"),
        ({}, 3, "restarted its sequence below our cursor {} (FutureCursor); reconnecting without a cursor"),
        ({"future_cursor": False}, 2, "restarted its sequence: seq 1 after cursor {}; following the new stream"),
    ],
    ids=["mid_stream", "future_cursor", "unchecked_cursor"],
)
async def test_relay_renumbering_from_1_is_followed_without_loss(
    archive: Path,
    sample_frames: list[bytes],
    seqs: list[int],
    caplog: pytest.LogCaptureFixture,
    mode: dict[str, Any],
    connections: int,
    said: str,
) -> None:
    """mid_stream: renumbered on the open connection. future_cursor: cut, then FutureCursor for our cursor, then
    followed from its head without one. unchecked_cursor: cut, then our cursor ignored, the new sequence's first
    frame below it telling."""
    k = 100
    caplog.set_level(logging.INFO, "streamer.sources.firehose")
    async with Relay(archive, misbehave=Misbehaviour(restart_at=k, **mode)) as relay:
        source = FirehoseSource(relay.url, max_retries=3, **FAST)
        got = await take(source, until(N))
    assert [content(f) for f, _ in got] == [content(f) for f in sample_frames]
    assert [d.seq for _, d in got] == seqs[:k] + list(range(1, N - k + 1))
    assert [d.source_cursor for _, d in got] == [d.seq for _, d in got]
    st = source.stats
    assert st.resets == 1 and st.duplicates == 0 and st.out_of_order == 0 and st.gaps == 0
    assert st.relay_errors == ({"FutureCursor": 1} if connections == 3 else {})
    assert source.cursor == N - k and not source.recovering and source.anomalous
    assert relay.connections == connections and relay.frames_sent == N
    balanced(source, relay)
    assert warnings(caplog, "restarted its sequence") == [f"relay {relay.url} " + said.format(seqs[k - 1])] or (
        connections == 3 and len(warnings(caplog, said.format(seqs[k - 1]))) == 1
    )


async def test_lower_head_after_restart_answers_future_cursor_then_is_followed(
    archive: Path, sample_frames: list[bytes], seqs: list[int]
) -> None:
    """The relay comes back holding frames up to seq S only (S below our cursor) and numbers new ones S+1, ...:
    its old frames are re-sends, its new ones reuse seqs we saw with other content."""
    k, keep = 120, 60
    head = seqs[keep - 1]
    async with Relay(archive, misbehave=Misbehaviour(restart_at=k, restart_head=head)) as relay:
        source = FirehoseSource(relay.url, max_retries=3, **FAST)
        got = await take(source, until(N))
        assert relay.holds() == (seqs[0], head + N - k)
    assert [content(f) for f, _ in got] == [content(f) for f in sample_frames]
    st = source.stats
    assert st.relay_errors == {"FutureCursor": 1} and st.resets == 1
    assert st.duplicates == keep  # the frames it kept, sent again on the connection without a cursor
    assert relay.frames_sent == k + keep + (N - k)
    assert source.cursor == head + N - k
    balanced(source, relay)


async def test_a_stray_old_frame_neither_resets_nor_moves_the_cursor_back(sample_frames: list[bytes]) -> None:
    """One hostile frame is data, not control: a frame far below the cursor, alone, is kept (out of order); one
    re-using a seen seq with other content is a duplicate. Neither may rewind the cursor, or the next reconnect
    would fetch again, and double, what was applied."""
    seqs = [peek(f)[0] for f in sample_frames]
    stray = with_seq(sample_frames[3], 7)  # far below the cursor, never seen
    clash = with_seq(sample_frames[40], seqs[10])  # a seen seq, other content
    connections: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws.request.path if ws.request else "")
        for frame in [*sample_frames[:50], stray, *sample_frames[50:60], clash, *sample_frames[60:]]:
            await ws.send(frame)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        source = FirehoseSource(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", **FAST)
        got = await take(source, until(N + 1))
    assert [f for f, _ in got] == [*sample_frames[:50], stray, *sample_frames[50:]]
    assert got[50][1].source_cursor == seqs[49]
    st = source.stats
    assert st.out_of_order == 1 and st.duplicates == 1 and st.resets == 0
    assert source.cursor == seqs[-1] and len(connections) == 1


# -- gaps, late frames, re-sends --------------------------------------------------------------------------------


async def test_skipped_seqs_are_counted_as_gaps(archive: Path, sample_frames: list[bytes]) -> None:
    async with Relay(archive, misbehave=Misbehaviour(skip_every=7)) as relay:
        source = FirehoseSource(relay.url, **FAST)
        got = await take(source, until(N - N // 7))
    assert [f for f, _ in got] == [f for i, f in enumerate(sample_frames) if (i + 1) % 7]
    st = source.stats
    assert relay.frames_skipped == N // 7 == st.gaps == st.gap_frames
    assert st.out_of_order == st.duplicates == st.resets == 0
    balanced(source, relay)


async def test_swapped_neighbours_are_kept_and_counted_out_of_order(
    archive: Path, sample_frames: list[bytes], seqs: list[int]
) -> None:
    async with Relay(archive, misbehave=Misbehaviour(swap_every=5)) as relay:
        source = FirehoseSource(relay.url, **FAST)
        got = await take(source, until(N))
    assert sorted(f for f, _ in got) == sorted(sample_frames) and [f for f, _ in got] != sample_frames
    st = source.stats
    assert relay.swaps == N // 5 - 1 == st.out_of_order  # the last frame held has no neighbour to swap with
    assert st.gaps == st.gap_frames == relay.swaps  # each late frame was a one-seq hole until it came
    assert st.duplicates == st.resets == 0 and source.cursor == seqs[-1]
    late = [d for _, d in got if d.seq < d.source_cursor]
    assert len(late) == relay.swaps and all(d.source_cursor == d.seq + 1 for d in late)
    balanced(source, relay)


async def test_a_relay_ignoring_the_cursor_resends_only_duplicates(archive: Path, sample_frames: list[bytes]) -> None:
    async with Relay(archive, misbehave=Misbehaviour(ignore_cursor=True)) as relay:
        source = FirehoseSource(relay.url, idle_timeout=0.2, **FAST)
        got = await take(source, lambda s, _: s.stats.duplicates >= N)
    assert [f for f, _ in got] == sample_frames
    assert source.stats.resets == source.stats.out_of_order == 0
    assert relay.connections == 2
    balanced(source, relay)


def test_replay_of_an_archive_recorded_across_a_relay_reset_applies_everything(
    sample_frames: list[bytes], tmp_path: Path
) -> None:
    k = 100
    renumbered = [*sample_frames[:k], *(with_seq(f, i + 1) for i, f in enumerate(sample_frames[k:]))]
    with ArchiveWriter(tmp_path / "a", source="test") as writer:
        for frame in renumbered:
            writer.write(frame, peek(frame)[0])
    result = replay(tmp_path / "a")
    whole = replay_frames(sample_frames, tmp_path / "b")
    st = result.stats
    assert st.resets == 1 and st.duplicates == 0
    assert st.events == whole.stats.events
    assert result.cursor == N - k


def replay_frames(frames: list[bytes], path: Path) -> Any:
    with ArchiveWriter(path, source="test") as writer:
        for frame in frames:
            writer.write(frame, peek(frame)[0])
    return replay(path)


# -- the daemon: metrics and readiness --------------------------------------------------------------------------


def _metrics(port: int) -> dict[str, float]:
    """Every unlabelled sample, and labelled ones summed by name."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)[1]):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


async def _run_daemon(relay: Relay, ckpt: Path, done: Any, timeout: float = 20.0) -> tuple[Any, list, dict]:
    """live_pipeline against ``relay`` until ``done(pipe)``; returns the pipe, the /readyz answers polled every
    50 ms, and the last scrape."""
    settings = load_settings(flags={"relay": relay.url, "checkpoint_dir": ckpt, "metrics_port": 0}, env={})
    stop = asyncio.Event()
    pipes: list[Any] = []
    ready: list[tuple[int, str]] = []
    scrape: dict[str, float] = {}

    async def poll() -> None:
        nonlocal scrape
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if not pipes or pipes[0].metrics.port is None:
                    continue
                port = pipes[0].metrics.port
                ready.append(await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz", 2))
                if done(pipes[0]):
                    await asyncio.sleep(1.2)  # the watcher exports once a second
                    scrape = await asyncio.to_thread(_metrics, port)
                    return
        finally:
            stop.set()

    task = asyncio.create_task(poll())
    pipe = await live_pipeline(settings, tables=False, stop=stop, on_ready=pipes.append)
    await task
    return pipe, ready, scrape


async def test_daemon_follows_a_lower_head_relay_says_so_on_readyz_and_resumes_on_the_new_stream(
    archive: Path, seqs: list[int], tmp_path: Path
) -> None:
    k, keep = 120, 60
    head = seqs[keep - 1]
    new_head = head + N - k
    ckpt = tmp_path / "ckpt"
    async with Relay(archive, misbehave=Misbehaviour(restart_at=k, restart_head=head)) as relay:
        _, ready, m = await _run_daemon(
            relay, ckpt, lambda p: p.source.cursor == new_head and p.metrics.ready and p.source.stats.yielded == N
        )
        assert any(code == 503 and "restarted its sequence" in body for code, body in ready), ready
        assert ready[-1][0] == 200
        assert m["skyattr_seq_resets_total"] == 1
        assert m["skyattr_duplicate_frames_total"] == keep
        assert m["skyattr_source_seq_anomaly"] == 1
        assert m["skyattr_ingest_frames_total"] == N  # every frame sent once applied once...
        assert m["skyattr_ingest_frames_total"] + m["skyattr_duplicate_frames_total"] == relay.frames_sent
        assert m["skyattr_source_cursor_seq"] == new_head
        state, cursor, _ = load_checkpoint(ckpt)
        assert cursor == new_head
        events = dict(state.counters)
        # ...and a restart resumes on the new stream: nothing fetched again, nothing doubled
        sent = relay.frames_sent
        pipe2, _, m2 = await _run_daemon(relay, ckpt, lambda p: p.source.stats.connects >= 1 and p.metrics.ready)
        assert relay.frames_sent == sent and pipe2.source.stats.resets == 0
        assert m2["skyattr_source_cursor_seq"] == new_head
        state2, cursor2, _ = load_checkpoint(ckpt)
        assert cursor2 == new_head and dict(state2.counters) == events


async def test_daemon_exports_gaps_and_late_frames(archive: Path, tmp_path: Path) -> None:
    async with Relay(archive, misbehave=Misbehaviour(skip_every=7, swap_every=5)) as relay:
        pipe, ready, m = await _run_daemon(
            relay, tmp_path / "ckpt", lambda p: p.source.stats.yielded + relay.frames_skipped >= N and p.metrics.ready
        )
    st = pipe.source.stats
    assert st.out_of_order > 0 and st.gap_frames >= relay.frames_skipped > 0
    assert m["skyattr_seq_gaps_total"] == st.gaps
    assert m["skyattr_seq_gap_frames_total"] == st.gap_frames
    assert m["skyattr_seq_out_of_order_total"] == st.out_of_order == relay.swaps
    assert m["skyattr_source_seq_anomaly"] == 1
    assert m["skyattr_ingest_frames_total"] == relay.frames_sent == N - relay.frames_skipped
    assert m["skyattr_duplicate_frames_total"] == 0
    assert ready[-1][0] == 200


# -- capacity ---------------------------------------------------------------------------------------------------


async def test_clients_beyond_the_cap_get_503_and_a_freed_slot_is_reused(archive: Path) -> None:
    url = f"{{}}{SUBSCRIBE_PATH}"
    async with Relay(archive, max_clients=3) as relay:
        clients = [await connect(url.format(relay.url)) for _ in range(3)]
        with pytest.raises(InvalidStatus) as err:
            await connect(url.format(relay.url))
        assert err.value.response.status_code == 503 and relay.refused == 1
        clients.pop().transport.abort()  # gone without a goodbye, as most idle clients go
        async with asyncio.timeout(5):
            while relay.clients > 2:
                await asyncio.sleep(0.01)
        clients.append(await connect(url.format(relay.url)))
        assert relay.clients == 3 and relay.refused == 1
        for c in clients:
            c.transport.abort()


async def test_a_client_that_never_reads_is_dropped_with_a_bounded_buffer() -> None:
    archive = default_archive()  # 12k frames: more than socket buffers take, so the send really waits
    async with Relay(archive, send_timeout=0.3) as relay:
        idle = await connect(f"{relay.url}{SUBSCRIBE_PATH}", max_size=None)
        async with asyncio.timeout(5):
            while relay.slow_dropped < 1:
                await asyncio.sleep(0.02)
        assert relay.clients == 0
        assert relay.frames_sent < relay.range.frames  # type: ignore[union-attr]
        assert relay.max_buffered <= relay.write_limit + 2048  # the limit plus at most one (small) frame
        idle.transport.abort()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the relay's RSS from /proc")
async def test_300_idle_clients_are_capped_and_leave_the_relay_memory_flat(capsys: pytest.CaptureFixture) -> None:
    port = free_port()
    code = "import typer; from streamer.app.relay_command import relay_command; typer.run(relay_command)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(default_archive()), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    clients: list[ClientConnection] = []
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)).startswith("ws://")
        before = _rss_mib(proc.pid)

        async def one() -> ClientConnection | None:
            try:
                return await connect(f"ws://127.0.0.1:{port}{SUBSCRIBE_PATH}", max_size=None, open_timeout=20)
            except InvalidStatus as exc:
                assert exc.response.status_code == 503
                return None

        got = await asyncio.gather(*(one() for _ in range(300)))
        clients = [c for c in got if c is not None]
        await asyncio.sleep(1.0)  # every admitted stream running and blocked on its unread client
        after = _rss_mib(proc.pid)
        assert len(clients) == 64
        with capsys.disabled():
            print(f"\nrelay RSS: {before:.0f} MiB before, {after:.0f} MiB with 300 idle clients (64 admitted)")
        assert after - before < 48, (before, after)
    finally:
        for c in clients:
            c.transport.abort()
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert "236 refused" in err, err


async def test_after_a_restart_a_relay_ignoring_the_cursor_is_recognised_not_applied_twice(
    archive: Path, tmp_path: Path
) -> None:
    """The ring of seqs seen lately travels in the checkpoint: a relay that sends everything again after the daemon
    restarted is a re-send (duplicates), not a relay that restarted its sequence (which would apply it twice)."""
    ckpt = tmp_path / "ckpt"
    async with Relay(archive, misbehave=Misbehaviour(ignore_cursor=True)) as relay:
        await _run_daemon(relay, ckpt, lambda p: p.source.stats.yielded == N and p.metrics.ready)
        state, _, _ = load_checkpoint(ckpt)
        before = dict(state.counters)
        sent = relay.frames_sent
        pipe2, _, m2 = await _run_daemon(relay, ckpt, lambda p: relay.frames_sent >= sent + N and p.metrics.ready)
        assert pipe2.source.stats.resets == 0 and pipe2.source.stats.yielded == 0
        assert m2["skyattr_duplicate_frames_total"] == N
        state2, _, _ = load_checkpoint(ckpt)
        assert dict(state2.counters) == before, "nothing applied twice"


def test_a_recorded_late_frame_is_replayed_and_a_recorded_duplicate_is_not(
    sample_frames: list[bytes], tmp_path: Path
) -> None:
    """An archive keeps what the live source yielded, late frames included: replay applies a frame below the cursor
    it has not seen, and drops one it has."""
    frames = list(sample_frames[:40])
    clean = replay_frames(frames, tmp_path / "clean")
    late = replay_frames([*frames[:10], frames[11], frames[10], *frames[12:]], tmp_path / "late")
    dup = replay_frames([*frames[:20], frames[15], *frames[20:]], tmp_path / "dup")
    assert late.stats.out_of_order == 1 and late.stats.duplicates == 0
    assert sum(late.stats.events.values()) == sum(clean.stats.events.values())
    assert dup.stats.duplicates == 1 and dup.stats.out_of_order == 0
    assert sum(dup.stats.events.values()) == sum(clean.stats.events.values())
