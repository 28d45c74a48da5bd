"""A worker's state of one partition, in memory, and its changelog in coarse units.

A worker keeps each partition's :class:`~streamer.distributed.partition_state.PartitionState` on a
:class:`TrackedStore`: a dict that remembers which keys changed since it was last asked. Once per transaction (a
batch of records, or a tick) the changed keys go to the partition's changelog as **one** record (``delta``: each
changed key with its value, or null where it went), in the same Kafka transaction as the consumer offsets and any
shard, so the changelog, the offsets and the shards move together or not at all. A record per key, as a key-value
table's changelog writes them, cost more than the folding itself.

A log of deltas grows without end, and compaction cannot shorten it (its keys are not the state's). So, once the
deltas written since the last **snapshot** outweigh it :data:`SNAPSHOT_RATIO` times, the transaction carries the
whole state instead (a ``reset`` record, then ``delta`` records for the rest of its keys), and once that
transaction is committed the records before it are deleted (``DeleteRecords``): recovering a partition reads at
most a snapshot and the deltas that are not yet worth another, a bounded multiple of the state.

Values are JSON (the state's values are small lists, and None never is one), zstd-compressed, at most
:data:`KEYS_PER_RECORD` keys to a record so that no record nears the broker's message limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from typing import Any

import zstandard

KIND_HEADER = "skyattr-changelog"
DELTA, RESET = b"delta", b"reset"
SNAPSHOT_RATIO = 2.0  # deltas since the last snapshot, in bytes, that make the next transaction carry one
KEYS_PER_RECORD = 20_000
_compress = zstandard.ZstdCompressor(level=1).compress


def _decompress(value: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(value)


class TrackedStore(MutableMapping[str, Any]):
    """A dict of the partition's keys that remembers the keys set or deleted since :meth:`changes` last ran."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.changed: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.changed.add(key)

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.changed.add(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self.data:
            self.changed.add(key)
        return self.data.pop(key, *default)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def changes(self) -> dict[str, Any]:
        """Each key changed since the last call with its value now (None: deleted), and forget them."""
        data = self.data
        out = {key: data.get(key) for key in self.changed}
        self.changed = set()
        return out


def encode(entries: dict[str, Any]) -> list[bytes]:
    """``entries`` as record values, :data:`KEYS_PER_RECORD` keys at most to each."""
    items = list(entries.items())
    return [
        _compress(json.dumps(dict(items[i : i + KEYS_PER_RECORD]), separators=(",", ":")).encode())
        for i in range(0, len(items), KEYS_PER_RECORD)
    ] or [_compress(b"{}")]


def apply(store: TrackedStore, kind: bytes, value: bytes) -> None:
    """One changelog record read back into ``store`` (a ``reset`` empties it first). ``ValueError`` names a record
    that is not one."""
    if kind not in (DELTA, RESET):
        raise ValueError(f"changelog record of kind {kind!r}")
    try:
        entries = json.loads(_decompress(value))
    except (zstandard.ZstdError, ValueError) as exc:
        raise ValueError(f"undecodable changelog record: {exc}") from exc
    if not isinstance(entries, dict):
        raise ValueError("changelog record is not a mapping")
    data = store.data
    if kind == RESET:
        data.clear()
    for key, v in entries.items():
        if v is None:
            data.pop(key, None)
        else:
            data[key] = v
    store.changed = set()


def kind_of(headers: Any) -> bytes:
    for name, value in headers or ():
        if name == KIND_HEADER:
            return bytes(value)
    return b""


class Meter:
    """When a partition's changelog is due a snapshot: the bytes of deltas written since the last one against its
    own size."""

    def __init__(self) -> None:
        self.snapshot_bytes = 0
        self.since = 0
        self.snapshot_offset: int | None = None  # the reset record of the snapshot the log starts at, once known

    def records(self, store: TrackedStore) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The ``(kind, value)`` records of the next transaction, and whether they are a snapshot."""
        changes = store.changes()
        snapshot = self.since > SNAPSHOT_RATIO * max(self.snapshot_bytes, 1 << 16)
        if not snapshot:
            if not changes:
                return [], False
            values = encode(changes)
            self.since += sum(map(len, values))
            return [(DELTA, v) for v in values], False
        values = encode(store.data)
        self.snapshot_bytes, self.since = sum(map(len, values)), 0
        return [(RESET, values[0]), *((DELTA, v) for v in values[1:])], True

    def read(self, kind: bytes, size: int) -> None:
        """A record read back at recovery: the meter goes on from the log as it stands."""
        if kind == RESET:
            self.snapshot_bytes, self.since = size, 0
        else:
            self.since += size
