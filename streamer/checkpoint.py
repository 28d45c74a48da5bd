"""Atomic checkpoints of the agent state and the source cursor.

A checkpoint is one ``.npz`` file (the state's arrays, plus its metadata and the cursor as JSON) written to a
temporary file in the same directory, fsynced, renamed over the previous one and the directory fsynced: a crash at
any moment leaves either the old checkpoint or the new one, never a torn file. The cursor is the seq of the last
frame whose events are in the state, so a restart resumes after it with no gap and no double counting.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from streamer.state import AgentState

FILENAME = "state.npz"
VERSION = 1


def save_checkpoint(directory: str | Path, state: AgentState, cursor: int, extra: dict[str, Any] | None = None) -> Path:
    """Write state + cursor atomically to ``directory/state.npz``; returns the path."""
    arrays, meta = state.to_arrays()
    return write_checkpoint(directory, arrays, meta, cursor, extra)


def capture(state: AgentState) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A private copy of the state's arrays: taken on the ingest thread (a memory copy), written elsewhere while
    ingest goes on."""
    arrays, meta = state.to_arrays()
    return {k: np.array(v, copy=True) for k, v in arrays.items()}, meta


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
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        target = directory / FILENAME
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def load_checkpoint(
    directory: str | Path, followers: dict[str, float] | None = None
) -> tuple[AgentState, int, dict[str, Any]] | None:
    """(state, cursor, extra) from ``directory/state.npz``, or None when there is no checkpoint yet.
    A file that exists but cannot be read raises ``ValueError`` naming it (never a silent fresh start)."""
    path = Path(directory) / FILENAME
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(bytes(arrays.pop("__meta__")).decode())
        if meta.get("version") != VERSION:
            raise ValueError(f"unsupported checkpoint version {meta.get('version')!r}")
        state = AgentState.from_arrays(arrays, meta["state"], followers)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    return state, int(meta["cursor"]), meta.get("extra", {})
