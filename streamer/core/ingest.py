"""From archive items or raw frames to state: decode, de-duplicate, apply, count, checkpoint.

:class:`Ingestor` is the synchronous core shared by replay and the live daemon. It keeps two positions:

* ``cursor``: the highest relay ``seq`` applied (what a live source resumes from);
* ``position``: how many items of the current archive have been consumed (what a replay resumes from: Jetstream
  archives have no relay seq, and their ``time_us`` is not strictly monotone).

Every item is accounted for in :class:`IngestStats`: frames by type, undecodable items by reason, skipped
operations by reason, duplicates, events by kind.
"""

from __future__ import annotations

import csv
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.checkpoint import check_dependencies, file_identity, load_checkpoint, save_checkpoint
from streamer.core.frames import MAX_FRAME_BYTES, Decoded, decode_frame
from streamer.core.jetstream_json import from_jetstream
from streamer.core.seqs import ANY, RESET_WINDOW, SeenSeqs, Sequenced
from streamer.core.state import AgentState, StateConfig
from streamer.sources.archive import ArchiveItem, ReadReport, read_archive

log = logging.getLogger("skyattr.ingest")
MAX_PACE_SLEEP_S = 5.0  # longest pause --speed makes for one gap in event time (a day-long gap is not a day)


@dataclass
class IngestStats:
    items: int = 0
    frames: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    events: Counter[str] = field(default_factory=Counter)
    outdated_cursor: int = 0
    seq_resets: int = 0  # frames far below the cursor: the relay's sequence started again (see apply_decoded)
    out_of_order: int = 0  # archive frames below the cursor not applied before: late, kept

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "frames": dict(self.frames),
            "errors": dict(self.errors),
            "skipped": dict(self.skipped),
            "duplicates": self.duplicates,
            "events": dict(self.events),
            "outdated_cursor": self.outdated_cursor,
            "seq_resets": self.seq_resets,
            "out_of_order": self.out_of_order,
        }


class Ingestor:
    """Decode items and fold their events into an :class:`AgentState`."""

    def __init__(
        self,
        state: AgentState,
        cursor: int = -1,
        position: int = 0,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        seen: SeenSeqs | None = None,
    ):
        self.state = state
        self.cursor = cursor
        self.position = position
        self.stats = IngestStats()
        self.max_frame_bytes = max_frame_bytes
        # the relay seqs applied lately (fingerprints live, "content unknown" from an archive): tells a re-sent frame
        # from a late one; travels in the checkpoint with the cursor
        self.seen = seen if seen is not None else SeenSeqs()
        # called with the time of each event the state accepts, just before it is folded in: the event-time
        # scheduler runs here, so a run stamped T sees exactly the events before T
        self.before_event: Callable[[int], None] | None = None
        # the receive clock (µs) in live mode: an event far ahead of it is refused even before the stream's own
        # watermark is established; None in replay, where the archive's own progress is the only clock
        self.clock: Callable[[], int] | None = None

    def decode(self, item: ArchiveItem | bytes) -> Decoded:
        """Decode one item. The decoders promise not to raise on bad input; should one item find a case they miss,
        it is counted (``decoder_exception``) and skipped here, at the item boundary, never ending the stream."""
        try:
            if isinstance(item, bytes | bytearray):
                return decode_frame(bytes(item), max_bytes=self.max_frame_bytes)
            if item.frame is not None:
                return decode_frame(item.frame, max_bytes=self.max_frame_bytes)
            return from_jetstream(item.json)
        except Exception as exc:
            if not self.stats.errors["decoder_exception"]:
                log.error("decoder raised %s on item %d; counted and skipped", type(exc).__name__, self.position + 1)
            return Decoded(error="decoder_exception", detail=type(exc).__name__)

    def feed(self, item: ArchiveItem | bytes) -> Decoded:
        """Decode one item and apply its events; never raises on bad input."""
        is_frame = isinstance(item, bytes | bytearray) or item.frame is not None
        return self.apply_decoded(self.decode(item), is_frame=is_frame)

    def apply_decoded(self, decoded: Decoded, *, is_frame: bool = True) -> Decoded:
        """Apply an already decoded item (the live source decodes as it reads). Relay frames at or below the
        cursor are duplicates (a reconnect that re-sent them) and are counted, not applied."""
        self.position += 1
        self.stats.items += 1
        self.stats.skipped.update(decoded.skipped)
        if decoded.error:
            self.stats.errors[decoded.error] += 1
            return decoded
        self.stats.frames[decoded.type] += 1
        if decoded.info is not None and decoded.info.get("name") == "OutdatedCursor":
            self.stats.outdated_cursor += 1
        if is_frame and decoded.seq >= 0:
            if isinstance(decoded, Sequenced):  # from a live source
                # The live source has already told re-sends, late frames and relay restarts apart (it remembers the
                # seqs it has seen; duplicates never reach here): its cursor after this frame is ours, so a
                # checkpoint resumes where the source stands, on a restarted relay's new sequence too. The ring of
                # seen seqs is kept here as well, in step with the state, for the source of the next process.
                if decoded.source_cursor < self.cursor:  # the source followed a relay that restarted its sequence
                    self.seen.clear()
                self.cursor = decoded.source_cursor
                self.seen.add(decoded.seq, decoded.fingerprint)
            elif decoded.seq <= self.cursor:
                if self.cursor - decoded.seq < RESET_WINDOW:
                    if self.seen.get(decoded.seq, self.cursor) is not None:
                        self.stats.duplicates += 1  # a re-send, as after a reconnect
                        return decoded
                    # a frame of the window not seen before: late (the recording kept an out-of-order frame)
                    self.stats.out_of_order += 1
                    self.seen.add(decoded.seq, ANY)
                else:
                    # Far below: the archive was recorded across a relay that started its sequence again. Its new
                    # frames are new events: follow them, as the live source did when recording.
                    log.warning(
                        "seq %d after cursor %d: the relay restarted its sequence; following it",
                        decoded.seq,
                        self.cursor,
                    )
                    self.stats.seq_resets += 1
                    self.seen.clear()
                    self.cursor = decoded.seq
                    self.seen.add(decoded.seq, ANY)
            else:
                self.cursor = decoded.seq
                self.seen.add(decoded.seq, ANY)
        for event in decoded.events:
            # before_event runs only for events the state accepts, just before they are folded in: a refused
            # time (one item dated 2100) never drives the schedule
            now_us = self.clock() if self.clock is not None else None
            reason = self.state.apply(event, now_us=now_us, before_fold=self.before_event)
            if reason is None:
                self.stats.events[event.kind] += 1
            else:
                self.stats.skipped[reason] += 1
        return decoded


