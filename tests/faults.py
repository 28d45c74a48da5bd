"""Fault injection at observed points: a test kills or signals a process once it has *seen* the process reach a
point (a progress line on stderr, a cursor read from Kafka, a checkpoint file moving, a result line written), never
after a sleep tuned to one machine's speed. Each wait has a generous deadline and fails with what it waited for.

Where a process must be caught mid-stream, it is slowed by its own documented flag (``--speed``), so "the kill
landed before the end" holds by construction: the process cannot outrun the point the test observed by more than
its pace allows.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

POLL_S = 0.02


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)


def mtime(path: Path) -> int:
    """``path``'s modification time in ns (0 while it does not exist): a checkpoint that moved is a new mtime."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def line_count(path: Path) -> int:
    """Complete lines of ``path`` so far (0 while it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def moved(path: Path) -> Callable[[], bool]:
    """A condition: ``path`` (a checkpoint) was written again since this call."""
    before = mtime(path)
    return lambda: mtime(path) != before


def grew(path: Path, lines: int) -> Callable[[], bool]:
    """A condition: ``path`` (a results file) holds ``lines`` more complete lines than at this call."""
    aim = line_count(path) + lines
    return lambda: line_count(path) >= aim


PROGRESS = re.compile(r"^\w+: ([\d,]+)(?:/[\d,]+)? (?:items|frames|events)\b")


class Lines:
    """Reads one of a process's output streams on a thread (so its pipe never fills) and keeps its lines and the
    last position its progress lines (``replay: 6,000/11,998 items ...``, ``record: 120 frames ...``; see
    ``streamer/app/progress.py``) reported; ``SKYATTR_PROGRESS_EVERY`` in the process's environment sets how
    often."""

    def __init__(self, stream: IO[str] | IO[bytes] | None) -> None:
        assert stream is not None, "start the process with stderr=subprocess.PIPE"
        self.lines: list[str] = []
        self.position = 0
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str] | IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            self.lines.append(line)
            match = PROGRESS.match(line)
            if match:
                self.position = int(match.group(1).replace(",", ""))

    def seen(self, text: str) -> Callable[[], bool]:
        """A condition: a line holding ``text`` was written."""
        return lambda: any(text in line for line in self.lines)

    def past(self, position: int) -> Callable[[], bool]:
        """A condition: a progress line reported ``position`` or beyond."""
        return lambda: self.position >= position

    def text(self, timeout: float = 60) -> str:
        """Everything it wrote, once the stream has ended (the process exited)."""
        self._thread.join(timeout)
        return "".join(self.lines)


def reach(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``condition()`` is observed while ``proc`` runs; fail if it exits first or after ``timeout``."""
    wait_until(lambda: proc.poll() is not None or condition(), timeout, what)
    assert proc.poll() is None, f"the process exited (code {proc.returncode}) before {what}"


def signal_when(
    proc: subprocess.Popen, condition: Callable[[], bool], timeout: float, what: str, sig: int = signal.SIGKILL
) -> None:
    """Send ``sig`` (SIGKILL by default) to ``proc`` as soon as ``condition()`` is observed while it runs."""
    reach(proc, condition, timeout, what)
    proc.send_signal(sig)
