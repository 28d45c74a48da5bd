"""Decoding spread over processes, handed back in order: what lets an archive's ingest use more than one core.

Decoding a frame (CAR blocks, DAG-CBOR, the syntax checks of every DID, rkey and time) is most of what an ingest or
a replay spends per event, and it needs nothing but the frame. What comes after it does need the stream in order:
the seq judge (re-sends, gaps, a relay's restart), the sequencer's verdicts and due times, the cursor a restart
resumes at. So :class:`DecodePool` decodes chunks of items in ``processes`` child processes and yields the results
in the order the items came, for the one in-order consumer behind it; at most ``ahead`` chunks are in flight, so
memory stays bounded however long the input. ``processes=1`` decodes in the calling process (no pool).

The children are started with ``spawn``: the caller may hold threads (a Kafka client's, the event loop's executor)
that a ``fork`` would copy half-way through their work. A child that dies (killed, out of memory) ends the
iteration with :class:`DecodeFailed` naming it, never with items missing; a child whose parent died (SIGKILL of
the ingest) exits within a second instead of waiting for work for ever.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any

from streamer.core.decode import decode_item
from streamer.core.frames import MAX_FRAME_BYTES, Decoded

CHUNK_ITEMS = 256  # items a child decodes per call: large enough that a call's overhead (~50 µs) is noise


class DecodeFailed(RuntimeError):
    """A decoding process ended without an answer (killed, out of memory)."""


def _exit_with_parent(parent: int) -> None:
    """A child's initializer: a thread that ends the child once its parent is gone (it is then re-parented)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def decode_chunk(items: list[Any], records: bool, max_bytes: int) -> list[Decoded]:
    """The decoder over a chunk of frames (``bytes``) or Jetstream v1 events (``dict``): what a child runs."""
    return [decode_item(item, records=records, max_bytes=max_bytes) for item in items]


class DecodePool:
    """See the module doc. Use as a context manager (or call :meth:`close`) so the children end with the input."""

    def __init__(
        self,
        processes: int = 1,
        *,
        records: bool = False,
        max_bytes: int = MAX_FRAME_BYTES,
        chunk_items: int = CHUNK_ITEMS,
        ahead: int | None = None,
    ) -> None:
        if processes < 1 or chunk_items < 1:
            raise ValueError("processes and chunk_items must be at least 1")
        self.processes, self.records, self.max_bytes, self.chunk_items = processes, records, max_bytes, chunk_items
        self.ahead = ahead if ahead is not None else 2 * processes
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def decoded(self, items: Iterable[Any]) -> Iterator[Decoded]:
        """Each item decoded, in the items' order."""
        if self.processes == 1:
            for item in items:
                yield decode_item(item, records=self.records, max_bytes=self.max_bytes)
            return
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
        executor, source = self._executor, iter(items)
        flight: deque[Future[list[Decoded]]] = deque()

        def submit() -> bool:
            chunk = list(islice(source, self.chunk_items))
            if chunk:
                flight.append(executor.submit(decode_chunk, chunk, self.records, self.max_bytes))
            return bool(chunk)

        more = True
        try:
            while more and len(flight) < self.ahead:
                more = submit()
            while flight:
                try:
                    done = flight.popleft().result()
                except BrokenProcessPool as exc:
                    raise DecodeFailed(f"a decoding process ended without an answer: {exc}") from None
                if more:
                    more = submit()
                yield from done
        finally:
            for future in flight:
                future.cancel()