def load_followers(path: str | Path) -> dict[str, float]:
    """Follower counts per DID from a ``did,followers`` CSV (header required) or a Parquet file with those two
    columns (needs pyarrow: the ``parquet`` extra). A bad row (not a DID, a bad count, a DID given twice, a field
    too large to be real) raises ``ValueError`` naming the file and row: the table sets every account's tier, and a
    silently dropped or doubled row would move accounts between tiers."""
    from streamer.core.events import is_valid_did

    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        dids, counts = _followers_parquet(path)
    else:
        dids, counts = _followers_csv(path)
    out: dict[str, float] = {}
    for row, (did, count) in enumerate(zip(dids, counts, strict=True), start=1):
        if not is_valid_did(did):  # the same syntax the decoder holds the stream's DIDs to
            shown = repr(did) if len(repr(did)) <= 80 else repr(did)[:79] + "…"
            raise ValueError(f"followers file {path}, row {row}: {shown} is not a DID")
        if not (count >= 0 and np.isfinite(count)):
            raise ValueError(f"followers file {path}, row {row}: count must be a finite number >= 0, got {count!r}")
        if did in out:
            first = dids.index(did) + 1
            raise ValueError(f"followers file {path}: rows {first} and {row} both give {did} (one row per DID)")
        out[did] = float(count)
    return out


