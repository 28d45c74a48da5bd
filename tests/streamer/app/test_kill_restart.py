"""Kill the replay process at an arbitrary moment (SIGKILL: no chance to clean up, or SIGTERM: graceful), restart
it, and compare the final state with an uninterrupted replay of the same archive."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.testing.synth import default_archive
from tests.faults import moved, reach, signal_when


def _replay(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamer",
            "replay",
            str(default_archive()),
            "--no-progress",
            "--quiet",
            "--interval",
            "86400",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _snapshot(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_and_restarted_replay_equals_an_uninterrupted_one(tmp_path: Path, sig: signal.Signals) -> None:
    reference = tmp_path / "reference.npz"
    assert _replay(["--snapshot-out", str(reference)]).wait(120) == 0
    ckpt, final = tmp_path / "ckpt", tmp_path / "final.npz"
    # 24 h of event time at 40,000x: about 2 s; the signal goes once the second checkpoint (item 1,400) is seen,
    # so it lands after a checkpoint and long before the end whatever the machine's speed
    first = moved(ckpt / "state.npz")
    slow = _replay(["--checkpoint-dir", str(ckpt), "--checkpoint-every-items", "700", "--speed", "40000"])
    reach(slow, first, 60, "the first checkpoint")
    signal_when(slow, moved(ckpt / "state.npz"), 60, "the second checkpoint", sig)
    code = slow.wait(60)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    restart = _replay(
        ["--checkpoint-dir", str(ckpt), "--checkpoint-every-items", "700", "--snapshot-out", str(final), "--json"]
    )
    out, err = restart.communicate(timeout=120)
    assert restart.returncode == 0, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert 0 < summary["resumed_from"] < summary["position"] == 11_998, "the signal landed mid-replay"
    a, b = _snapshot(reference), _snapshot(final)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
