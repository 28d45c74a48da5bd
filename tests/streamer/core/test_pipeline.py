"""The stages without the daemon: any Source, the real dispatcher and state, a list as the sink.

A pipeline assembled by hand from a source that is not one of skyattr's (a plain async generator over decoded
items), the real :class:`SequentialDispatcher` and :class:`AgentState`, and a collecting sink gives the results
``skyattr replay`` gives on the same archive (the golden file), with no module of the app layer imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from streamer.core.schedule import ScheduleState, accepted, step
from tests.compare import VOLATILE, assert_close

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "default_replay.jsonl"

SCRIPT = r"""
import asyncio, json, sys
from streamer.core.attribution import AttributionConfig
from streamer.core.decode import decode_item
from streamer.core.dispatch import SequentialDispatcher
from streamer.core.pipeline import Pipeline
from streamer.core.seqs import SeqJudge
from streamer.core.state import AgentState
from streamer.sources.archive import read_archive
from streamer.sources.base import SourceStats
from streamer.testing.synth import default_archive


class ListSource:
    # a Source that is none of skyattr's: decoded items from a list, judged by the one seq judge
    def __init__(self, frames):
        self.stats = SourceStats()
        self.seq = SeqJudge(self.stats)
        self.frames = frames

    @property
    def cursor(self):
        return self.seq.cursor

    async def __aiter__(self):
        for frame in self.frames:
            for _, item in self.seq.judge(None, decode_item(frame)):
                yield item

    def stop(self):
        pass

    async def aclose(self):
        pass


async def main():
    frames = [item.frame for item in read_archive(default_archive())]
    source = ListSource(frames)
    results = []
    dispatcher = SequentialDispatcher(AgentState(), source.stats)
    pipe = Pipeline(dispatcher, AttributionConfig(), 3600, results.append, clock="event")
    ended = await pipe.run(source)
    assert not ended.interrupted
    await pipe.run_tail()
    apps = sorted(m for m in sys.modules if m.startswith("streamer.app") or m in ("typer", "rich"))
    print(json.dumps({"app_modules": apps, "results": [{"topic": r.topic, **r.to_message()} for r in results]}))


asyncio.run(main())
"""


def test_a_hand_built_pipeline_gives_the_replay_results_without_the_app_layer() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["app_modules"] == [], "the stages must not need the command line or the daemon"
    want = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    assert [(m["topic"], m["run"]) for m in got["results"]] == [(m["topic"], m["run"]) for m in want]
    for g, w in zip(got["results"], want, strict=True):
        assert_close(
            {k: v for k, v in g.items() if k not in VOLATILE}, {k: v for k, v in w.items() if k not in VOLATILE}
        )


def test_the_schedule_step_is_pure_and_aligned() -> None:
    hour = 3_600_000_000
    s0 = ScheduleState()
    s1, due = step(s0, 5 * hour + 7, hour)
    assert due is None and s1.next_due_us == 6 * hour and s0.next_due_us == -1, "a step returns a new state"
    s2, due = step(s1, 6 * hour, hour)
    assert due == 6 * hour and s2.next_due_us == 7 * hour
    s3, due = step(s2, 9 * hour + 1, hour)  # a clock that jumped three intervals makes one run, not three
    assert due == 7 * hour and s3.next_due_us == 10 * hour
    assert accepted(s3, True) == ScheduleState(1, 10 * hour, True)
    assert step(s3, 9 * hour + 2, hour) == (s3, None)
