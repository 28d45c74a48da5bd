"""The Source seam: the same archive through the relay and through Jetstream gives the same state and results.

One synthetic archive is served twice: as a relay (`subscribeRepos`, CBOR frames) to the firehose source, and as a
local Jetstream server (JSON, connections cut every few dozen events so the cursor resume is exercised) to the
Jetstream source. Both run through ``live_pipeline`` (`run` and `run --source jetstream`): the same dispatcher,
state and attribution. The final states hold the same activity and attention per account, and attributing them
gives the same result.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.app.daemon import live_pipeline
from streamer.app.settings import load_settings
from streamer.core.attribution import AttributionConfig, attribute_snapshot
from streamer.core.checkpoint import load_checkpoint
from streamer.sources.relay_server import Relay
from streamer.testing.jetstream_server import JetstreamServer, jetstream_events
from streamer.testing.synth import write_synth_archive
from tests.compare import state_by_did


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("js") / "synth.skyarch.zst"
    write_synth_archive(path, 60, 3, 1)
    return path


async def _run(flags: dict[str, Any], ckpt: Path, done: Any, timeout: float = 60.0) -> Any:
    settings = load_settings(flags={**flags, "checkpoint_dir": ckpt, "metrics_port": 0, "interval": 3600}, env={})
    stop = asyncio.Event()
    daemons: list[Any] = []

    async def watch() -> None:
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and not (daemons and done(daemons[0])):
                await asyncio.sleep(0.05)
        finally:
            stop.set()

    task = asyncio.create_task(watch())
    daemon = await live_pipeline(settings, tables=False, stop=stop, on_ready=daemons.append)
    await task
    return daemon


async def test_relay_and_jetstream_give_the_same_state_and_results(archive: Path, tmp_path: Path) -> None:
    async with Relay(archive) as relay:
        await _run({"relay": relay.url}, tmp_path / "relay", lambda d: d.source.cursor == relay.range.last_seq)
    async with JetstreamServer(archive, drop_after=7) as server:
        via_js = await _run(
            {"source": "jetstream", "jetstream_url": server.url},
            tmp_path / "js",
            lambda d: d.source.stats.yielded >= len(jetstream_events(archive)),
        )
        assert server.connections > 3, "the connection was cut and resumed by cursor"
        assert via_js.source.stats.duplicates > 0, "Jetstream re-sends the cursor's microsecond: dropped, counted"
    # killed half way and restarted from its checkpoint: the cursor's microsecond is not applied twice
    events = jetstream_events(archive)
    async with JetstreamServer(archive, drop_after=7) as server:
        await _run(
            {"source": "jetstream", "jetstream_url": server.url},
            tmp_path / "js2",
            lambda d: d.pipeline.dispatcher.applied >= len(events) // 2,
        )
        await _run(
            {"source": "jetstream", "jetstream_url": server.url},
            tmp_path / "js2",
            lambda d: d.pipeline.dispatcher.cursor == events[-1]["time_us"] and d.source.stats.connects >= 1,
        )
    assert state_by_did(load_checkpoint(tmp_path / "js2")[0]) == state_by_did(load_checkpoint(tmp_path / "js")[0])
    state_r, _, _ = load_checkpoint(tmp_path / "relay")
    state_j, _, _ = load_checkpoint(tmp_path / "js")
    xr, er = state_by_did(state_r)
    xj, ej = state_by_did(state_j)
    assert xr == xj and er == ej, "the same events, applied once each, whichever source brought them"
    assert sum(state_r.snapshot().x) > 0 and len(er) > 10
    at = max(state_r.last_time_us, state_j.last_time_us)
    config = AttributionConfig()
    out_r = attribute_snapshot(state_r.snapshot(), config, run=1, as_of_us=at, alert_active=False)
    out_j = attribute_snapshot(state_j.snapshot(), config, run=1, as_of_us=at, alert_active=False)
    assert out_r.result is not None and out_j.result is not None
    a, b = out_r.result.to_message(), out_j.result.to_message()
    for volatile in ("runtime_s", "device", "top"):
        a.pop(volatile), b.pop(volatile)
    assert a["window"] == b["window"]
    # float32 sums over accounts interned in another order: equal to rounding
    for scale in ("full", "restricted", "same_game"):
        assert a["tiers"][scale] == pytest.approx(b["tiers"][scale], rel=1e-5, abs=1e-6)
    assert a["value"] == pytest.approx(b["value"], rel=1e-5)
    for game in ("restricted", "same_game"):
        for figure in ("tvd", "residual"):
            want = b["scale_bias"][game][figure]
            assert a["scale_bias"][game][figure] == pytest.approx(want, rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(
        sorted(t.phi for t in out_r.result.top), sorted(t.phi for t in out_j.result.top), rtol=1e-5
    )
    assert a["tier_sizes"] == b["tier_sizes"] and a["edges"] == b["edges"] and a["agents"] == b["agents"]


async def test_jetstream_v2_gives_the_relays_state_through_drops_and_a_restart(archive: Path, tmp_path: Path) -> None:
    """``run --source jetstream2``: the same archive served as Jetstream v2 (seq cursor, connections cut every 7
    events, then the daemon stopped half way and restarted from its checkpoint) applies every event once."""
    from streamer.testing.jetstream2_server import Jetstream2Server

    async with Relay(archive) as relay:
        await _run({"relay": relay.url}, tmp_path / "relay", lambda d: d.source.cursor == relay.range.last_seq)
    flags = {"source": "jetstream2"}
    async with Jetstream2Server(archive, drop_after=7) as server:
        last = len(server.messages)
        flags["jetstream2_url"] = server.url
        await _run(flags, tmp_path / "v2", lambda d: d.pipeline.dispatcher.applied >= last // 2)
        restart = len(server.requests)
        await _run(flags, tmp_path / "v2", lambda d: d.pipeline.dispatcher.cursor == last)
        assert server.connections > 3, "the connection was cut and resumed by seq"
        assert "cursor=" in server.requests[restart], "the restart asked for the checkpoint's seq"
    assert state_by_did(load_checkpoint(tmp_path / "v2")[0]) == state_by_did(load_checkpoint(tmp_path / "relay")[0])


async def test_a_backfill_from_the_v2_archive_then_live_gives_the_relays_state(tmp_path: Path) -> None:
    """``run --source jetstream2 --backfill``: two thirds of the archive sealed in the local v2's archive, the rest
    only on the live tail; stopped during the archive sweep and restarted from the checkpoint (which resumes the
    sweep at its seq), every event is applied once: the state is the relay's."""
    from streamer.testing.jetstream2_server import Jetstream2Server

    archive = tmp_path / "synth.skyarch.zst"
    write_synth_archive(archive, 600, 4, 3)
    async with Relay(archive) as relay:
        await _run({"relay": relay.url}, tmp_path / "relay", lambda d: d.source.cursor == relay.range.last_seq)
    async with Jetstream2Server(archive) as probe:
        total = len(probe.messages)
    key_file = tmp_path / "key"
    key_file.write_text("local-archive-key\n")
    async with Jetstream2Server(archive, sealed=2 * total // 3, segment_events=40, oldest_seq=total // 2) as server:
        assert server.archive_server is not None
        server.archive_server.delay_s = 0.1  # a slow archive: the first run is stopped in the middle of the sweep
        flags = {"source": "jetstream2", "jetstream2_url": server.url, "backfill": "36500d",
                 "jetstream2_api_key_file": key_file, "jetstream2_archive_url": server.archive_url}  # fmt: skip
        await _run(flags, tmp_path / "v2", lambda d: d.pipeline.dispatcher.applied >= total // 4)
        assert server.connections == 0, f"stopped during the archive sweep ({total} events)"
        swept = server.archive_server.calls.count("getSegment")
        server.archive_server.delay_s = 0.0
        await _run(flags, tmp_path / "v2", lambda d: d.pipeline.dispatcher.cursor == total)
        assert server.archive_server.calls.count("getSegment") - swept < 2 * total // 3 // 40 + 1, "resumed"
        assert server.connections >= 1 and f"cursor={2 * total // 3}" in server.requests[0], "cut over at the tip"
    assert state_by_did(load_checkpoint(tmp_path / "v2")[0]) == state_by_did(load_checkpoint(tmp_path / "relay")[0])


async def test_the_runs_of_a_backfill_are_the_replays_runs(tmp_path: Path) -> None:
    """The bundled archive sealed whole in the local v2's archive: ``run --backfill`` makes its runs in event time,
    each equal to the replay's (the golden file's hourly runs; the replay's extra run at the archive's end is a
    finite source's), and goes on with the wall clock after the cut-over."""
    import json

    from streamer.testing.jetstream2_server import Jetstream2Server
    from streamer.testing.synth import default_archive
    from tests.compare import assert_close

    golden = [json.loads(line) for line in (Path(__file__).parents[2] / "golden" / "default_replay.jsonl").open()]
    volatile = {"runtime_s", "device", "topic"}
    async with Jetstream2Server(default_archive()) as probe:
        total = len(probe.messages)
    out = tmp_path / "results.jsonl"
    async with Jetstream2Server(default_archive(), sealed=total, segment_events=2000) as server:
        flags = {"source": "jetstream2", "jetstream2_url": server.url, "backfill": "36500d", "out": out,
                 "jetstream2_api_key": "local-archive-key", "jetstream2_archive_url": server.archive_url}  # fmt: skip
        daemon = await _run(flags, tmp_path / "bf", lambda d: d.pipeline.dispatcher.cursor == total, timeout=120)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = [m for m in golden if m["topic"] == "tiers"][:-1]  # the replay's runs but its tail
    assert [m["run"] for m in got] == [m["run"] for m in want] and len(got) == 23
    for g, w in zip(got, want, strict=True):
        same = {k: v for k, v in w.items() if k not in volatile}
        assert_close({k: v for k, v in g.items() if k not in volatile}, same, f"run {g['run']}")
    assert daemon.pipeline.schedule.run == 23 and daemon.pipeline.dispatcher.before_fold is None


async def test_a_backfill_only_run_replays_the_window_and_ends_at_the_tip(tmp_path: Path) -> None:
    """``run --backfill 36500d --backfill-only``: the archive swept in event time, a last run at the sealed tip, and
    the run ends by itself without opening the live tail; its runs are the replay's up to the tip (the golden
    hourly runs), and the last one is made at the tip's event."""
    import json

    from streamer.testing.jetstream2_server import Jetstream2Server
    from streamer.testing.synth import default_archive
    from tests.compare import assert_close

    golden = [json.loads(line) for line in (Path(__file__).parents[2] / "golden" / "default_replay.jsonl").open()]
    volatile = {"runtime_s", "device", "topic"}
    out = tmp_path / "results.jsonl"
    async with Jetstream2Server(default_archive(), unsealed=3000, segment_events=2000) as server:
        assert server.archive_server is not None
        tip, tip_us = server.archive_server.sealed_tip, server.archive_server.files[-1][2][-1].witnessed_at
        flags = {"source": "jetstream2", "jetstream2_url": server.url, "backfill": "36500d", "backfill_only": True,
                 "out": out, "jetstream2_api_key": "local-archive-key", "checkpoint_dir": tmp_path / "bf",
                 "metrics_port": 0, "interval": 3600}  # fmt: skip
        daemon = await asyncio.wait_for(live_pipeline(load_settings(flags=flags, env={}), tables=False), 120)
        assert server.connections == 0, "the live tail was never opened"
    assert daemon.pipeline.dispatcher.cursor == tip
    got = [m for m in map(json.loads, out.read_text().splitlines()) if m["topic"] == "tiers"]
    assert [m["run"] for m in got] == list(range(1, len(got) + 1)) and got[-1]["as_of_us"] == tip_us
    want = [m for m in golden if m["topic"] == "tiers" and m["as_of_us"] < tip_us]
    assert len(got) == len(want) + 1 >= 10
    for g, w in zip(got, want, strict=False):
        same = {k: v for k, v in w.items() if k not in volatile}
        assert_close({k: v for k, v in g.items() if k not in volatile}, same, f"run {g['run']}")
