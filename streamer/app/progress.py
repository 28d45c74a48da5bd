"""Progress of the long jobs (``replay``, ``report``, ``synth``, ``attribute``, ``record``), on stderr.

Where stderr is a terminal the job shows a rich bar with its count, total, percentage, rate and ETA; the bar is
transient, so what stays on the screen afterwards is the job's own output. Anywhere else (a CI log, a pod's log,
``2> file``) a bar would be a stream of carriage returns and escape codes, so one plain line is written every
:data:`DEFAULT_EVERY_S` seconds instead (``SKYATTR_PROGRESS_EVERY`` overrides it)::

    replay: 6,000/11,998 items (50%), 3,100/s, ETA 2 s

A command's ``--no-progress`` turns both off. Nothing here writes to stdout: stdout carries what the user asked
for (result lines, tables, JSON), so ``skyattr replay > runs.txt`` captures the runs and nothing else.

The rate is measured from a task's first update on, not from zero: a resumed replay starts at the position its
checkpoint held, and counting those items as read in this process would promise an ETA far too short.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, TaskProgressColumn, TextColumn
from rich.progress import Progress as RichProgress
from rich.progress import Task as RichTask
from rich.text import Text

from streamer.app.options import plain, visible
from streamer.sources.archive import SKIPPABLE_HIGH, SKIPPABLE_LOW, archive_files

EVERY_ENV = "SKYATTR_PROGRESS_EVERY"
DEFAULT_EVERY_S = 10.0
BAR_WIDTH = 24
MIN_LABEL = 12  # the bar's label is never cut shorter than this
_TRAILER_PROBE = 4096  # bytes read from the end of an archive file to find its trailer (it holds ~50)


def log_every(env: dict[str, str] | None = None) -> float:
    """Seconds between log lines off a terminal: ``SKYATTR_PROGRESS_EVERY`` if it is a positive number, else 10
    (a value that is not one is named in a warning on stderr, not ignored in silence)."""
    raw = (os.environ if env is None else env).get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value > 0:
        return value
    print(
        f"warning: {EVERY_ENV}={visible(raw)} is not a positive number of seconds: a progress line every "
        f"{DEFAULT_EVERY_S:g} s",
        file=sys.stderr,
    )
    return DEFAULT_EVERY_S


def duration(seconds: float) -> str:
    """``2 s``, ``3 min 05 s``, ``2 h 10 min``: short enough for a progress line, exact enough for a plan."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


