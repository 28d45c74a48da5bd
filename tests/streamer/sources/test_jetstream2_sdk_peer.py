"""The atproto SDK's own Jetstream v2 client, unmodified, against ``skyattr relay ARCHIVE --jetstream2-port``.

``JetstreamClient`` (package ``atproto_jetstream``) is what v2's users run: ``snapshot()`` sweeps the sealed archive
(``planSnapshot``, ``getSegment`` by Range slices, the ``jss0`` segment reader), ``replay()`` goes on into the live
tail at the sealed tip, and the tail asks for dict-zstd frames with the dictionary of ``getZstdDictionary``. All of
it on the relay's one v2 port. Checked here against ``skyattr events`` of the same archive (a separate process and
a separate decoder), event for event, CIDs included (the SDK derives each record's CID from the bytes served, so a
record re-encoded wrongly shows); and a consumer SIGKILLed at the seam between the archive and the tail, restarted
from the seq it had written, misses and repeats nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from atproto_jetstream import JetstreamClient

from streamer.core.events import parse_time_us
from streamer.testing.synth import default_archive

KEY = "a-key-for-this-test"
UNSEALED = 400  # events after the sealed tip: only the live tail has them


def _skyattr(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamer", *args]


@pytest.fixture(scope="module")
def v2() -> Iterator[dict[str, Any]]:
    """``skyattr relay`` serving the default archive, with its Jetstream v2 on a port of its own choosing."""
    env = {**os.environ, "SKYATTR_JETSTREAM2_API_KEY": KEY}
    cmd = _skyattr("relay", str(default_archive()), "--port", "0", "--from-start", "--jetstream2-port", "0",
                   "--jetstream2-unsealed", str(UNSEALED))  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the firehose relay's URL
        url = proc.stdout.readline().strip()
        assert url.startswith("ws://"), proc.stderr.read() if proc.stderr else url
        events = subprocess.run(_skyattr("events", str(default_archive())), capture_output=True, text=True,
                                check=True, timeout=300).stdout.splitlines()  # fmt: skip
        yield {"url": url, "base": url + "/xrpc", "events": [json.loads(line) for line in events]}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _said(event: dict[str, Any]) -> tuple:
    """What a v1 line of ``skyattr events`` says, in the terms both wires share."""
    head = (event["did"], event["skyattr"]["commit_time_us"], event["kind"])  # v2's time here: the commit's
    if event["kind"] == "commit":
        c = event["commit"]
        return (*head, c["operation"], c["collection"], c["rkey"], c.get("rev"), c.get("cid"))
    body = event[event["kind"]]
    return (*head, body.get("handle"), body.get("active"), body.get("status"))


def _said_by_sdk(m: Any) -> tuple:
    kind = str(m.py_type).rsplit("#", 1)[-1]
    head = (m.did, parse_time_us(m.time), kind)
    if kind == "commit":
        return (*head, m.operation, m.collection, m.rkey, m.rev, m.cid)
    body = getattr(m, kind)
    return (*head, getattr(body, "handle", None), getattr(body, "active", None), getattr(body, "status", None))


def test_the_sdk_snapshot_is_skyattr_events_event_for_event(v2: dict[str, Any]) -> None:
    client = JetstreamClient(base_uri=v2["base"], api_key=KEY)
    snapshot = list(client.snapshot())
    sealed = len(v2["events"]) - UNSEALED
    assert [m.seq for m in snapshot] == list(range(1, sealed + 1)), "the sealed archive, in seq order, once"
    assert [_said_by_sdk(m) for m in snapshot] == [_said(e) for e in v2["events"][:sealed]]
    assert client.bytes_downloaded > 0
    posts = [m for m in snapshot if getattr(m, "collection", "") == "app.bsky.feed.post" and m.record is not None]
    commits = [e["commit"] for e in v2["events"][:sealed] if e["kind"] == "commit"]
    want = {
        c["rkey"]: c["record"]["text"] for c in commits if c["collection"] == "app.bsky.feed.post" and "record" in c
    }
    assert posts and all(m.record.text == want[m.rkey] for m in posts)
    # a key the archive does not know is refused, as v2 refuses it
    with pytest.raises(Exception, match=r"AuthRequired|401"):
        list(JetstreamClient(base_uri=v2["base"], api_key="not-the-key").snapshot())


def test_the_sdk_replay_crosses_from_the_segments_to_the_compressed_live_tail(v2: dict[str, Any]) -> None:
    client = JetstreamClient(base_uri=v2["base"], api_key=KEY)
    total, got = len(v2["events"]), []
    for message in client.replay():
        got.append(message)
        if len(got) == total:
            break
    assert [m.seq for m in got] == list(range(1, total + 1)), "no gap and no duplicate at the seam"
    assert [_said_by_sdk(m) for m in got] == [_said(e) for e in v2["events"]]
    assert client.compressed, "the tail was read in dict-zstd frames, with the dictionary the server trained"
    assert client.cursor == total


CONSUMER = r"""
import os, signal, sys
from atproto_jetstream import JetstreamClient
base, key, after, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for m in JetstreamClient(base_uri=base, api_key=key).replay(after_seq=after):
    print(m.seq, flush=True)  # what this consumer has processed: its checkpoint
    if m.seq == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("past_seam", [0, 1, 40])
def test_a_consumer_killed_at_the_seam_restarts_from_its_seq_with_no_gap_or_duplicate(
    v2: dict[str, Any], past_seam: int
) -> None:
    """SIGKILL when the consumer has printed the sealed tip (0), or 1 or 40 events of the live tail; a new process
    from the last seq printed reads the rest: the printed seqs of both runs are every seq once."""
    total = len(v2["events"])
    tip = total - UNSEALED
    first = subprocess.run([sys.executable, "-c", CONSUMER, v2["base"], KEY, "0", str(tip + past_seam)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert first.returncode == -signal.SIGKILL, first.stderr
    done = [int(s) for s in first.stdout.split()]
    assert done[-1] == tip + past_seam
    second = subprocess.Popen([sys.executable, "-c", CONSUMER, v2["base"], KEY, str(done[-1]), str(total)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        out, err = second.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        second.kill()
        out, err = second.communicate()
    rest = [int(s) for s in out.split()]
    assert done + rest == list(range(1, total + 1)), err[-2000:]
