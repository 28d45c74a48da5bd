"""The atproto SDK's own firehose client against a live ``skyattr relay``: no cursor, a cursor, a reconnect.

The SDK's ``AsyncFirehoseSubscribeReposClient`` is what many consumers run; it reconnects without a cursor unless
its caller keeps one. Against a live relay that must never mean receiving the archive again.
"""

from __future__ import annotations

import asyncio

from atproto import AsyncFirehoseSubscribeReposClient, parse_subscribe_repos_message

from streamer.sources.relay_server import Relay
from streamer.testing.synth import default_archive

DAY_S = 86_400


async def _collect(base: str, count: int, cursor: int | None = None, timeout: float = 20.0) -> list[int]:
    """Seqs of the first ``count`` commits the SDK's client parses (then it stops)."""
    params = {"cursor": cursor} if cursor is not None else None
    client = AsyncFirehoseSubscribeReposClient(params, base_uri=base)
    seqs: list[int] = []

    async def on_message(message: object) -> None:
        commit = parse_subscribe_repos_message(message)
        seq = getattr(commit, "seq", None)
        if isinstance(seq, int):
            seqs.append(seq)
        if len(seqs) >= count:
            await client.stop()

    await asyncio.wait_for(client.start(on_message), timeout)
    return seqs


def test_the_sdk_client_tails_resumes_and_reconnects_without_duplicates() -> None:
    async def run() -> tuple[list[int], list[int], list[int], int]:
        async with Relay(default_archive(), live=True, speed=DAY_S / 20.0) as relay:  # the day in 20 s
            assert relay.range is not None
            base = f"{relay.url}/xrpc"
            await asyncio.sleep(1.0)
            tail = await _collect(base, 40)  # no cursor: from now on
            again = await _collect(base, 40)  # a reconnect without a cursor
            resumed = await _collect(base, 40, cursor=again[-1])  # and with the cursor it kept
            return tail, again, resumed, relay.range.first_seq

    tail, again, resumed, first = asyncio.run(run())
    assert tail[0] > first + 200, "a tail from now, not the archive from its start"
    everything = tail + again + resumed
    assert len(everything) == len(set(everything)), "no frame received twice"
    assert everything == sorted(everything)
    assert resumed[0] == again[-1] + 1, "the cursor is exclusive, and nothing after it is missed"
