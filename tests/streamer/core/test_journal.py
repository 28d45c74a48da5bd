"""The results journal: durable entries, compaction that never lets a sequence number be given twice, and the
writer id the Kafka publisher's transactions and mark are keyed by."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamer.core.journal import COMPACT_ABOVE, LEGACY_ACKED_FILE, WRITER_FILE, ResultJournal
from streamer.core.results import AlertTransition, RunResult, result_from_message
from tests.streamer.sinks.test_sinks import coverage_alert

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "default_replay.jsonl"
STEP_US = 300_000_000


@pytest.fixture(scope="module")
def first() -> RunResult:
    m = json.loads(GOLDEN.read_text().splitlines()[0])
    result = result_from_message(m["topic"], m)
    assert isinstance(result, RunResult)
    return result


def _tiers(base: RunResult, run: int) -> RunResult:
    return base.but(run=run, as_of_us=base.as_of_us + run * STEP_US)


def test_entries_survive_a_reopen_and_a_torn_line_is_cut(tmp_path: Path, first: RunResult) -> None:
    journal = ResultJournal(tmp_path)
    for run in (1, 2, 3):
        assert journal.append(_tiers(first, run)).seq == run
    journal.close()
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write('{"seq":4,"topic":"tiers","mess')  # a crash in the middle of a write
    again = ResultJournal(tmp_path)
    assert [e.seq for e in again.entries] == [1, 2, 3] and again.last_seq == 3
    assert again.has("tiers", _tiers(first, 2).id) and not again.has("tiers", _tiers(first, 4).id)
    assert [e.result for e in again.after(1)] == [_tiers(first, 2), _tiers(first, 3)]
    again.close()


def test_compaction_keeps_the_newest_entry_so_no_sequence_number_is_given_twice(
    tmp_path: Path, first: RunResult
) -> None:
    """The newest entry here is an alert, after the newest tiers result: dropping it would make the next result
    reuse its number, and a publisher's mark at that number would then skip the new result as already written."""
    journal = ResultJournal(tmp_path)
    n = COMPACT_ABOVE + 10
    for run in range(1, n + 1):
        journal.append(_tiers(first, run))
    alert: AlertTransition = coverage_alert(_tiers(first, n), 0.4)
    assert journal.append(alert).seq == n + 1
    journal.compact(n + 1)  # everything delivered everywhere
    assert [e.seq for e in journal.entries] == [n, n + 1], "the newest tiers result and the newest entry"
    journal.close()
    again = ResultJournal(tmp_path)
    assert again.last_seq == n + 1 and again.last_tiers() == _tiers(first, n)
    assert again.append(_tiers(first, n + 1)).seq == n + 2
    again.compact(5)  # what is not delivered stays
    assert [e.seq for e in again.entries] == [n, n + 1, n + 2]
    again.close()


def test_the_writer_id_lives_with_its_journal(tmp_path: Path, first: RunResult) -> None:
    """Stable across restarts; a new journal (its file gone) is a new writer, whose numbers start again at 1 and
    must not be judged by the old writer's mark; an older skyattr's acknowledgement mark counts only for the journal
    it was written for."""
    journal = ResultJournal(tmp_path)
    writer = journal.writer_id
    assert writer.startswith("skyattr-results-") and (tmp_path / WRITER_FILE).read_text() == writer
    assert journal.fresh and journal.legacy_mark() is None
    journal.append(_tiers(first, 1))
    journal.close()
    (tmp_path / LEGACY_ACKED_FILE).write_text('{"through": 1}')
    again = ResultJournal(tmp_path)
    assert again.writer_id == writer and not again.fresh and again.legacy_mark() == 1
    again.close()
    (tmp_path / "results.jsonl").unlink()
    fresh = ResultJournal(tmp_path)
    assert fresh.writer_id != writer and fresh.legacy_mark() is None
    assert fresh.append(_tiers(first, 1)).seq == 1
    fresh.close()
    (tmp_path / LEGACY_ACKED_FILE).write_text("not json")
    with pytest.raises(ValueError, match=LEGACY_ACKED_FILE):
        ResultJournal(tmp_path).legacy_mark()
