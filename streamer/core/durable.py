"""Writes that survive a crash at any moment: a whole file replaced atomically, a text file's torn last line cut.

Checkpoints, the results journal's compaction and its writer id all replace a file the same way
(temporary file in the same directory, fsync, rename, fsync of the directory), so a crash leaves the old content
or the new, never a torn file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` with what ``write(fh)`` writes, so that a crash leaves the old content or the new."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def cut_torn_tail(path: Path) -> int:
    """Truncate a text file after its last newline (a line cut short by a crash); returns the bytes removed."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(max(0, size - 1))
        if fh.read(1) == b"\n":
            return 0
        keep, block = 0, 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return size - keep


def why_no_directory(directory: Path) -> str:
    """Why files cannot be made in ``directory``, in the words a user can act on: the first of its ancestors that
    is a file ("x is a file, not a directory"), or that it does not exist (where ``mkdir`` would say only "File
    exists" or "Not a directory")."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            if candidate.is_dir():
                break
            return f"{candidate} is a file, not a directory"
    return f"directory {directory} does not exist"
