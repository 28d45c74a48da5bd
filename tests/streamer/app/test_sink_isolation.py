"""A sink that raises is isolated: counted by name, logged, and every other sink still gets the result."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamer.app.daemon import Daemon
from streamer.app.settings import load_settings
from streamer.core.results import Result, result_from_message
from tests.compare import VOLATILE, assert_close

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "default_replay.jsonl"


class Boom:
    name = "boom"

    def publish(self, result: Result) -> None:
        raise RuntimeError("this sink is broken")

    async def start(self) -> None:
        return None

    async def close(self, timeout: float) -> int:
        return 0


def test_a_failing_sink_is_counted_and_the_others_still_get_every_result(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    daemon = Daemon(load_settings(flags={"out": out}, env={}), tables=False)
    daemon.sinks.insert(0, Boom())  # first, so a sink after it that still gets the result proves the isolation
    lines = GOLDEN.read_text().splitlines()[:5]
    for line in lines:
        message = json.loads(line)
        daemon.deliver(result_from_message(message.pop("topic"), message))
    asyncio.run(daemon.stop())
    assert daemon.sink_errors == {"boom": len(lines)}
    assert out.read_text().splitlines() == lines, "the JSONL sink after the broken one wrote every result"
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(daemon.metrics.registry).decode())}
    counted = {s.labels["sink"]: s.value for s in families["skyattr_sink_errors"].samples if s.name.endswith("_total")}
    assert counted == {"boom": len(lines)}


class Collect:
    """A sink of one's own, written to the Sink protocol and nothing else."""

    name = "collect"

    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []
        self.calls: list[str] = []

    def publish(self, result: Result) -> None:
        self.messages.append({"topic": result.topic, **result.to_message()})

    async def start(self) -> None:
        self.calls.append("start")

    async def close(self, timeout: float) -> int:
        self.calls.append("close")
        return 0


def test_a_sink_of_ones_own_gets_every_result_of_the_bundled_replay_once() -> None:
    """To add a sink: write the protocol's four members and hand it to the pipeline (`sinks=`); nothing else
    changes. It is started, fed every result once, in order (the golden file's), and closed."""
    from streamer.app.daemon import replay_pipeline
    from streamer.testing.synth import default_archive

    mine = Collect()
    settings = load_settings(flags={"interval": 3600.0}, env={})
    asyncio.run(replay_pipeline(settings, default_archive(), tables=False, sinks=[mine]))
    golden = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    # every result, once, in order, as the golden file has it: its figures to float32's rounding across machines
    # and JAX versions, its run time and device left out
    assert [(m["topic"], m.get("run")) for m in mine.messages] == [(m["topic"], m.get("run")) for m in golden]
    for got, want in zip(mine.messages, golden, strict=True):
        assert_close(
            {k: v for k, v in got.items() if k not in VOLATILE}, {k: v for k, v in want.items() if k not in VOLATILE}
        )
    assert mine.calls == ["start", "close"]
