"""Hostile input to the state: no DID, timestamp or damaged checkpoint can crash it, expire its window or make its
checkpoint unreadable."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.core.checkpoint import load_checkpoint, save_checkpoint
from streamer.core.decisions import MAX_DID_CHARS, storable_did
from streamer.core.events import Event
from streamer.core.state import AgentState, StateConfig, decode_strings, encode_strings

HOUR = 3_600_000_000
A, B = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24
T0 = 1000 * HOUR

HOSTILE_STRINGS = [
    [],
    [""],
    ["", "", ""],
    ["did:plc:a\nb", "\n", "\n\n", "x\r\ny"],
    ["nul\x00inside", "\x00", "tab\tand\x1bescape\x7f"],
    ["emoji 😀 and 👩‍👩‍👧 (ZWJ)", "é", "漢字", "\u2028\u2029"],
    ["lone \ud800 surrogate", "\udfff", "pair 😀"],
    ["d" * 2048, "é" * 2048, "😀" * 2048],
    [f"did:plc:{i:024d}" for i in range(1000)],
]


@pytest.mark.parametrize("strings", HOSTILE_STRINGS, ids=lambda s: f"{len(s)}-strings")
def test_the_string_table_round_trips_any_strings(strings: list[str]) -> None:
    offsets, blob = encode_strings(strings)
    assert offsets.dtype == np.int64 and blob.dtype == np.uint8 and len(offsets) == len(strings) + 1
    assert decode_strings(offsets, blob) == strings


def test_a_string_table_that_does_not_add_up_is_refused() -> None:
    offsets, blob = encode_strings(["did:plc:one", "did:plc:two"])
    for bad_offsets, bad_blob in (
        (offsets, blob[:-1]),  # truncated blob
        (offsets[:-1], blob),  # a missing offset
        (np.array([0, 15, 11, len(blob)]), blob),  # decreasing
        (np.array([1, 11, len(blob)]), blob),  # not starting at 0
        (np.zeros(0, np.int64), blob),
    ):
        with pytest.raises(ValueError, match="offsets"):
            decode_strings(bad_offsets, bad_blob)
    with pytest.raises(ValueError):  # a cut through a multi-byte character
        decode_strings(np.array([0, 1, 4]), np.frombuffer("é😀".encode()[:4], np.uint8))


def _warm(s: AgentState) -> None:
    for i in range(200):
        assert s.apply(Event(T0 + i * 1_000_000, i, "post", A)) is None


UNSTORABLE = ["did:plc:a\nb", "did:plc:nul\x00", "did:plc:\ud800", "did:plc:esc\x1b", "", "d" * (MAX_DID_CHARS + 1)]


@pytest.mark.parametrize(
    ("role", "did"),
    [("actor", d) for d in UNSTORABLE] + [("subject", d) for d in UNSTORABLE if d],  # "": attends to nobody
    ids=repr,
)
def test_an_unstorable_did_is_refused_counted_and_never_held(tmp_path, did: str, role: str) -> None:
    s = AgentState(StateConfig(bucket_hours=1.0, buckets=3))
    _warm(s)
    event = Event(T0 + 300_000_000, 0, "like", did, B) if role == "actor" else Event(T0, 0, "like", B, did)
    assert s.apply(event) == "bad_did"
    assert s.counters["bad_did"] == 1 and did not in s.index and all(storable_did(d) for d in s.dids)
    with pytest.raises(ValueError, match="storable"):
        s.intern(did)
    save_checkpoint(tmp_path, s, cursor=7, extra={"mode": "replay"})  # the state stays checkpointable ...
    restored, cursor, _ = load_checkpoint(tmp_path)  # ... and the checkpoint readable
    assert cursor == 7 and restored.dids == s.dids and restored.counters == s.counters


def test_a_non_string_did_is_refused() -> None:
    s = AgentState()
    assert s.apply(Event(T0, 0, "like", None, B)) == "bad_did"  # type: ignore[arg-type]
    assert s.apply(Event(T0, 0, "like", A, b"did:plc:bytes")) == "bad_did"  # type: ignore[arg-type]
    assert s.dids == []


def test_printable_but_unusual_dids_survive_a_checkpoint_file(tmp_path) -> None:
    """What the decoder's syntax check would refuse but the state can hold: it round-trips exactly."""
    odd = ["did:plc:😀", "did:web:exämple.com", "did:plc:with space", "d" * MAX_DID_CHARS, "did:x:" + "é" * 500]
    s = AgentState(StateConfig(bucket_hours=1.0, buckets=3))
    _warm(s)
    for i, did in enumerate(odd):
        assert s.apply(Event(T0 + i, 0, "like", did, odd[(i + 1) % len(odd)])) is None
    save_checkpoint(tmp_path, s, cursor=1, extra={"mode": "replay"})
    restored, _, _ = load_checkpoint(tmp_path)
    assert restored.dids == s.dids == [A, *odd]
    np.testing.assert_array_equal(restored.snapshot().x, s.snapshot().x)