class Task:
    """One measured piece of a job: ``completed`` of ``total`` (None: unknown) ``unit``, plus a ``detail`` text
    saying what it is doing now. Updated from the job's thread; read by the bar's and the logger's threads (plain
    attribute reads and writes, each consistent on its own)."""

    def __init__(
        self,
        owner: JobProgress,
        label: str,
        total: float | None,
        unit: str,
        detail: str,
        rate: bool,
        clock: Callable[[], float],
    ) -> None:
        self.owner, self.label, self.total, self.unit, self.detail = owner, label, total, unit, detail
        self.show_rate = rate
        self.completed: float = 0
        self.started = clock()
        self.finished = False
        self._clock = clock
        self._base: tuple[float, float] | None = None  # (completed, time) at the first update: the rate's origin
        self._rich_id: Any = None

    # the job's side -------------------------------------------------------------------------------------------
    def update(
        self,
        completed: float | None = None,
        *,
        advance: float = 0,
        total: float | None = None,
        detail: str | None = None,
    ) -> None:
        if completed is not None:
            self.completed = completed
        self.completed += advance
        if total is not None:
            self.total = total
        if detail is not None:
            self.detail = detail
        if self._base is None and (completed is not None or advance):
            self._base = (self.completed, self._clock())
        self.owner._changed(self)

    def done(self) -> None:
        """The task is over: its bar disappears, and the log stops speaking of it."""
        self.finished = True
        self.owner._changed(self)

    # the readers' side ----------------------------------------------------------------------------------------
    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(max(self.completed / self.total, 0.0), 1.0)

    def rate(self) -> float | None:
        """Units per second since the first update, once there is something to measure."""
        if self._base is None:
            return None
        done, since = self.completed - self._base[0], self._clock() - self._base[1]
        return done / since if done > 0 and since > 0 else None

    def eta(self) -> float | None:
        rate = self.rate()
        if rate is None or not self.total:
            return None
        return max(self.total - self.completed, 0) / rate

    def elapsed(self) -> float:
        return self._clock() - self.started

    def counts(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            return f"{_number(self.completed)}/{_number(self.total)}{unit}"
        return f"{_number(self.completed)}{unit}"

    def line(self) -> str:
        """The log line: ``label: count/total unit (pct%), rate/s, ETA t[, detail]``."""
        parts = [self.counts() + (f" ({self.fraction:.0%})" if self.fraction is not None else "")]
        rate = self.rate() if self.show_rate else None
        if rate is not None:
            parts.append(f"{_number(round(rate))}/s")
        eta = self.eta() if self.show_rate else None
        parts.append(f"ETA {duration(eta)}" if eta is not None else f"{duration(self.elapsed())} elapsed")
        if self.detail:
            parts.append(self.detail)
        return visible(f"{self.label}: " + ", ".join(parts))  # a file name with a newline must not split it


class _CountColumn(ProgressColumn):
    def render(self, task: RichTask) -> Text:
        ours: Task = task.fields["task"]
        return Text(ours.counts(), style="progress.download")


class _RateColumn(ProgressColumn):
    def render(self, task: RichTask) -> Text:
        ours: Task = task.fields["task"]
        rate = ours.rate() if ours.show_rate else None
        return Text(f"{_number(round(rate))}/s" if rate is not None else "", style="progress.data.speed")


class _TimeColumn(ProgressColumn):
    """ETA while one can be told, else the time elapsed."""

    def render(self, task: RichTask) -> Text:
        ours: Task = task.fields["task"]
        eta = ours.eta() if ours.show_rate else None
        if eta is not None:
            return Text(f"ETA {duration(eta)}", style="progress.remaining")
        return Text(duration(ours.elapsed()), style="progress.elapsed")


class JobProgress:
    """Progress of one job; a context manager. ``enabled=False`` (``--no-progress``) makes every call a no-op.

    ``console``: the console to draw the bar on (a test injects ``Console(force_terminal=True)``); by default
    stderr's. ``share``: the console the job prints its results on; when it and stderr are both the terminal,
    the bar is drawn on it, so rich keeps the bar below the result lines instead of the two overwriting each
    other (the bar still shows only when stderr is a terminal). ``every``/``stream``: the period and the stream of
    the log lines off a terminal (default: :func:`log_every`, stderr)."""

    def __init__(
        self,
        enabled: bool = True,
        *,
        console: Console | None = None,
        share: Console | None = None,
        every: float | None = None,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self.tasks: list[Task] = []
        self._clock = clock
        self._rich: RichProgress | None = None
        self._stream: IO[str] | None = None
        self._every = every if every is not None else log_every()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        if not enabled:
            return
        if console is None:
            console = Console(stderr=True)
            if console.is_terminal and share is not None and share.is_terminal:
                console = share
        if console.is_terminal:
            self._rich = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=BAR_WIDTH),
                TaskProgressColumn(),
                _CountColumn(),
                _RateColumn(),
                _TimeColumn(),
                console=console,
                transient=True,
                # print()s to stdout go above the bar only when stdout is that same terminal; redirected, they
                # must reach the file, not the bar's console
                redirect_stdout=_isatty(sys.stdout),
            )
        else:
            self._stream = stream if stream is not None else sys.stderr

    @property
    def mode(self) -> str:
        """``bar``, ``log`` or ``off``: what this job's progress looks like."""
        return "bar" if self._rich is not None else "log" if self._stream is not None else "off"

    def task(
        self, label: str, total: float | None = None, unit: str = "items", *, detail: str = "", rate: bool = True
    ) -> Task:
        """A new task (shown from now on); ``rate=False`` for tasks counted in steps, whose rate means nothing."""
        task = Task(self, label, total or None, unit, detail, rate, self._clock)
        self.tasks.append(task)
        if self._rich is not None:
            task._rich_id = self._rich.add_task(self._description(task), total=task.total, task=task)
        return task

    def start(self) -> JobProgress:
        if self._rich is not None:
            self._rich.start()
        elif self._stream is not None and self._thread is None:
            self._thread = threading.Thread(target=self._log_loop, name="skyattr-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """End the display (idempotent): the bar is erased, the log thread joined."""
        if self._rich is not None:
            self._rich.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> JobProgress:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # internals ------------------------------------------------------------------------------------------------
    def _description(self, task: Task) -> str:
        """The bar's label, cut (with an ellipsis) to what the terminal leaves beside the other columns, so the bar
        stays one line at 80 columns instead of wrapping and cutting off its count."""
        text = plain(task.label) + (f" · {plain(task.detail)}" if task.detail else "")
        if self._rich is None:
            return text
        rate = task.rate() if task.show_rate else None
        others = (
            BAR_WIDTH + len("100%") + len(task.counts()) + len(f"{_number(round(rate or 0))}/s") + len("ETA 9 min 59 s")
        )
        room = max(MIN_LABEL, self._rich.console.width - others - 6)  # 6: the spaces between the columns, and one
        return text if len(text) <= room else text[: room - 1] + "…"

    def _changed(self, task: Task) -> None:
        if self._rich is None or task._rich_id is None:
            return
        self._rich.update(
            task._rich_id,
            completed=task.completed,
            total=task.total,
            description=self._description(task),
            visible=not task.finished,
        )

    def current(self) -> Task | None:
        """The task the log speaks of: the newest one not done."""
        return next((t for t in reversed(self.tasks) if not t.finished), None)

    def _log_loop(self) -> None:
        while not self._stop.wait(self._every):
            self.log_now()

    def log_now(self) -> None:
        """Write the current task's line (the log thread calls this every period)."""
        task = self.current()
        if task is None or self._stream is None:
            return
        with self._lock:
            try:
                self._stream.write(task.line() + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # stderr closed under us (a pipe gone): progress is not worth a crash
                self._stop.set()


def archive_frames(path: str | Path) -> int | None:
    """The number of items a replay of ``path`` will read, when every file of it says so in its trailer (the JSON
    ``{"frames", "last_seq"}`` skippable frame that :class:`~streamer.sources.archive.ArchiveWriter` ends a file
    with); None otherwise (a crashed recording, a Jetstream file, a missing path: the bar then counts without a
    total). Reads a few KiB at the end of each file, nothing else."""
    try:
        files = archive_files(path)
    except OSError:
        return None
    total = 0
    for file in files:
        try:
            with open(file, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(size - min(size, _TRAILER_PROBE))
                tail = fh.read()
        except OSError:
            return None
        frames = None
        for start in range(len(tail) - 8, -1, -1):  # the last skippable frame that ends exactly at the end
            magic, length = struct.unpack_from("<II", tail, start)
            if SKIPPABLE_LOW <= magic <= SKIPPABLE_HIGH and start + 8 + length == len(tail):
                try:
                    meta = json.loads(tail[start + 8 :])
                except (ValueError, RecursionError):
                    return None
                value = meta.get("frames") if isinstance(meta, dict) else None
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    frames = value
                break
        if frames is None:
            return None
        total += frames
    return total
