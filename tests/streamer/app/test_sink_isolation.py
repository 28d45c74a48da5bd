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
