"""``skyattr run --source jetstream2 --backfill`` SIGKILLed twice during the archive sweep and once on the live tail,
restarted from its checkpoint each time: the final state is the replay's of the same archive, and every attribution
run is published once, in order, as the replay computes it.

The local v2 serves the bundled archive (all but its last 600 events sealed in segments of 200, each download
slowed so that the sweep lasts seconds); the process checkpoints every 0.1 s and is killed once its checkpoint has
moved past where the previous one was killed (and, the third time, past the sealed tip: on the live tail, which is
paced at 5 ms an event).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streamer.core.checkpoint import load_checkpoint
from streamer.testing.jetstream2_server import Jetstream2Server
from streamer.testing.synth import default_archive
from streamer.testing.threaded import serving_in_thread
from tests.compare import assert_close, state_by_did
from tests.faults import wait_until

KEY = "soak-key"
UNSEALED = 600


def _cursor(ckpt: Path) -> int:
    try:
        loaded = load_checkpoint(ckpt)
    except ValueError:  # caught between the write and the rename of a checkpoint: read it next time
        return -1
    return -1 if loaded is None else loaded[1]


def test_backfill_then_live_survives_sigkill_in_both_phases(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    flags = f"--no-progress --quiet --interval 3600 --checkpoint-dir {reference} --out {tmp_path / 'replay.jsonl'}"
    replay = [sys.executable, "-m", "streamer", "replay", str(default_archive()), *flags.split()]
    subprocess.run(replay, check=True, capture_output=True, timeout=300)
    ckpt, out = tmp_path / "ckpt", tmp_path / "results.jsonl"
    env = {**os.environ, "SKYATTR_JETSTREAM2_API_KEY": KEY}
    server = Jetstream2Server(default_archive(), unsealed=UNSEALED, segment_events=200, api_key=KEY)
    with serving_in_thread(server):
        assert server.archive_server is not None
        server.archive_server.delay_s = 0.05
        server.live_delay_s = 0.005
        total, tip = len(server.messages), server.archive_server.sealed_tip
        run = [sys.executable, "-m", "streamer", "run", "--source", "jetstream2", "--jetstream2-url", server.url,
               "--backfill", "36500d", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "0.1", "--out", str(out),
               "--metrics-port", "0", "--interval", "3600", "--quiet"]  # fmt: skip
        killed_at: list[int] = []
        for phase in ("sweep", "sweep", "live"):
            proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            past = max([0, *killed_at]) if phase == "sweep" else tip
            try:
                wait_until(
                    lambda p=past, q=proc: q.poll() is not None or _cursor(ckpt) > p, 120, f"a checkpoint past {past}"
                )
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.wait(30)
            killed_at.append(_cursor(ckpt))
        assert killed_at[0] < killed_at[1] < tip < killed_at[2] < total, (killed_at, tip, total)
        last = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            wait_until(lambda: last.poll() is not None or _cursor(ckpt) == total, 120, "every event")
            time.sleep(0.3)  # the checkpoint after the last event is written; then a clean stop
            last.send_signal(signal.SIGTERM)
            _, err = last.communicate(timeout=60)
        finally:
            if last.poll() is None:
                last.kill()
        assert last.returncode == 0, err.decode()[-2000:]
    reference_state = load_checkpoint(reference)
    final = load_checkpoint(ckpt)
    assert reference_state is not None and final is not None and final[1] == total
    assert state_by_did(final[0]) == state_by_did(reference_state[0]), "every event applied once"
    got = [json.loads(line) for line in out.read_text().splitlines()]
    runs = [m["run"] for m in got if m["topic"] == "tiers"]
    assert runs == list(range(1, len(runs) + 1)), "every run published once, in order"
    want = {m["run"]: m for m in map(json.loads, (tmp_path / "replay.jsonl").read_text().splitlines())
            if m["topic"] == "tiers"}  # fmt: skip
    volatile = {"runtime_s", "device", "topic"}
    for m in got:
        if m["topic"] == "tiers" and m["run"] < len(want):  # the event-time runs of the sweep: the replay's
            same = {k: v for k, v in want[m["run"]].items() if k not in volatile}
            assert_close({k: v for k, v in m.items() if k not in volatile}, same, f"run {m['run']}")
