"""Segments written by ``streamer.testing.jss`` are what the atproto SDK's own v2 archive reader reads: every row
back, in seq order, as the message the live tail would have delivered (the SDK's ``to_message``), equal to the v2
payload it was written from."""

from __future__ import annotations

import libipld
import pytest
from atproto_client.models.utils import get_model_as_dict
from atproto_jetstream.archive.downloader import iter_block_frames
from atproto_jetstream.archive.events import to_message
from atproto_jetstream.archive.segment import decode_block, read_sealed_header

from streamer.core.frames import Decoded, decode_frame, to_json_model
from streamer.core.jetstream2_json import from_jetstream2, to_jetstream2
from streamer.sources.archive import read_archive
from streamer.testing import jss
from streamer.testing.synth import default_archive


@pytest.fixture(scope="module")
def payloads() -> list[dict]:
    events = [e for item in read_archive(default_archive()) for e in decode_frame(item.frame, records=True).events]
    events.sort(key=lambda e: e.time_us)
    return [to_jetstream2(e, i + 1) for i, e in enumerate(events[:3000])]


def test_the_sdk_reads_every_row_back_as_the_live_message(payloads: list[dict]) -> None:
    data = jss.segment([jss.row_of(p) for p in payloads], block_rows=200)
    header = read_sealed_header(data)
    assert (header.block_count, header.event_count) == (15, 3000)
    frames = list(iter_block_frames(data))
    assert frames == jss.block_frames(data)
    rows = [row for frame in frames for row in decode_block(frame)]
    assert [r.seq for r in rows] == list(range(1, 3001))

    def said(decoded: Decoded) -> list[tuple]:
        return [(e.time_us, e.seq, e.kind, e.actor, e.subject, e.collection, e.rkey, e.operation, e.rev)
                for e in decoded.events]  # fmt: skip

    for row, payload in zip(rows, payloads, strict=True):
        message = get_model_as_dict(to_message(row, with_cid=False))  # the SDK's model of the live message
        back, want = from_jetstream2(message), from_jetstream2(payload)
        assert not back.error and said(back) == said(want)
        if payload.get("record") is not None:  # the record's bytes are the relay's block: the SDK derives its CID
            assert to_json_model(libipld.decode_dag_cbor(row.payload)) == payload["record"]
            assert to_message(row, with_cid=True).cid == payload["cid"]
    assert len(jss.checksum(data)) == 16 and jss.checksum(data) != "0" * 16
