"""Backfill from the Jetstream v2 archive, then the live tail: every event of a window once, no gap at the seam.

Jetstream v2's live tail reaches back about 36 hours; everything older is in its archive of sealed segments, read
with an API key (:mod:`streamer.testing.jetstream2_archive` is a local one). This source sweeps the archive in seq
order from ``cursor`` (a checkpoint's seq) or from the first segment witnessed at or after ``since_us`` (a window
of ``--backfill 14d``), then cuts over to the live tail (:class:`~streamer.sources.jetstream2.Jetstream2Source`)
at ``max(sealed tip, last seq yielded)``: the tail replays that seq inclusively and drops it as a re-send, so the
seam has neither a gap nor a duplicate.

What the atproto SDK does well is used as it is: the snapshot planner (``SnapshotPlan``: pages pinned to the
sealed tip), the downloader (``AsyncArchiveDownloader``: Range slices, block fetches, waiting out the byte quota,
metering bytes), the segment reader (``decode_block``) and the row filter (``RowMatcher``). What it does not, this
module does: each row becomes a v2 message payload read by the same decoder as the live tail's
(:func:`~streamer.core.jetstream2_json.from_jetstream2`), so a row the SDK would skip silently is counted here
(``bad_row``, ``bad_block``, the decoder's reasons); a network failure re-plans from the last seq yielded after a
backoff (``max_retries`` in a row, then :class:`Jetstream2Unavailable`); a refused key or request is one line
(:class:`~streamer.sources.jetstream2.Jetstream2Refused`). The API key is sent only to the archive, never logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from streamer.core.backoff import Backoff
from streamer.core.frames import Decoded, clean_text, decode_cbor, exception_text, to_json_model
from streamer.core.jetstream2_json import message
from streamer.core.logonce import OncePerKind
from streamer.core.seqs import Sequenced, fingerprint
from streamer.core.source import SourceStats
from streamer.sources.jetstream2 import Jetstream2Refused, Jetstream2Source, Jetstream2Unavailable, subscribe_url
from streamer.sources.websocket import RECONNECT

log = logging.getLogger(__name__)

MARKER_KINDS = {4: "identity", 5: "account", 6: "sync"}  # a segment row's kind column, past the commit operations


@dataclass
class Progress:
    """Where a sweep is: segments done of those planned so far, archive bytes downloaded, events yielded, the last
    seq and the sealed tip (None until the first plan page); ``live`` once it cut over."""

    units_done: int = 0
    units_planned: int = 0
    bytes: int = 0
    events: int = 0
    seq: int = 0
    tip: int | None = None
    live: bool = False


def archive_origin(url: str) -> str:
    """The HTTP origin of a Jetstream v2 given by its websocket URL (where its archive answers)."""
    parts = urlsplit(subscribe_url(url))
    return urlunsplit(({"ws": "http", "wss": "https"}[parts.scheme], parts.netloc, "", "", ""))


def decoded_row(row: Any) -> Decoded:
    """A segment row (the SDK's ``SegmentEvent``) read as the live tail's message would be
    (:func:`~streamer.core.jetstream2_json.message`: the same checks of seq, time and DID, the same commit reading);
    a row that cannot be one (an unknown kind, a payload that is not DAG-CBOR) is ``bad_row``. A commit's record is
    passed as DAG-CBOR data, not converted to its JSON model: what is read of it (its subject) is strings either way,
    and nothing downstream of a backfill reads the rest."""
    try:
        if row.is_commit:
            fields = {
                "operation": row.operation,
                "collection": row.collection,
                "rkey": row.rkey,
                "rev": row.rev or None,
            }
            if row.operation != "delete" and row.payload:
                fields["record"] = decode_cbor(row.payload)
            return message("commit", row.seq, row.time_us, row.did, fields)
        kind = MARKER_KINDS.get(row.kind)
        if kind is None or not row.payload:
            return Decoded(error="bad_row", detail=f"row kind {row.kind!r} at seq {row.seq}")
        return message(kind, row.seq, row.time_us, row.did, {kind: to_json_model(decode_cbor(row.payload))})
    except ValueError as exc:  # TooDeep, not DAG-CBOR
        return Decoded(error="bad_row", detail=clean_text(exception_text(exc)))


async def seq_at(client: Any, api_key: str, since_us: int) -> int:
    """The ``after_seq`` that starts a sweep at the first segment holding events witnessed at or after ``since_us``
    (``listSegments`` through ``client``, the SDK's ``AsyncClientRaw`` at the archive, paged); the last sealed seq
    when none does (the window is all in the live tail)."""
    cursor, last = None, 0
    headers = {"Authorization": f"Bearer {api_key}"}
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = await client.network.bsky.jetstream.list_segments(params, headers=headers)
        for segment in page.segments:
            if segment.max_witnessed_at >= since_us:
                return max(0, int(segment.min_seq) - 1)
            last = int(segment.max_seq)
        cursor = page.cursor
        if not cursor or not page.segments:
            return last


class Jetstream2Backfill:
    """Async iterator of :class:`~streamer.core.seqs.Sequenced` items: the archive from ``cursor`` (or from
    ``since_us``), then (``live``) the tail. ``api_key``: the archive's credential; ``archive_url``: its HTTP
    origin when not the websocket's own. ``on_progress(Progress)`` after each segment. ``backoff`` and
    ``max_retries`` (None: for ever) hold for the sweep's failures and the tail's connections alike; the rest as
    :class:`~streamer.sources.jetstream2.Jetstream2Source`, which ``live_options`` are passed to."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str,
        archive_url: str | None = None,
        cursor: int | None = None,
        since_us: int | None = None,
        collections: Sequence[str] = (),
        dids: Sequence[str] = (),
        kinds: Sequence[str] = (),
        live: bool = True,
        backoff: Backoff = RECONNECT,
        max_retries: int | None = 8,
        stop: asyncio.Event | None = None,
        stats: SourceStats | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        seed: int | None = None,
        **live_options: Any,
    ) -> None:
        if not api_key:
            raise ValueError("reading the Jetstream v2 archive needs an API key")
        subscribe_url(url, cursor, collections=collections, dids=dids, kinds=kinds)  # fail now on a bad one
        self.url, self.archive_url = url, archive_url or archive_origin(url)
        self._key = api_key
        self.collections, self.dids, self.kinds = tuple(collections), tuple(dids), tuple(kinds)
        self.live, self.backoff, self.max_retries = live, backoff, max_retries
        self.stats = stats if stats is not None else SourceStats()
        self._warn = OncePerKind(log)
        self._stop = stop if stop is not None else asyncio.Event()
        self._cursor, self._since = cursor, since_us
        self.on_progress = on_progress
        self.progress = Progress(seq=cursor or 0)
        self._live_options = live_options
        self._tail: Jetstream2Source | None = None
        self._rng = random.Random(seed)
        self.backfilling = True  # what a pipeline reads: the archive's runs are made in event time
        self.cutover_seq: int | None = None  # the seq the live tail starts after, once the sweep is done

    @property
    def cursor(self) -> int | None:
        return self._cursor

    @property
    def seen_at_cursor(self) -> list[int]:
        return []

    def stop(self) -> None:
        self._stop.set()
        if self._tail is not None:
            self._tail.stop()

    async def aclose(self) -> None:
        self.stop()
        if self._tail is not None:
            await self._tail.aclose()

    async def __aenter__(self) -> Jetstream2Backfill:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[Sequenced]:
        return self._run()

    async def _run(self) -> AsyncIterator[Sequenced]:
        from atproto_jetstream.archive.downloader import AsyncArchiveDownloader, ByteMeter

        meter = ByteMeter()
        downloader = AsyncArchiveDownloader(self.archive_url, self._key, meter)
        failures = 0
        while not self._stop.is_set():
            try:
                async for item in self._sweep(downloader, meter):
                    failures = 0
                    yield item
                break
            except Jetstream2Refused:
                raise
            except Exception as exc:  # the SDK's network errors, a server answering 5xx: re-plan from the cursor
                failures += 1
                refused = _refusal(exc)
                if refused is not None:
                    raise Jetstream2Refused(f"the Jetstream v2 archive at {self.archive_url} {refused}") from None
                if self.max_retries is not None and failures > self.max_retries:
                    raise Jetstream2Unavailable(
                        f"{self.archive_url}: {failures} failed attempts in a row: {exception_text(exc)}"
                    ) from None
                delay = self.backoff.delay(failures - 1, self._rng)
                log.warning("archive sweep at seq %s failed (%s); again in %.1f s", self._cursor,
                            clean_text(exception_text(exc)), delay)  # fmt: skip
                self.stats.reconnects += 1
                try:
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                except TimeoutError:
                    pass
        cutover = max(self.progress.tip or 0, self._cursor or 0)
        self.cutover_seq = cutover
        if self._stop.is_set() or not self.live:
            return
        self.progress.live = True
        self._report()
        log.info("archive swept through seq %d: the live tail from there", cutover)
        self._tail = Jetstream2Source(
            self.url, cursor=cutover, collections=self.collections, dids=self.dids, kinds=self.kinds,
            backoff=self.backoff, max_retries=self.max_retries, stop=self._stop, stats=self.stats,
            **self._live_options,
        )  # fmt: skip
        async for item in self._tail:
            self._cursor = self._tail.cursor
            yield item

    async def _sweep(self, downloader: Any, meter: Any) -> AsyncIterator[Sequenced]:
        from atproto_jetstream.archive.downloader import iter_block_frames
        from atproto_jetstream.archive.matcher import RowMatcher
        from atproto_jetstream.archive.planner import PlanFilters, SnapshotPlan
        from atproto_jetstream.archive.segment import decode_block

        after = self._cursor
        if after is None:
            if self._since is not None:
                from atproto_client.client.async_raw import AsyncClientRaw

                after = await seq_at(AsyncClientRaw(base_url=self.archive_url), self._key, self._since)
            else:
                after = 0
            self._cursor = after
        filters = PlanFilters(kinds=list(self.kinds), dids=list(self.dids), collections=list(self.collections))
        plan = SnapshotPlan(filters, after_seq=after)
        matcher = RowMatcher(self.kinds, self.dids, self.collections, after_seq=after)
        while not self._stop.is_set():
            units = plan.consume_page(await downloader.plan_page(plan.next_page_input()))
            self.progress.tip = plan.sealed_tip_seq
            self.progress.units_planned += len(units)
            for unit in units:
                if unit.is_whole_segment:
                    frames = list(iter_block_frames(await downloader.fetch_segment(unit.segment)))
                else:
                    frames = [await downloader.fetch_block(unit.segment, i) for i in unit.blocks or ()]
                for frame in frames:
                    try:
                        rows = await asyncio.to_thread(decode_block, frame)
                    except Exception as exc:  # JetstreamDecodingError: one block lost, counted, the sweep goes on
                        self._count("bad_block", f"{unit.segment}: {exception_text(exc)}")
                        continue
                    for row in matcher.filter(rows):
                        item = self._accept(row)
                        if item is not None:
                            yield item
                        if self._stop.is_set():
                            return
                self.progress.units_done += 1
                self.progress.bytes = meter.total
                self._report()
            if plan.is_complete:
                return

    def _accept(self, row: Any) -> Sequenced | None:
        self.stats.items += 1
        decoded = decoded_row(row)
        if decoded.error:
            self._count(decoded.error, decoded.detail)
            return None
        self.stats.frames[decoded.type] += 1
        if self._cursor is not None and decoded.seq <= self._cursor:
            self.stats.duplicates += 1
            return None
        self._cursor = decoded.seq
        self.progress.seq, self.progress.events = decoded.seq, self.progress.events + 1
        self.stats.yielded += 1
        return Sequenced.of(decoded, decoded.seq, fingerprint(decoded))

    def _count(self, reason: str, detail: str) -> None:
        self._warn.skipped(self.stats.errors, reason, detail, "an archived row")

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)


def _refusal(exc: BaseException) -> str | None:
    """What a 4xx the archive answered says (a refused key, a refused request); None for what retrying can
    change."""
    from atproto_client.exceptions import BadRequestError, UnauthorizedError

    if isinstance(exc, UnauthorizedError):
        return "refused the API key (401): check SKYATTR_JETSTREAM2_API_KEY or the key file"
    if isinstance(exc, BadRequestError):
        return f"refused the request (400): {clean_text(exception_text(exc))}"
    return None


__all__ = ["Jetstream2Backfill", "Progress", "archive_origin", "decoded_row", "seq_at"]
