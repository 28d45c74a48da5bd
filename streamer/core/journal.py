"""The results journal: every computed result, durable before any sink sees it, so none is lost or doubled.

A result's identity is ``(topic, id)`` with ``id = "<indicator>@<as_of_us>"``: the run's due time in the stream's
clock (event time in a replay, wall time live) and its indicator, never a process-local counter. With a checkpoint
directory, each result is appended to ``<checkpoint-dir>/results.jsonl`` (one JSON line, flushed and fsynced)
*before* it is handed to the terminal, the JSONL file or Kafka. That journal is the outbox:

* a result computed again after a restart (a replay resumed from an older checkpoint recomputes the runs since)
  has an identity already in the journal and is not delivered a second time;
* the JSONL file gets, at start, every journaled result it lacks (the process died between the two writes), and
  a torn last line (the process died mid-write) is cut off first;
* Kafka gets, at start, every journaled result with its sequence number; the publisher drops those at or below
  the mark its last committed transaction wrote (:mod:`streamer.sinks.kafka_sender`). Its transactional id is the
  journal's writer id (``results.id``), made with the journal: a new journal is a new writer, whose numbers start
  again at 1 and must not be judged against an older journal's mark.

Files are replaced with :func:`streamer.core.durable.atomic_write`, like checkpoints.

The journal is compacted at checkpoints: entries delivered everywhere are dropped; the newest tiers result is kept
(it carries the run counter and the alert state a live restart continues from), and so is the newest entry (its
sequence number is where the numbering goes on: a number is never given twice).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.core.durable import atomic_write, cut_torn_tail
from streamer.core.results import Result, RunResult, result_from_message

log = logging.getLogger("skyattr.outbox")

JOURNAL_FILE = "results.jsonl"
WRITER_FILE = "results.id"
LEGACY_ACKED_FILE = "kafka-acked.json"  # the acknowledgement mark of skyattr before the transactional publisher
COMPACT_ABOVE = 256  # entries kept before a checkpoint bothers to rewrite the journal


class ResultWriteError(OSError):
    """A result could not be made durable (disk full, read-only, gone): the daemon must stop before it marks
    anything done. The message names the file (and is all that is shown: no ``[Errno n]`` before it)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def result_id(message: dict[str, Any]) -> str:
    """The identity of a result message within its topic: ``<indicator>@<as_of_us>``."""
    return f"{message['indicator']}@{int(message['as_of_us'])}"


def dumps(topic: str, message: dict[str, Any]) -> str:
    """The one serialisation of a result line (the JSONL file's format: ``{"topic": ..., **message}``)."""
    return json.dumps({"topic": topic, **message}, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Entry:
    """One journaled result and its journal sequence number (1, 2, ...; never reused)."""

    seq: int
    result: Result

    @property
    def topic(self) -> str:
        return self.result.topic

    @property
    def id(self) -> str:
        return self.result.id


def identities(path: Path, offset: int = 0) -> set[tuple[str, str]]:
    """``(topic, id)`` of every complete result line of a JSONL results file from byte ``offset`` on."""
    out: set[tuple[str, str]] = set()
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return out
    with fh:
        fh.seek(offset)
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                obj = json.loads(line)
                out.add((str(obj["topic"]), result_id(obj)))
            except (ValueError, KeyError, TypeError):
                continue  # not a result line (another tool appended to the file): not ours to judge
    return out


class ResultJournal:
    """The append-only, fsynced journal of results in a checkpoint directory (see the module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / JOURNAL_FILE
        self.entries: list[Entry] = []
        self._ids: set[tuple[str, str]] = set()
        self.last_seq = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fresh = not self.path.exists()
        self.writer_id = self._writer_id(self.fresh)
        torn = cut_torn_tail(self.path)
        if torn:
            log.warning("results journal %s: cut a torn last line (%d bytes) left by a crash", self.path, torn)
        for entry in self._read():
            self._index(entry)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the daemon

    def _writer_id(self, fresh: bool) -> str:
        """This journal's writer id: read from ``results.id``, or made (and made durable) with a new journal."""
        path = self.directory / WRITER_FILE
        if not fresh and path.exists():
            text = path.read_text().strip()
            if text:
                return text
        ident = f"skyattr-results-{uuid.uuid4().hex}"
        atomic_write(path, lambda fh: fh.write(ident.encode()))
        return ident

    def legacy_mark(self) -> int | None:
        """The acknowledgement mark an earlier skyattr left (``kafka-acked.json``), for a journal that has one and no
        transactional mark yet; None when there is none."""
        path = self.directory / LEGACY_ACKED_FILE
        if self.fresh or not path.exists():
            return None
        try:
            return int(json.loads(path.read_text())["through"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}; delete it to send every journaled result again") from None

    def _read(self) -> Iterator[Entry]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                try:
                    obj = json.loads(line)
                    yield Entry(int(obj["seq"]), result_from_message(str(obj["topic"]), obj["message"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(
                        f"results journal {self.path}, line {lineno}: not a journal entry ({exc})"
                    ) from None

    def _index(self, entry: Entry) -> None:
        self.entries.append(entry)
        self._ids.add((entry.topic, entry.id))
        self.last_seq = max(self.last_seq, entry.seq)

    def has(self, topic: str, ident: str) -> bool:
        return (topic, ident) in self._ids

    @staticmethod
    def _line(entry: Entry) -> str:
        return (
            json.dumps(
                {"seq": entry.seq, "topic": entry.topic, "id": entry.id, "message": entry.result.to_message()},
                sort_keys=True,
                separators=(",", ":"),
                allow_nan=False,
            )
            + "\n"
        )

    def append(self, result: Result) -> Entry:
        """Make one result durable; raises :class:`ResultWriteError` naming the journal when the write fails."""
        entry = Entry(self.last_seq + 1, result)
        try:
            self._fh.write(self._line(entry))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise ResultWriteError(
                exc.errno, f"cannot write the results journal {self.path}: {exc.strerror or exc}"
            ) from exc
        self._index(entry)
        return entry

    def after(self, seq: int) -> list[Entry]:
        """Entries with a sequence number above ``seq``, oldest first."""
        return [e for e in self.entries if e.seq > seq]

    def _newest_tiers(self) -> Entry | None:
        return next((e for e in reversed(self.entries) if e.topic == "tiers"), None)

    def last_tiers(self) -> RunResult | None:
        """The newest run's result (a live restart continues its run counter and alert state)."""
        newest = self._newest_tiers()
        return newest.result if newest is not None and isinstance(newest.result, RunResult) else None

    def compact(self, delivered_through: int) -> None:
        """Drop entries every sink has (seq <= ``delivered_through``), keeping the newest tiers result and the newest
        entry."""
        if len(self.entries) <= COMPACT_ABOVE:
            return
        newest = self._newest_tiers()
        keep = [e for e in self.entries if e.seq > delivered_through or e is newest or e.seq == self.last_seq]
        if len(keep) == len(self.entries):
            return
        data = "".join(self._line(e) for e in keep).encode()
        self._fh.close()
        try:
            atomic_write(self.path, lambda fh: fh.write(data))
        finally:
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self.entries = keep
        self._ids = {(e.topic, e.id) for e in keep}

    def close(self) -> None:
        self._fh.close()
