"""A checkpoint records what it depends on and refuses a resume that would mix results; a damaged checkpoint is
one clear line and exit 2, never a traceback, "Aborted." or a silent fresh start."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from streamer.core.checkpoint import FILENAME, load_checkpoint
from streamer.testing.synth import default_archive

FAST = ["--no-progress", "--quiet", "--interval", "21600"]


def _replay(*args: str, archive: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", "replay", str(archive or default_archive()), *FAST, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory of a whole replay of the bundled archive."""
    ckpt = tmp_path_factory.mktemp("finished") / "ckpt"
    proc = _replay("--checkpoint-dir", str(ckpt))
    assert proc.returncode == 0, proc.stderr
    return ckpt


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--interval", "3600"], "interval"),
        (["--indicator", "reach"], "attribution"),
        (["--indicator-params", '{"kappa": 3}'], "attribution"),
        (["--head", "0.05"], "attribution"),
        (["--panel-size", "50"], "attribution"),
    ],
)
def test_resuming_with_other_options_is_refused_naming_them(
    finished: Path, tmp_path: Path, flags: list[str], names: str
) -> None:
    ckpt = _copy(finished, tmp_path / "ckpt")
    args = ["--checkpoint-dir", str(ckpt)]
    proc = _replay(*args, *flags)  # a repeated option: the last one counts
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"was made with {names} =" in last and "--checkpoint-dir" in last and "Traceback" not in proc.stderr


def test_a_different_followers_file_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    followers = tmp_path / "followers.csv"
    followers.write_text("did,followers\ndid:plc:aaaaaaaaaaaaaaaaaaaaaaaa,10\n")
    assert _replay("--checkpoint-dir", str(ckpt), "--followers", str(followers)).returncode == 0
    followers.write_text("did,followers\ndid:plc:aaaaaaaaaaaaaaaaaaaaaaaa,99999\n")
    proc = _replay("--checkpoint-dir", str(ckpt), "--followers", str(followers))
    assert proc.returncode == 2 and "was made with followers =" in proc.stderr.strip().splitlines()[-1]


def test_another_file_at_the_same_archive_path_is_refused(tmp_path: Path) -> None:
    archive, ckpt = tmp_path / "a.skyarch.zst", tmp_path / "ckpt"
    archive.write_bytes(default_archive().read_bytes())
    assert _replay("--checkpoint-dir", str(ckpt), archive=archive).returncode == 0
    from streamer.testing.synth import write_synth_archive

    write_synth_archive(archive, hours=2, agents=50, seed=99)
    proc = _replay("--checkpoint-dir", str(ckpt), archive=archive)
    assert proc.returncode == 2, proc.stderr
    assert "another archive at this path" in proc.stderr.strip().splitlines()[-1]


def _damage(ckpt: Path, how: str) -> None:
    path = ckpt / FILENAME
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00\xff" * 1000)
    else:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(bytes(arrays["__meta__"]).decode())
        if how == "unknown_key":
            meta["extra"]["surprise"] = 1
        elif how == "wrong_type":
            meta["cursor"] = "12"
        elif how == "wrong_nested_type":
            meta["extra"]["schedule"]["run"] = True
        elif how == "old_version":
            meta["version"] = 1
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        with zipfile.ZipFile(path, "w"):
            pass
        np.savez(path, **arrays)


@pytest.mark.parametrize(
    "how", ["empty", "truncated", "garbage", "unknown_key", "wrong_type", "wrong_nested_type", "old_version"]
)
def test_a_damaged_checkpoint_is_one_line_and_exit_2(finished: Path, tmp_path: Path, how: str) -> None:
    ckpt = _copy(finished, tmp_path / "ckpt")
    _damage(ckpt, how)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(ckpt)
    proc = _replay("--checkpoint-dir", str(ckpt))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and "Aborted" not in proc.stderr
    assert "cannot read checkpoint" in lines[-1] and str(ckpt) in proc.stderr and "start afresh" in proc.stderr


async def test_one_checkpoint_object_for_live_and_replay(tmp_path: Path) -> None:
    """Live and replay load and write through one Checkpoints: each refuses the other's directory, naming both,
    and a write carries the mode and the dependencies it is checked by."""
    from streamer.core.checkpoint import Checkpoints
    from streamer.core.events import Event
    from streamer.core.state import AgentState, StateConfig

    config = StateConfig(bucket_hours=1.0, buckets=3)
    state = AgentState(config)
    state.apply(Event(3_600_000_000_000, 1, "like", "did:plc:" + "a" * 24, "did:plc:" + "b" * 24))
    live = Checkpoints(tmp_path / "live", "live", {"relay": "wss://example.invalid"})
    await live.save(state, 41, None, {"schedule": {"run": 3, "next_due_us": -1, "alert_active": False}})
    state2, cursor, extra = live.resume(config) or (None, None, {})
    assert cursor == 41 and extra["mode"] == "live" and extra["deps"] == {"relay": "wss://example.invalid"}
    assert state2 is not None and state2.dids == state.dids
    with pytest.raises(ValueError, match=r"written by a live `skyattr run`; give a replay its own checkpoint"):
        Checkpoints(tmp_path / "live", "replay", {}).resume()
    with pytest.raises(ValueError, match="another window"):
        live.resume(StateConfig(bucket_hours=2.0, buckets=3))
    with pytest.raises(ValueError, match="relay"):
        Checkpoints(tmp_path / "live", "live", {"relay": "wss://elsewhere.invalid"}).resume(config)
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        await Checkpoints(tmp_path / "file" / "sub", "replay", {}).save(state, 0, None, {})
