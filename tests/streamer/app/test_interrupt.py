"""Ctrl-C: exit 130 within about a second, one line at most, no traceback, wherever the interrupt lands."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.faults import Lines

REPO = Path(__file__).resolve().parents[3]
BOUND_S = 4.0  # the grace is 1 s; the rest is process teardown on a busy machine


def _interrupt(proc: subprocess.Popen, err: Lines | None = None) -> tuple[int, float, str]:
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=30)
    finally:
        proc.kill()
    took = time.monotonic() - sent
    stderr = err.text() if err is not None else proc.stderr.read().decode()  # type: ignore[union-attr]
    return rc, took, stderr


def test_an_interrupt_lost_in_a_gc_callback_still_ends_the_command() -> None:
    """JAX's garbage-collection callback drops a KeyboardInterrupt raised inside it ("Exception ignored"): here a
    callback that takes most of the time, and a main loop that would run for ever. The watchdog ends it."""
    script = textwrap.dedent(
        """
        import gc, sys, time
        from streamer.app import interrupt
        interrupt.install()
        def slow(phase, info):
            end = time.monotonic() + 0.05
            while time.monotonic() < end:
                pass
        gc.callbacks.append(slow)
        print("ready", flush=True)
        while True:
            gc.collect()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    time.sleep(0.3)
    rc, took, stderr = _interrupt(proc)
    assert rc == 130 and took < BOUND_S, (rc, took, stderr)
    assert stderr.strip().splitlines()[-1] == "interrupted"


@pytest.mark.parametrize("after_s", [0.05, 2.0])
def test_ctrl_c_ends_attribute_with_130_and_no_traceback(after_s: float) -> None:
    """During the imports of the first second, and while the kernels run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "attribute", "--agents", "400000", "--no-progress"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    err = Lines(proc.stderr)
    time.sleep(after_s)
    assert proc.poll() is None, "still running when interrupted"
    rc, took, stderr = _interrupt(proc, err)
    assert rc == 130 and took < BOUND_S, (rc, took, stderr)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
