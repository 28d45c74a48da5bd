"""Where results go besides Kafka: a JSON Lines file (or stdout) and the terminal.

The JSON Lines sink: one line per result, in the format of ``tests/golden/default_replay.jsonl``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from streamer.core.durable import cut_torn_tail, why_no_directory
from streamer.core.journal import ResultWriteError, dumps
from streamer.core.results import Result

log = logging.getLogger("skyattr.sinks")


class JsonlSink:
    """Appends each message as one JSON line (``{"topic": kind, ...message}``), flushed and fsynced per line so a
    tail -f or a crash sees every completed run, and a crash never leaves a torn line behind for good: opening the
    file cuts a torn last line off (the results journal still holds that result and writes it again).

    A failed write raises :class:`~streamer.core.journal.ResultWriteError` naming the file: the daemon stops (exit 2)
    before it checkpoints past a result that did not reach the file."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.lines = 0
        self._regular = False
        if self.path == "-":
            self._fh: TextIO = sys.stdout
            return
        target = Path(self.path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_file():
                torn = cut_torn_tail(target)
                if torn:
                    log.warning("results file %s: cut a torn last line (%d bytes) left by a crash", target, torn)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the daemon
            self._regular = target.is_file()  # not a pipe or a device: it can be read back and deduplicated
        except OSError as exc:
            why = exc.strerror or str(exc)
            if isinstance(exc, FileExistsError | NotADirectoryError):  # a parent on the way is a file
                why = why_no_directory(target.parent)
            raise ResultWriteError(exc.errno, f"cannot open the results file {self.path}: {why}") from exc

    @property
    def offset(self) -> int:
        """Bytes in the file so far (what a checkpoint records), or -1 for stdout, a pipe or a device."""
        if not self._regular:
            return -1
        return self._fh.tell()

    name = "jsonl"

    def publish(self, result: Result) -> None:
        self.write(result.topic, result.to_message())

    async def start(self) -> None:
        return None

    def write(self, kind: str, message: dict[str, Any]) -> None:
        """One line ``{"topic": kind, **message}`` (also for journaled results written again at a restart)."""
        try:
            self._fh.write(dumps(kind, message) + "\n")
            self._fh.flush()
            if self._fh is not sys.stdout:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise ResultWriteError(
                exc.errno, f"cannot write the results file {self.path}: {exc.strerror or exc}"
            ) from exc
        self.lines += 1

    async def close(self, timeout: float = 0.0) -> int:
        """Close the file (every line is already fsynced: nothing is ever left unwritten)."""
        self.close_now()
        return 0

    def close_now(self) -> None:
        if self._fh is not sys.stdout:
            with contextlib.suppress(OSError):  # a full disk already stopped the daemon with its own message
                self._fh.close()
