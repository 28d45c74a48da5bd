"""``skyattr ingest --to-kafka`` on the real broker: every event once, whatever is killed when.

The oracle is the archive's own events (decoded directly): a read_committed consumer of the events topic must see
each of them exactly once, keyed by its actor, after an uninterrupted ingest and after one killed with SIGKILL
several times and restarted, and a second run of a finished ingest must add nothing.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamer.core.frames import decode_frame
from streamer.distributed import event_records
from streamer.distributed.kafka_ingest import IngestCursor, ingest_key, load_cursor
from streamer.distributed.sequencer import Tick
from streamer.sinks.kafka_topics import partitions_of, stop_consumer
from streamer.sources.archive import read_archive
from streamer.testing.jetstream2_server import Jetstream2Server
from streamer.testing.synth import default_archive
from streamer.testing.threaded import serving_in_thread
from tests.broker import kafka_bootstrap
from tests.faults import Lines, signal_when, wait_until

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bootstrap() -> str:
    return kafka_bootstrap()


@pytest.fixture(scope="module")
def archive(synth_archive_of: Callable[[int, float, int], Path]) -> Path:
    return synth_archive_of(400, 10, 21)


def _expected(archive: Path) -> Counter[tuple]:
    out: Counter[tuple] = Counter()
    for position, item in enumerate(read_archive(archive), start=1):
        assert item.frame is not None
        for index, e in enumerate(decode_frame(item.frame).events):
            out[(position, index, e.time_us, e.seq, e.kind, e.actor, e.subject, e.rkey, e.operation)] += 1
    return out


def _topics() -> tuple[str, str]:
    run = uuid.uuid4().hex[:8]
    return f"test.events.{run}", f"test.cursors.{run}"


def _ingest(archive: Path, bootstrap: str, events: str, cursors: str, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "streamer", "ingest", str(archive), "--to-kafka", "--kafka-bootstrap", bootstrap]
    cmd += ["--events-topic", events, "--cursor-topic", cursors, "--partitions", "3", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


async def _read_all(bootstrap: str, topic: str) -> tuple[Counter[tuple], dict[int, set[str]], dict[str, Any]]:
    """Every committed event of ``topic``, which actors each partition holds, and the sequencer's part: the
    ordinals of accepted events and the ticks each partition got."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
    assert tps, f"no topic {topic}"
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        got: Counter[tuple] = Counter()
        actors: dict[int, set[str]] = {tp.partition: set() for tp in tps}
        seq: dict[str, Any] = {"ordinals": Counter(), "ticks": {tp.partition: [] for tp in tps}, "numbers": {}}
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                for record in (await consumer.getmany(tp, timeout_ms=2000)).get(tp, []):
                    turn = event_records.turn_of(record.headers)
                    assert turn is not None, "every record carries its skyattr-seq"
                    seq["numbers"].setdefault((tp.partition, turn[0]), []).append(turn[1])
                    if event_records.schema_of(record.headers) == event_records.CONTROL_SCHEMA:
                        control = event_records.decode_control(record.value)
                        if isinstance(control, Tick):
                            seq["ticks"][tp.partition].append(control)
                        continue
                    r = event_records.decode(record.value)
                    if r.ordinal >= 0:
                        seq["ordinals"][r.ordinal] += 1
                    e = r.event
                    assert record.key == e.actor.encode()
                    assert dict(record.headers)[event_records.SCHEMA_HEADER] == b"skyattr.event/1"
                    actors[tp.partition].add(e.actor)
                    got[(r.position, r.index, e.time_us, e.seq, e.kind, e.actor, e.subject, e.rkey, e.operation)] += 1
        return got, actors, seq
    finally:
        await stop_consumer(consumer)


def test_an_uninterrupted_ingest_writes_every_event_once_and_a_rerun_adds_nothing(
    archive: Path, bootstrap: str
) -> None:
    events, cursors = _topics()
    proc = _ingest(archive, bootstrap, events, cursors, "--batch-items", "500")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "from the start" in err
    got, actors, seq = asyncio.run(_read_all(bootstrap, events))
    expected = _expected(archive)
    assert got == expected
    _assert_sequenced(seq, sum(expected.values()))
    assert all(a.isdisjoint(b) for p, a in actors.items() for q, b in actors.items() if p < q), "an actor, a partition"
    again = _ingest(archive, bootstrap, events, cursors)
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0 and "wrote 0 events" in err, err
    assert asyncio.run(_read_all(bootstrap, events))[0] == expected
    cursor = asyncio.run(load_cursor(bootstrap, cursors, ingest_key(_source_id(archive), events)))
    assert isinstance(cursor, IngestCursor) and cursor.events == sum(expected.values())