def _followers_csv(path: Path) -> tuple[list[str], list[float]]:
    dids: list[str] = []
    counts: list[float] = []
    reader: Any = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"did", "followers"} <= set(reader.fieldnames):
                raise ValueError(f"followers file {path} needs a header with columns did,followers")
            for row, rec in enumerate(reader, start=1):
                try:
                    counts.append(float(rec["followers"]))
                except (TypeError, ValueError):
                    raise ValueError(f"followers file {path}, row {row}: bad count {rec['followers']!r:.40}") from None
                dids.append(rec["did"])
    except OSError as exc:
        raise ValueError(f"cannot read followers file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:  # decoded a block at a time, so no row to name
        raise ValueError(f"followers file {path} is not UTF-8 text") from None
    except csv.Error as exc:  # a field over csv's limit (128 KiB), a NUL byte, ...
        where = "header" if reader is None or reader.line_num <= 1 else f"row {len(dids) + 1}"
        raise ValueError(f"followers file {path}, {where}: {exc}") from None
    return dids, counts


def _followers_parquet(path: Path) -> tuple[list[str], list[float]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"reading the Parquet followers file {path} needs pyarrow: pip install 'skyattr[parquet]'"
        ) from None
    try:
        table = pq.read_table(path, columns=["did", "followers"])
    except (OSError, KeyError, ValueError) as exc:  # pyarrow's errors derive from these
        raise ValueError(f"cannot read followers file {path} (columns did, followers): {exc}") from None
    try:
        counts = np.asarray(table.column("followers").to_numpy(zero_copy_only=False), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"followers file {path}: column followers must be numeric ({exc})") from None
    return table.column("did").to_pylist(), counts.tolist()


@dataclass
class ReplayResult:
    ingestor: Ingestor
    report: ReadReport
    seconds: float
    resumed_from: int
    interrupted: bool = False

    @property
    def state(self) -> AgentState:
        return self.ingestor.state


def _paced(
    items: Iterator[ArchiveItem], ingestor: Ingestor, speed: float | None, stop: threading.Event | None = None
) -> Iterator[ArchiveItem]:
    """Yield items, sleeping so event time advances at ``speed`` x wall time (None: as fast as possible).

    A pause is at most :data:`MAX_PACE_SLEEP_S` (a gap in the stream is compressed, and the pace re-anchored after
    it), and ``stop`` interrupts it at once, so SIGTERM is honoured within a moment whatever the timestamps say."""
    if not speed:
        yield from items
        return
    start_wall, start_event = time.monotonic(), None
    for item in items:
        yield item
        t = ingestor.state.last_time_us
        if start_event is None and t:
            start_event = t
        if start_event is None:
            continue
        delay = (t - start_event) / 1e6 / speed - (time.monotonic() - start_wall)
        if delay > MAX_PACE_SLEEP_S:
            start_wall, start_event, delay = time.monotonic() + MAX_PACE_SLEEP_S, t, MAX_PACE_SLEEP_S
        if delay > 0:
            if stop is not None:
                if stop.wait(delay):
                    return
            else:
                time.sleep(delay)


def replay(
    path: str | Path,
    *,
    config: StateConfig | None = None,
    followers: dict[str, float] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every_s: float = 60.0,
    checkpoint_every_items: int | None = None,
    speed: float | None = None,
    on_item: Callable[[Ingestor], None] | None = None,
    stop_event: threading.Event | None = None,
    on_start: Callable[[Ingestor, dict[str, Any]], None] | None = None,
    checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
    on_end: Callable[[Ingestor], None] | None = None,
    depends: dict[str, Any] | None = None,
    after_checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> ReplayResult:
    """Replay an archive into a fresh state, or into the checkpointed one (resuming after its position).

    Setting ``stop_event`` (from another thread: the daemon's signal handler) stops the replay after the
    current item and writes a final checkpoint. The hooks let a pipeline ride along: ``on_start(ingestor, extra)``
    with what its last checkpoint saved, ``checkpoint_extra()`` to add to each checkpoint, ``on_end`` once when
    the archive is exhausted (not when stopped, and not again after resuming a finished replay),
    ``after_checkpoint(extra)`` once a checkpoint is durable.

    With a checkpoint directory, the checkpoint records ``depends`` (the options results depend on) and the
    archive's identity (size and hash of its head), and a resume with any of them changed is refused. A fresh
    replay writes a checkpoint before its first item, so that whatever is killed when, a restart knows where the
    results file stood."""
    resumed = 0
    extra: dict[str, Any] = {}
    deps = dict(depends or {})
    if checkpoint_dir:
        deps["archive"] = file_identity(path)
    loaded = load_checkpoint(checkpoint_dir, followers) if checkpoint_dir else None
    if loaded is not None:
        state, cursor, extra = loaded
        if extra.get("mode", "replay") != "replay":
            raise ValueError(
                f"checkpoint in {checkpoint_dir} belongs to a live `skyattr run`; give the replay its own "
                "checkpoint directory"
            )
        if extra.get("archive", str(path)) != str(path):
            raise ValueError(
                f"checkpoint in {checkpoint_dir} is for archive {extra['archive']}, not {path}; give each archive "
                "its own checkpoint directory"
            )
        if config is not None and config.as_dict() != state.config.as_dict():
            raise ValueError(f"checkpoint in {checkpoint_dir} was made with another window/weight configuration")
        check_dependencies(checkpoint_dir, extra.get("deps") or {}, deps)
        ingestor = Ingestor(state, cursor=cursor, position=0, seen=extra.get("seen"))
        resumed = int(extra.get("position", 0))
        ingestor.stats.items = 0
    else:
        ingestor = Ingestor(AgentState(config, followers))
    if on_start is not None:
        on_start(ingestor, extra)
    finished = bool(extra.get("finished", False))
    report = ReadReport()
    interrupted = False

    def checkpoint() -> None:
        if checkpoint_dir:
            more = checkpoint_extra() if checkpoint_extra is not None else {}
            info = {
                **more,
                "position": ingestor.position,
                "finished": finished,
                "mode": "replay",
                "archive": str(path),
                "deps": deps,
            }
            save_checkpoint(checkpoint_dir, ingestor.state, ingestor.cursor, info, ingestor.seen)
            if after_checkpoint is not None:
                after_checkpoint(info)

    if checkpoint_dir and loaded is None:
        checkpoint()

    start = time.perf_counter()
    last_ckpt = time.monotonic()
    items = read_archive(path, report)
    for _ in range(resumed):  # skip what the checkpoint already holds
        if next(items, None) is None:
            break
        ingestor.position += 1
    for item in _paced(items, ingestor, speed, stop_event):
        ingestor.feed(item)
        if on_item is not None:
            on_item(ingestor)
        if checkpoint_dir and (
            (checkpoint_every_items and ingestor.position % checkpoint_every_items == 0)
            or time.monotonic() - last_ckpt >= checkpoint_every_s
        ):
            checkpoint()
            last_ckpt = time.monotonic()
        if stop_event is not None and stop_event.is_set():
            break
    interrupted = stop_event is not None and stop_event.is_set()
    if not interrupted and not finished:
        if on_end is not None:
            on_end(ingestor)
        finished = True
    checkpoint()
    ingestor.state.flush()
    return ReplayResult(ingestor, report, time.perf_counter() - start, resumed, interrupted=interrupted)
