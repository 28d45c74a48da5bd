"""A live ``skyattr relay``: no cursor is a tail from now, a cursor is exclusive, reconnecting never repeats.

The default of ``skyattr relay`` (``--from-start`` replays instead). The archive "happens" on the relay's own clock
from its start at ``speed`` x event time, the same for every connection, as on a real relay.
"""

from __future__ import annotations

import asyncio
import time

import libipld
from websockets.asyncio.client import connect

from streamer.sources.relay_server import Relay
from streamer.testing.synth import default_archive

DAY_S = 86_400


async def _read(url: str, seconds: float) -> list[int]:
    seqs: list[int] = []
    async with connect(url, max_size=None) as ws:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            seqs.append(libipld.decode_dag_cbor_multi(frame)[1]["seq"])
    return seqs


def test_no_cursor_is_a_tail_from_now_and_a_reconnect_repeats_nothing() -> None:
    async def run() -> tuple[list[int], list[int], int, int]:
        async with Relay(default_archive(), live=True, speed=DAY_S / 4.0) as relay:  # the day in 4 s
            assert relay.range is not None
            url = f"{relay.url}/xrpc/com.atproto.sync.subscribeRepos"
            await asyncio.sleep(1.0)  # a quarter of the archive has happened: a new client gets none of it
            first = await _read(url, 0.6)
            second = await _read(url, 3.5)  # reconnect without a cursor (as the SDK's client does)
            return first, second, relay.range.first_seq, relay.range.last_seq

    first, second, lo, hi = asyncio.run(run())
    frames = hi - lo + 1
    assert first and second, (len(first), len(second))
    assert first[0] > lo + frames // 5, f"a tail, not a replay: the first frame sent is seq {first[0]}"
    both = first + second
    assert len(both) == len(set(both)), "nothing sent twice across the reconnect"
    assert both == sorted(both) and both[-1] == hi
    assert len(both) < frames * 0.8


def test_a_cursor_is_exclusive_and_history_comes_at_once() -> None:
    async def run() -> tuple[list[int], list[int], int, int]:
        async with Relay(default_archive(), live=True) as relay:  # no speed: the whole archive is history
            assert relay.range is not None
            url = f"{relay.url}/xrpc/com.atproto.sync.subscribeRepos"
            none = await _read(url, 0.5)
            cursor = relay.range.first_seq + 10
            after = await _read(f"{url}?cursor={cursor}", 5.0)
            return none, after, cursor, relay.range.last_seq

    none, after, cursor, hi = asyncio.run(run())
    assert none == [], "no cursor and nothing happening: nothing is sent"
    assert after[0] == cursor + 1 and after[-1] == hi and len(after) == len(set(after))


def test_a_cursor_past_the_live_head_is_a_future_cursor() -> None:
    async def run() -> tuple[dict, int, int]:
        async with Relay(default_archive(), live=True, speed=DAY_S / 100.0) as relay:  # the day in 100 s
            assert relay.range is not None
            url = f"{relay.url}/xrpc/com.atproto.sync.subscribeRepos?cursor={relay.range.last_seq - 5}"
            async with connect(url) as ws:
                header, body = libipld.decode_dag_cbor_multi(await ws.recv())
            return body, header["op"], relay.head_seq()

    body, op, head = asyncio.run(run())
    assert op == -1 and body["error"] == "FutureCursor", "the archive's end has not happened yet on the relay's clock"
    assert head < 2000