def _source_id(archive: Path) -> str:
    from streamer.app.ingest_kafka_command import source_id

    return source_id(archive, "")


def test_sigkill_at_any_point_loses_and_doubles_nothing(bootstrap: str) -> None:
    """The bundled archive (12,000 items over 24 h), written at 6,000x its event time in small transactions and
    killed five times, each once its committed cursor is seen past the next of five marks (so the kills land
    between and inside transactions, and before the end: at that pace the archive takes 14 s), then run to the
    end: the committed events are the archive's, each once."""
    archive = default_archive()
    events, cursors = _topics()
    source = ingest_key(_source_id(archive), events)
    pace = ("--speed", "6000", "--batch-items", "10", "--batch-seconds", "0.05")
    for mark in (1_500, 3_000, 4_500, 6_000, 7_500):
        proc = _ingest(archive, bootstrap, events, cursors, *pace)
        err = Lines(proc.stderr)
        signal_when(proc, lambda m=mark: _committed(bootstrap, cursors, source).position >= m, 120, f"item {mark}")
        proc.wait(60)
        killed_at = _committed(bootstrap, cursors, source).position
        assert mark <= killed_at < 11_998, f"killed at {killed_at}, past the mark {mark} and before the end"
        assert "Traceback" not in err.text()
    final = _ingest(archive, bootstrap, events, cursors, "--batch-items", "40")
    _, err = final.communicate(timeout=240)
    assert final.returncode == 0, err
    assert "resumed after" in err
    got, _, seq = asyncio.run(_read_all(bootstrap, events))
    assert got == _expected(archive)
    _assert_sequenced(seq, sum(got.values()), runs=288)


def test_an_ingest_with_two_decoders_killed_and_resumed_writes_every_event_once(bootstrap: str) -> None:
    """``--decoders 2``: frames decoded in two processes ahead of the sequencer. Killed once its committed cursor
    is past a mark (frames decoded ahead of the commit are not written), then resumed: the archive's events, each
    once, sequenced as an uninterrupted ingest sequences them."""
    archive = default_archive()
    events, cursors = _topics()
    source = ingest_key(_source_id(archive), events)
    two = ("--decoders", "2")
    proc = _ingest(archive, bootstrap, events, cursors, *two, "--speed", "6000", "--batch-items", "50")
    err = Lines(proc.stderr)
    signal_when(proc, lambda: _committed(bootstrap, cursors, source).position >= 4_000, 120, "item 4000")
    proc.wait(60)
    assert 4_000 <= _committed(bootstrap, cursors, source).position < 11_998
    assert "Traceback" not in err.text()
    final = _ingest(archive, bootstrap, events, cursors, *two)
    _, err_text = final.communicate(timeout=240)
    assert final.returncode == 0 and "resumed after" in err_text, err_text
    got, _, seq = asyncio.run(_read_all(bootstrap, events))
    assert got == _expected(archive)
    _assert_sequenced(seq, sum(got.values()), runs=288)


def _assert_sequenced(seq: dict[str, Any], events: int, runs: int | None = None) -> None:
    """Every accepted event has its ordinal once (0, 1, ... with none missing), and every partition got the same
    ticks (``runs`` of them), each once, in due order, the last one the tail's."""
    ordinals = seq["ordinals"]
    assert set(ordinals.values()) == {1} and sorted(ordinals) == list(range(len(ordinals)))
    for where, numbers in seq["numbers"].items():  # each partition's records numbered 1, 2, ... in offset order
        assert numbers == list(range(1, len(numbers) + 1)), where
    assert 0.95 * events < len(ordinals) <= events
    ticks = list(seq["ticks"].values())
    assert all(t == ticks[0] for t in ticks) and ticks[0] and len(ticks[0]) == (runs or len(ticks[0]))
    times = [t.as_of_us for t in ticks[0]]
    assert times == sorted(set(times)) and ticks[0][-1].final and not any(t.final for t in ticks[0][:-1])


