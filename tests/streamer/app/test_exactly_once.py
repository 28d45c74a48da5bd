"""Exactly-once results: kill -9 at random moments, a full disk, a broker away for a whole replay or for part of it,
SIGTERM during the outage. The JSONL file and the Kafka topics must end up equal to an uninterrupted run's, line for
line: no result twice, none missing."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamer.testing.synth import default_archive
from tests.broker import SCRIPTS_BOOTSTRAP, ScriptBroker, kafka_bootstrap
from tests.faults import Lines, grew, moved, reach, signal_when, wait_until

VOLATILE = {"runtime_s", "device"}
BASE = ["--quiet", "--interval", "1800", "--checkpoint-every-items", "400"]
SEED = int(os.environ.get("SKYATTR_FAULT_SEED", "20261201"))
# event time per wall second while kills land (24 h in 14 s): the progress lines a kill waits for come every 0.05 s,
# so a kill lands within a few dozen items of the position it was aimed at
PACE = "6000"
PROGRESS_EVERY = {"SKYATTR_PROGRESS_EVERY": "0.05"}
AIM = 500  # a kill is aimed at most this many items past the position seen when the checkpoint moved


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamer", "replay", str(default_archive()), *BASE, *args]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in json.loads(x).items() if k not in VOLATILE} for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("reference") / "ref.jsonl"
    proc = subprocess.run(_cmd("--out", str(out)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = _lines(out)
    assert len(lines) > 40, "enough runs for the kills to land between them"
    return lines


def _kill_at_random_points(
    args: list[str], ckpt: Path, kills: int, rng: random.Random, between: Any = None, env: dict[str, str] | None = None
) -> int:
    """Start the replay again and again, each time SIGKILLing it at a random point it is seen to reach: once its
    checkpoint has moved, at the first progress line at or past a position drawn up to :data:`AIM` items beyond
    the one it had reached then. A checkpoint is written every 400 items, so each start moves the checkpoint on by
    less than 1,000 items, and eleven kills land before the archive's end (11,998) by construction.
    ``between(i)`` runs after kill i. Returns how many kills landed (all, or the test fails)."""
    for i in range(kills):
        checkpointed = moved(ckpt / "state.npz")
        env_i = {**(env or os.environ), **PROGRESS_EVERY}
        proc = subprocess.Popen(_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env_i)
        err = Lines(proc.stderr)
        reach(proc, checkpointed, 120, "a checkpoint")
        aim = err.position + rng.randint(1, AIM)
        signal_when(proc, err.past(aim), 120, f"item {aim}")
        proc.wait(60)
        if between is not None:
            between(i)
    return kills


def test_kill_9_at_random_points_leaves_the_jsonl_equal_to_an_uninterrupted_run(
    tmp_path: Path, reference: list[dict[str, Any]]
) -> None:
    out, ckpt = tmp_path / "out.jsonl", tmp_path / "ckpt"
    args = ["--checkpoint-dir", str(ckpt), "--out", str(out), "--speed", PACE]
    landed = _kill_at_random_points(args, ckpt, 10, random.Random(SEED))
    assert landed >= 10, f"only {landed} kills landed mid-replay"
    final = subprocess.run(_cmd(*args[:-2], "--json"), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    got = _lines(out)
    ids = [(m["topic"], m["id"]) for m in got]
    assert len(ids) == len(set(ids)), "a result written twice"
    assert got == reference, "line for line what an uninterrupted replay writes"
    summary = json.loads(final.stdout.strip().splitlines()[-1])
    assert summary["interrupted"] is False


def test_a_full_disk_stops_the_replay_with_exit_2_before_anything_is_marked_done(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    ckpt = tmp_path / "ckpt"
    proc = subprocess.run(
        _cmd("--checkpoint-dir", str(ckpt), "--out", "/dev/full"), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "/dev/full" in last and "No space left on device" in last and "Traceback" not in proc.stderr
    # the checkpoint is not marked finished, and a rerun to a writable file delivers everything exactly once
    out = tmp_path / "out.jsonl"
    again = subprocess.run(_cmd("--checkpoint-dir", str(ckpt), "--out", str(out)), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    ref = tmp_path / "ref.jsonl"
    assert subprocess.run(_cmd("--out", str(ref)), capture_output=True, timeout=300).returncode == 0
    assert _lines(out) == _lines(ref)


def test_a_torn_last_line_is_cut_and_rewritten(tmp_path: Path, reference: list[dict[str, Any]]) -> None:
    out, ckpt = tmp_path / "out.jsonl", tmp_path / "ckpt"
    args = ["--checkpoint-dir", str(ckpt), "--out", str(out)]
    landed = _kill_at_random_points([*args, "--speed", PACE], ckpt, 1, random.Random(SEED + 1))
    assert landed == 1
    with open(out, "a") as fh:  # what a crash in the middle of a write leaves
        fh.write('{"topic":"tiers","id":"cascade@1","run":')
    assert subprocess.run(_cmd(*args), capture_output=True, timeout=300).returncode == 0
    assert _lines(out) == reference


# ------------------------------------------------------------------------------------------------------- Kafka
async def _consume(bootstrap: str, topic: str, expect: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every message of ``topic`` from the beginning: until ``expect`` arrived, then 2 s more for any extra."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        isolation_level="read_committed",  # results are written in transactions; a killed one's are aborted
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            out.extend(json.loads(r.value) for records in batch.values() for r in records)
        extra = await consumer.getmany(timeout_ms=2000)
        out.extend(json.loads(r.value) for records in extra.values() for r in records)
    finally:
        await consumer.stop()
    return out


def _kafka_args(tag: str, bootstrap: str) -> list[str]:
    return [
        "--kafka-bootstrap",
        bootstrap,
        "--kafka-topic-tiers",
        f"eo.tiers.{tag}",
        "--kafka-topic-alerts",
        f"eo.alerts.{tag}",
    ]


def _by_topic(lines: list[dict[str, Any]], topic: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in ("topic", *VOLATILE)} for m in lines if m["topic"] == topic]


def _strip(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in VOLATILE} for m in msgs]


def test_kill_9_broker_outage_and_sigterm_during_it_leave_the_topics_exactly_once(
    tmp_path: Path, reference: list[dict[str, Any]]
) -> None:
    bootstrap = kafka_bootstrap()
    if bootstrap != SCRIPTS_BOOTSTRAP:
        pytest.skip(f"the outage needs the ops/kafka scripts' own broker on {SCRIPTS_BOOTSTRAP}")
    broker = ScriptBroker()
    if broker.pid is None:
        pytest.skip(f"the broker on {SCRIPTS_BOOTSTRAP} was not started by ops/kafka/start.sh")
    tag = uuid.uuid4().hex[:8]
    out, ckpt = tmp_path / "out.jsonl", tmp_path / "ckpt"
    args = ["--checkpoint-dir", str(ckpt), "--out", str(out), *_kafka_args(tag, bootstrap)]
    rng = random.Random(SEED + 2)
    env = {**os.environ, "SKYATTR_KAFKA_SHUTDOWN_TIMEOUT": "3"}
    try:
        landed = _kill_at_random_points([*args, "--speed", PACE], ckpt, 4, rng, env=env)
        broker.stop()
        landed += _kill_at_random_points([*args, "--speed", PACE], ckpt, 3, rng, env=env)
        # SIGTERM while the broker is away: results still unsent are kept, not checkpointed away
        written = grew(out, 1)  # a result written while the broker is away is kept for it
        proc = subprocess.Popen(_cmd(*args, "--speed", PACE), stderr=subprocess.PIPE, text=True, env=env)
        stderr = Lines(proc.stderr)
        signal_when(proc, written, 120, "a result while the broker is away", signal.SIGTERM)
        proc.wait(120)
        err = stderr.text()
        assert proc.returncode == 3, err
        assert "kept in" in err and "results.jsonl" in err
    finally:
        broker.ensure_running()
    landed += _kill_at_random_points([*args, "--speed", PACE], ckpt, 3, rng, env=env)
    assert landed >= 10
    final = subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert _lines(out) == reference
    want_tiers, want_alerts = _by_topic(reference, "tiers"), _by_topic(reference, "alerts")
    tiers = asyncio.run(_consume(bootstrap, f"eo.tiers.{tag}", len(want_tiers)))
    alerts = asyncio.run(_consume(bootstrap, f"eo.alerts.{tag}", len(want_alerts)))
    assert _strip(tiers) == want_tiers, "every run once, in order"
    assert _strip(alerts) == want_alerts


def test_a_broker_away_for_the_whole_replay_is_reported_and_the_results_sent_later(
    tmp_path: Path, reference: list[dict[str, Any]]
) -> None:
    bootstrap = kafka_bootstrap()
    tag = uuid.uuid4().hex[:8]
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "SKYATTR_KAFKA_SHUTDOWN_TIMEOUT": "2"}
    away = subprocess.run(
        _cmd("--checkpoint-dir", str(ckpt), "--json", *_kafka_args(tag, "127.0.0.1:9")),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert away.returncode == 3, away.stderr
    summary = json.loads(away.stdout.strip().splitlines()[-1])
    assert summary["kafka"]["unsent"] == len(reference) and summary["kafka"]["kept"] is True
    assert f"{len(reference)} result(s) not delivered to Kafka" in away.stderr
    # the same checkpoint directory with a reachable broker: everything arrives, once
    back = subprocess.run(
        _cmd("--checkpoint-dir", str(ckpt), "--json", *_kafka_args(tag, bootstrap)), capture_output=True, text=True
    )
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout.strip().splitlines()[-1])["kafka"]["unsent"] == 0
    want_tiers, want_alerts = _by_topic(reference, "tiers"), _by_topic(reference, "alerts")
    assert _strip(asyncio.run(_consume(bootstrap, f"eo.tiers.{tag}", len(want_tiers)))) == want_tiers
    assert _strip(asyncio.run(_consume(bootstrap, f"eo.alerts.{tag}", len(want_alerts)))) == want_alerts


# ------------------------------------------------------------------------------------------------------- live
def test_kill_9_of_live_run_never_reuses_a_run_number_nor_loses_or_doubles_an_event(tmp_path: Path) -> None:
    """`run` against the local relay, SIGKILLed at 10 random moments: every journaled result is in the JSONL file
    once, run numbers only grow, and at the end the state holds every event of the archive exactly once."""
    from streamer.core.checkpoint import load_checkpoint
    from tests.net import free_port

    port = free_port()
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamer",
            "relay",
            str(default_archive()),
            "--port",
            str(port),
            "--speed",
            "3000",
            "--from-start",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    out, ckpt = tmp_path / "live.jsonl", tmp_path / "ckpt"
    cmd = [
        sys.executable, "-m", "streamer", "run", "--relay", f"ws://127.0.0.1:{port}", "--quiet", "--interval", "1",
        "--checkpoint-every", "0.7", "--checkpoint-dir", str(ckpt), "--out", str(out), "--metrics-port", "0",
    ]  # fmt: skip
    rng = random.Random(SEED + 3)
    try:
        for _ in range(10):
            checkpointed = moved(ckpt / "state.npz")
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            reach(proc, checkpointed, 120, "a checkpoint")
            # then killed once a random number of further results are seen written (runs are 1 s apart, the
            # checkpoint every 0.7 s: the kills fall at every phase between the two)
            signal_when(proc, grew(out, rng.randint(1, 4)), 120, "more results")
            proc.communicate(timeout=60)
        # the last one runs until the relay has nothing more, then stops gracefully
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        total = 12_045  # events of the bundled archive (11,998 frames)

        def complete() -> bool:
            loaded = load_checkpoint(ckpt)
            return loaded is not None and loaded[0].events >= total

        wait_until(complete, 180, f"a checkpoint of all {total:,} events")
        signal_when(proc, grew(out, 2), 120, "two runs on the complete state", signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    finally:
        relay.kill()
        relay.communicate()
    loaded = load_checkpoint(ckpt)
    assert loaded is not None
    assert loaded[0].events == total, "every event of the archive applied exactly once across 10 kills"
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    tiers = [m for m in lines if m["topic"] == "tiers"]
    runs = [m["run"] for m in tiers]
    assert len(tiers) >= 10 and runs == sorted(set(runs)), f"run numbers reused or out of order: {runs}"
    ids = [(m["topic"], m["id"]) for m in lines]
    assert len(ids) == len(set(ids)), "a result delivered twice"
    journal = [json.loads(x) for x in (ckpt / "results.jsonl").read_text().splitlines()]
    assert {(e["topic"], e["id"]) for e in journal} <= set(ids), "a journaled result missing from the file"
