"""Follower counts per DID, for visibility: the tiers and the panel are set by them when a table is given, or
when a :class:`FollowerSource` (the AppView) answers for the accounts of each snapshot."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


class VisibilityUnavailable(RuntimeError):
    """A follower source could not answer for a snapshot (its server unreachable, a wait longer than allowed): the
    run is skipped with this line, never run on made-up visibility."""


@runtime_checkable
class FollowerSource(Protocol):
    """Visibility decided when a snapshot is taken, from what the snapshot shows: ``proxy`` (distinct attenders)
    and activity ``x`` pick the accounts worth asking about (:class:`streamer.sources.appview.AppViewVisibility`)."""

    def visibility(self, dids: Sequence[str], proxy: np.ndarray, x: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str:
        """Where the last snapshot's visibility came from, in words (for reports)."""
        ...


Followers = Mapping[str, float] | FollowerSource  # a table by DID, or a source asked at each snapshot


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