def test_two_ingests_of_one_archive_into_two_topics_neither_fence_nor_share_a_cursor(
    archive: Path, bootstrap: str
) -> None:
    """At once, with one cursor topic: each topic gets every event once, each ingest its own cursor; a rerun of
    one adds nothing to either."""
    first, cursors = _topics()
    second = f"{first}.copy"
    procs = [_ingest(archive, bootstrap, topic, cursors, "--batch-items", "50") for topic in (first, second)]
    errs = [proc.communicate(timeout=240)[1] for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    expected = _expected(archive)
    for topic in (first, second):
        assert asyncio.run(_read_all(bootstrap, topic))[0] == expected, topic
        cursor = asyncio.run(load_cursor(bootstrap, cursors, ingest_key(_source_id(archive), topic)))
        assert cursor is not None and cursor.events == sum(expected.values())
    again = _ingest(archive, bootstrap, second, cursors)
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0 and "wrote 0 events" in err, err
    assert asyncio.run(_read_all(bootstrap, first))[0] == expected


def test_a_cursor_keyed_by_the_source_alone_is_found_where_its_topic_holds_records(
    archive: Path, bootstrap: str
) -> None:
    """A cursor left by a release that keyed cursors by the source alone: an ingest into the topic that holds the
    events resumes from it (adds nothing), one into a fresh topic does not (writes everything)."""
    from aiokafka import AIOKafkaProducer

    events, cursors = _topics()
    proc = _ingest(archive, bootstrap, events, cursors)
    assert proc.communicate(timeout=240)[0] is not None and proc.returncode == 0
    source = _source_id(archive)
    cursor = asyncio.run(load_cursor(bootstrap, cursors, ingest_key(source, events)))
    assert cursor is not None

    async def as_before() -> None:  # the cursor under the bare source, the new key's record removed (tombstone)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(cursors, cursor.to_bytes(), key=source.encode())
            await producer.send_and_wait(cursors, None, key=ingest_key(source, events).encode())
        finally:
            await producer.stop()

    asyncio.run(as_before())
    again = _ingest(archive, bootstrap, events, cursors)
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0 and "wrote 0 events" in err, err
    fresh = f"{events}.fresh"
    other = _ingest(archive, bootstrap, fresh, cursors)
    _, err = other.communicate(timeout=240)
    assert other.returncode == 0 and "from the start" in err, err
    assert asyncio.run(_read_all(bootstrap, fresh))[0] == _expected(archive)


def test_a_relay_source_resumes_at_its_committed_seq(bootstrap: str, sample_dir: Path) -> None:
    """From a live relay (``skyattr relay`` replaying the real sample at 0.1× event time): killed once, restarted,
    stopped with SIGTERM once everything is in; the events are the sample's, each once, the cursor the last seq."""
    from tests.net import free_port

    sample = sample_dir / "frames.bin.zst"
    port = free_port()
    relay = subprocess.Popen(
        [sys.executable, "-m", "streamer", "relay", str(sample), "--port", str(port), "--from-start", "--speed", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert relay.stdout is not None and relay.stdout.readline().strip() == f"ws://127.0.0.1:{port}"
        events, cursors = _topics()
        source = ingest_key(f"relay:ws://127.0.0.1:{port}", events)
        args = ("--relay", f"ws://127.0.0.1:{port}", "--batch-items", "5", "--batch-seconds", "0.05")
        first = _ingest_live(bootstrap, events, cursors, *args)
        signal_when(first, lambda: _committed(bootstrap, cursors, source).items >= 20, 60, "20 items committed")
        first.communicate(timeout=30)
        assert _committed(bootstrap, cursors, source).items < 140, "killed mid-stream (the sample takes ~10 s)"
        second = _ingest_live(bootstrap, events, cursors, *args)
        last = max(seq for _, seq in _seqs(sample))
        wait_until(lambda: _committed(bootstrap, cursors, source).position >= last, 60, f"the cursor at seq {last}")
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 0 and "resumed after" in err, err
    finally:
        relay.terminate()
        relay.wait(10)
    got = Counter(key[2:] for key in asyncio.run(_read_all(bootstrap, events))[0].elements())
    expected = Counter(key[2:] for key in _expected(sample).elements())  # positions are seqs here, not item numbers
    assert got == expected


def _ingest_live(bootstrap: str, events: str, cursors: str, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "streamer", "ingest", "--to-kafka", "--kafka-bootstrap", bootstrap]
    cmd += ["--events-topic", events, "--cursor-topic", cursors, "--partitions", "2", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _committed(bootstrap: str, cursors: str, source: str) -> IngestCursor:
    """The committed cursor of an ingest (``source``: its :func:`ingest_key`; an empty one until the topic and a
    first commit exist)."""
    try:
        return asyncio.run(load_cursor(bootstrap, cursors, source)) or IngestCursor(source)
    except Exception:  # the topic not created yet: the ingest is still starting
        return IngestCursor(source)


def _seqs(archive: Path) -> list[tuple[int, int]]:
    return [(n, decode_frame(item.frame).seq) for n, item in enumerate(read_archive(archive)) if item.frame]


def test_a_live_ingest_is_ready_only_while_its_relay_is_connected(bootstrap: str, sample_dir: Path) -> None:
    """``/readyz`` of ``ingest --to-kafka --metrics-port`` from a relay that is not up yet: 503 "relay not
    connected" (the broker is there), 200 once the relay is up, 503 again when it goes away, 200 when it is back;
    ``skyattr_source_connected`` follows."""
    from tests.net import free_port, http_get

    def ready() -> tuple[int, str]:
        try:
            return http_get(f"http://127.0.0.1:{metrics}/readyz")
        except OSError:
            return (0, "not listening")

    def relay_up() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "relay", str(sample_dir / "frames.bin.zst"), "--port", str(port),
             "--from-start", "--speed", "0.01"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == f"ws://127.0.0.1:{port}"
        return proc

    port, metrics = free_port(), free_port()
    events, cursors = _topics()
    ingest = _ingest_live(
        bootstrap, events, cursors, "--relay", f"ws://127.0.0.1:{port}", "--metrics-port", str(metrics)
    )
    relay = None
    try:
        wait_until(lambda: ready() == (503, "not ready: relay not connected\n"), 60, "unready without its relay")
        relay = relay_up()
        wait_until(lambda: ready()[0] == 200, 60, "ready once the relay is up")
        relay.terminate()
        relay.wait(10)
        wait_until(lambda: ready() == (503, "not ready: relay not connected\n"), 60, "unready when the relay went away")
        relay = relay_up()
        wait_until(lambda: ready()[0] == 200, 90, "ready when the relay is back")
        ingest.send_signal(signal.SIGTERM)
        _, err = ingest.communicate(timeout=30)
        assert ingest.returncode == 0, err
    finally:
        if ingest.poll() is None:
            ingest.kill()
        if relay is not None and relay.poll() is None:
            relay.terminate()
            relay.wait(10)


def test_a_jetstream_v2_source_resumes_at_its_committed_seq(bootstrap: str, archive: Path) -> None:
    """``ingest --to-kafka --source jetstream2``: killed once mid-stream, restarted, stopped with SIGTERM once the
    cursor is the last seq; every event of the archive is in the topic once (its v2 seq is the position)."""
    with serving_in_thread(Jetstream2Server(archive)) as server:
        url = server.url
        last = len(server.messages)
        events, cursors = _topics()
        source = ingest_key(f"jetstream2:{url}", events)
        args = ("--source", "jetstream2", "--jetstream2-url", url, "--batch-items", "5", "--batch-seconds", "0.05")
        first = _ingest_live(bootstrap, events, cursors, *args)
        signal_when(first, lambda: _committed(bootstrap, cursors, source).items >= 50, 60, "50 items committed")
        first.communicate(timeout=30)
        assert _committed(bootstrap, cursors, source).position < last, "killed mid-stream"
        second = _ingest_live(bootstrap, events, cursors, *args)
        wait_until(lambda: _committed(bootstrap, cursors, source).position >= last, 120, f"the cursor at seq {last}")
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 0 and "resumed after" in err, err
    got = Counter((k[2], *k[4:]) for k in asyncio.run(_read_all(bootstrap, events))[0].elements())
    want = Counter((k[2], *k[4:]) for k in _expected(archive).elements())
    assert got == want


def test_a_jetstream_v2_commit_sent_again_after_a_restart_is_written_once(bootstrap: str) -> None:
    """``ingest --to-kafka --source jetstream2`` stopped once the first 300 events are committed, restarted on a
    server (same address) that sends 40 of those commits again under new seqs before the rest: the restarted ingest
    rebuilds its (DID, rev) guard from the records it wrote, so the topic holds every operation once. (With a guard
    kept only in memory the 40 are written twice.)"""
    import dataclasses

    from streamer.core.decode import decode_item
    from streamer.testing.jetstream_server import jetstream_events
    from tests.net import free_port

    events = [e for line in jetstream_events(default_archive())[:600] for e in decode_item(line).events]
    first = events[:300]
    again = [dataclasses.replace(e, time_us=e.time_us + 1) for e in [e for e in first if e.rev][-40:]]
    port, (topic, cursors) = free_port(), _topics()
    for served in (first, first + again + events[300:]):
        with serving_in_thread(Jetstream2Server(served, port=port)) as server:
            source = ingest_key(f"jetstream2:{server.url}", topic)
            args = ("--source", "jetstream2", "--jetstream2-url", server.url, "--batch-items", "50")
            proc = _ingest_live(bootstrap, topic, cursors, *args)
            try:
                n = len(served)
                wait_until(lambda n=n, s=source: _committed(bootstrap, cursors, s).position >= n, 120, f"seq {n}")
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert proc.returncode == 0, err[-2000:]
    got = asyncio.run(_read_all(bootstrap, topic))[0]
    written = Counter(k[4:] for k in got.elements())  # kind, actor, subject, rkey, operation
    assert written == Counter((e.kind, e.actor, e.subject, e.rkey, e.operation) for e in events)
