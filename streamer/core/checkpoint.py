"""Atomic checkpoints of the agent state and the source cursor.

A checkpoint is one ``.npz`` file (the state's arrays, plus its metadata and the cursor as JSON) written to a
temporary file in the same directory, fsynced, renamed over the previous one and the directory fsynced: a crash at
any moment leaves either the old checkpoint or the new one, never a torn file. The cursor is the seq of the last
frame whose events are in the state, so a restart resumes after it with no gap and no double counting.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from streamer.core.durable import atomic_write
from streamer.core.followers import Followers
from streamer.core.revs import ARRAY as REV_GUARD
from streamer.core.revs import RevGuard
from streamer.core.seqs import SeenSeqs
from streamer.core.state import AgentState, StateConfig

FILENAME = "state.npz"
VERSION = 2


def save_checkpoint(
    directory: str | Path,
    state: AgentState,
    cursor: int,
    extra: dict[str, Any] | None = None,
    seen: SeenSeqs | None = None,
    revs: RevGuard | None = None,
) -> Path:
    """Write state + cursor (+ the ring of seqs seen lately, + the (DID, rev) guard) atomically to
    ``directory/state.npz``."""
    arrays, meta = _arrays(state, seen, revs)
    return write_checkpoint(directory, arrays, meta, cursor, extra)


def capture(
    state: AgentState, seen: SeenSeqs | None = None, revs: RevGuard | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A private copy of the state's arrays: taken on the ingest thread (a memory copy), written elsewhere while
    ingest goes on."""
    arrays, meta = _arrays(state, seen, revs)
    return {k: np.array(v, copy=True) for k, v in arrays.items()}, meta