@pytest.mark.parametrize(
    ("time_us", "reason"),
    [(-1, "late"), (-(10**30), "late"), (1 << 62, "future_time"), (10**30, "future_time")],
)
def test_an_unrepresentable_time_is_refused_without_touching_the_watermark(time_us: int, reason: str) -> None:
    s = AgentState()
    assert s.apply(Event(time_us, 0, "like", A, B)) == reason, "even as the very first event"
    _warm(s)
    watermark, head = s.watermark.watermark_us, s.head
    assert s.apply(Event(time_us, 0, "like", A, B)) == reason
    assert (s.watermark.watermark_us, s.head) == (watermark, head) and s.counters[reason] == 2
    assert B not in s.index


def test_a_minority_of_poisoned_times_cannot_move_the_window() -> None:
    """A PDS with a broken clock: 20% of the traffic dated years away (both ways), interleaved. Nothing expires
    early, the head follows the honest stream, the poisoned events are all refused."""
    s = AgentState(StateConfig(bucket_hours=1.0, buckets=3))
    honest: list[str | None] = []
    poisoned: list[str | None] = []
    for i in range(20_000):
        if i % 5 == 4:
            t = T0 + (10**15 if i % 10 == 4 else -(10**14))
            poisoned.append(s.apply(Event(t, i, "like", B, A)))
        else:
            honest.append(s.apply(Event(T0 + i * 90_000, i, "post", A)))  # 1.8 h of honest traffic
    assert not any(honest[16:]), "every honest event after warm-up accepted"
    assert set(poisoned[4:]) <= {"future_time", "late"}
    assert s.head == (T0 + 19_000 * 90_000) // HOUR
    assert s.counters["buckets_expired"] == 0 and s.counters["buckets_dropped"] == 1


def _checkpoint(s: AgentState) -> tuple[dict[str, np.ndarray], dict]:
    arrays, meta = s.to_arrays()
    return {k: np.array(v) for k, v in arrays.items()}, meta


def _filled() -> AgentState:
    s = AgentState(StateConfig(bucket_hours=1.0, buckets=3))
    _warm(s)
    s.apply(Event(T0 + 300_000_000, 0, "like", B, A))
    return s


@pytest.mark.parametrize(
    "damage",
    [
        "truncated blob",
        "duplicate did",
        "code beyond the dids",
        "unsorted codes",
        "edge beyond the dids",
        "counts and codes disagree",
        "short ring",
        "old layout",
    ],
)
def test_a_damaged_state_is_refused_not_half_read(tmp_path, damage: str) -> None:
    s = _filled()
    arrays, meta = _checkpoint(s)
    (b,) = meta["buckets"]
    if damage == "truncated blob":
        arrays["dids_blob"] = arrays["dids_blob"][:-3]
    elif damage == "duplicate did":
        arrays["dids_offsets"], arrays["dids_blob"] = encode_strings([A, A])
    elif damage == "code beyond the dids":
        arrays[f"b{b}_codes"][-1] = 99 << 3
    elif damage == "unsorted codes":
        arrays[f"b{b}_codes"] = arrays[f"b{b}_codes"][::-1].copy()
        arrays[f"b{b}_codes"][0] = arrays[f"b{b}_codes"][-1]
    elif damage == "edge beyond the dids":
        arrays[f"b{b}_src"][0] = 5
    elif damage == "counts and codes disagree":
        arrays[f"b{b}_counts"] = arrays[f"b{b}_counts"][:0]
    elif damage == "short ring":
        arrays["watermark_ring"] = arrays["watermark_ring"][:10]
    elif damage == "old layout":
        arrays["dids"] = np.frombuffer("\n".join(s.dids).encode(), np.uint8)
        del arrays["dids_offsets"], arrays["dids_blob"]
    with pytest.raises((ValueError, KeyError)):
        AgentState.from_arrays(arrays, meta)
    from streamer.core.checkpoint import write_checkpoint

    write_checkpoint(tmp_path, arrays, meta, 0, {"mode": "replay"})
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)


def test_the_ingestor_counts_each_refusal_by_reason_and_schedules_on_accepted_times_only() -> None:
    from streamer.core.frames import Decoded
    from streamer.core.ingest import Ingestor

    ing = Ingestor(AgentState(StateConfig(bucket_hours=1.0, buckets=3)))
    ticks: list[int] = []
    ing.before_event = ticks.append
    honest = [Event(T0 + i * 1_000_000, i, "post", A) for i in range(100)]
    hostile = [
        Event(4_102_444_800 * 1_000_000, 0, "like", A, B),  # 2100
        Event(T0 - 10 * HOUR, 0, "like", A, B),  # before the window
        Event(T0 + 100_000_000, 0, "like", "did:plc:a\nb", B),
    ]
    ing.apply_decoded(Decoded("#commit", events=honest + hostile))
    assert ing.stats.events == {"post": 100}
    assert ing.stats.skipped == {"future_time": 1, "late": 1, "bad_did": 1}
    assert ticks == [e.time_us for e in honest], "refused times never reach the scheduler"