def _arrays(
    state: AgentState, seen: SeenSeqs | None, revs: RevGuard | None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """What a checkpoint holds besides its metadata: the state's arrays and, when given, the seen-seq ring and
    the (DID, rev) guard, both as the dispatcher held them with this state."""
    arrays, meta = state.to_arrays()
    if seen is not None:
        arrays.update(seen.to_arrays())
    if revs is not None:
        arrays.update(revs.to_arrays())
    return arrays, meta


def write_checkpoint(
    directory: str | Path,
    arrays: dict[str, np.ndarray],
    meta: dict[str, Any],
    cursor: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write captured state arrays + cursor atomically to ``directory/state.npz``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = dict(arrays)
    meta = {"version": VERSION, "cursor": int(cursor), "state": meta, "extra": extra or {}}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    target = directory / FILENAME
    atomic_write(target, lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]  # numpy's stubs: **kwds
    return target


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Schedule(_Strict):
    run: int
    next_due_us: int
    alert_active: bool


class _Results(_Strict):
    journal_seq: int
    out: str | None
    out_offset: int


class _Extra(_Strict):
    """What a checkpoint records besides the state: the pipeline's position and what its results depend on."""

    mode: Literal["replay", "live"]
    schedule: _Schedule = _Schedule(run=0, next_due_us=-1, alert_active=False)
    results: _Results = _Results(journal_seq=0, out=None, out_offset=-1)
    deps: dict[str, Any] = {}
    position: int = 0
    finished: bool = False
    archive: str | None = None
    relay: str | None = None
    # fingerprints of the items applied at exactly ``cursor``: a source whose cursor is inclusive (Jetstream's
    # time_us) re-sends them on resume, and this tells them from new events of the same microsecond
    at_cursor: list[int] = []


class _Meta(_Strict):
    version: int
    cursor: int
    state: dict[str, Any]
    extra: _Extra


HEAD_BYTES = 1 << 20


def file_identity(path: str | Path) -> dict[str, Any]:
    """Size and SHA-256 of the first MiB of a file, or of every file of a directory (rotated archives): enough to
    tell another file at the same path from the one a checkpoint was made from, cheap on a 10 GiB archive."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    size = 0
    for f in files:
        with open(f, "rb") as fh:
            digest.update(fh.read(HEAD_BYTES))
        size += f.stat().st_size
    return {"size": size, "head_sha256": digest.hexdigest(), "files": len(files)}


def check_dependencies(directory: str | Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint made with other options or inputs, naming the first difference and how to
    proceed. An archive that only grew (still being recorded) is the same archive."""
    for key in sorted(set(recorded) | set(current)):
        was, now = recorded.get(key), current.get(key)
        if key == "archive" and isinstance(was, dict) and isinstance(now, dict):
            same_head = was.get("head_sha256") == now.get("head_sha256") and was.get("files") == now.get("files")
            if same_head and int(now.get("size", 0)) >= int(was.get("size", 0)):
                continue
            raise ValueError(
                f"checkpoint in {directory} was made from another archive at this path (size {was.get('size')} "
                f"bytes, head {str(was.get('head_sha256'))[:12]}; now {now.get('size')} bytes, head "
                f"{str(now.get('head_sha256'))[:12]}): give this archive its own --checkpoint-dir"
            )
        if was != now:
            raise ValueError(
                f"checkpoint in {directory} was made with {key} = {json.dumps(was, sort_keys=True)}, not "
                f"{json.dumps(now, sort_keys=True)}: resume with the options it was made with, or start afresh with "
                "another --checkpoint-dir"
            )


def load_checkpoint(
    directory: str | Path, followers: Followers | None = None
) -> tuple[AgentState, int, dict[str, Any]] | None:
    """(state, cursor, extra) from ``directory/state.npz``, or None when there is no checkpoint yet; ``extra["seen"]``
    holds the ring of relay seqs seen lately and ``extra["revs"]`` the (DID, rev) guard when the checkpoint recorded
    them (None otherwise).
    A file that exists but cannot be read raises ``ValueError`` naming it (never a silent fresh start)."""
    path = Path(directory) / FILENAME
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        if "__meta__" not in arrays:
            raise ValueError("no metadata")
        meta = json.loads(bytes(arrays.pop("__meta__")).decode())
        if not isinstance(meta, dict) or meta.get("version") != VERSION:
            found = meta.get("version") if isinstance(meta, dict) else None
            raise ValueError(f"unsupported checkpoint version {found!r} (this skyattr writes version {VERSION})")
        checked = _Meta.model_validate(meta)
        seen = None
        if "seen_seqs" in arrays or "seen_prints" in arrays:
            seen = SeenSeqs.from_arrays(arrays.pop("seen_seqs"), arrays.pop("seen_prints"))
        revs = RevGuard.from_arrays(arrays.pop(REV_GUARD)) if REV_GUARD in arrays else None
        state = AgentState.from_arrays(arrays, meta["state"], followers)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(
            f"cannot read checkpoint {path}: metadata {where}: {err['msg']}; move it away to start afresh"
        ) from None
    except Exception as exc:  # a torn, empty, foreign or tampered file: never a traceback, never a silent restart
        detail = str(exc) or type(exc).__name__
        raise ValueError(f"cannot read checkpoint {path}: {detail[:300]}; move it away to start afresh") from None
    extra = checked.extra.model_dump()
    extra["seen"] = seen  # the ring of relay seqs seen lately (streamer.core.seqs.SeenSeqs), None when not recorded
    extra["revs"] = revs  # the (DID, rev) guard (streamer.core.revs.RevGuard), None when not recorded
    return state, checked.cursor, extra


_RUNS = {"live": "a live `skyattr run`", "replay": "a replay"}


class Checkpoints:
    """The checkpoints of one run in ``directory``, for live and replay alike: ``mode`` (``live`` or ``replay``)
    and ``deps`` (the options and inputs its results depend on) are written into each and checked on resume.

    One loader (:meth:`resume`: the checkpoint's state, cursor and extra, or None; ``ValueError`` naming the reason
    for one that belongs to the other mode, another window or other dependencies) and one writer (:meth:`save`:
    the state is copied on the caller's thread, between two items, and written in a worker thread, atomically).
    A write that fails raises its ``OSError`` (the run's wiring, :mod:`streamer.app.wiring`, counts and logs it
    and tries again at the next checkpoint)."""

    def __init__(self, directory: str | Path, mode: Literal["live", "replay"], deps: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.mode = mode
        self.deps = deps

    def resume(
        self,
        config: StateConfig | None = None,
        followers: Followers | None = None,
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[AgentState, int, dict[str, Any]] | None:
        """``check(extra)``: the run's own check of what the checkpoint says (a replay's archive path), before the
        window and the dependencies are compared."""
        loaded = load_checkpoint(self.directory, followers)
        if loaded is None:
            return None
        state, _, extra = loaded
        held = extra.get("mode", "replay")
        if held != self.mode:
            raise ValueError(
                f"checkpoint in {self.directory} was written by {_RUNS.get(held, repr(held))}; give "
                f"{_RUNS[self.mode]} its own checkpoint directory"
            )
        if check is not None:
            check(extra)
        if config is not None and config.as_dict() != state.config.as_dict():
            raise ValueError(f"checkpoint in {self.directory} was made with another window/weight configuration")
        check_dependencies(self.directory, extra.get("deps") or {}, self.deps)
        return loaded

    async def save(
        self,
        state: AgentState,
        cursor: int,
        seen: SeenSeqs | None,
        info: dict[str, Any],
        revs: RevGuard | None = None,
    ) -> Path:
        """Write ``state`` at ``cursor`` (with the ring of seqs ``seen`` and the (DID, rev) guard ``revs``) and
        ``info``, which the run adds to the mode and the dependencies; returns the file once it is durable."""
        arrays, meta = capture(state, seen, revs)
        extra = {**info, "mode": self.mode, "deps": self.deps}
        return await asyncio.to_thread(write_checkpoint, self.directory, arrays, meta, cursor, extra)
