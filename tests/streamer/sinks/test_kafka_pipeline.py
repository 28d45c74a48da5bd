"""The replay pipeline against a real Kafka broker: every result arrives, equal to the JSON Lines output."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

from streamer.app.daemon import replay_pipeline
from streamer.app.settings import load_settings
from streamer.testing.synth import default_archive
from tests.broker import kafka_bootstrap

BOOTSTRAP = os.environ.get("SKYATTR_KAFKA_BOOTSTRAP", "")


async def _consume(topic: str, count: int, timeout: float = 30.0) -> list[tuple[bytes, dict]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=BOOTSTRAP,
        auto_offset_reset="earliest",
        group_id=None,
        isolation_level="read_committed",
    )
    await consumer.start()
    out: list[tuple[bytes, dict]] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < count and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend((r.key, json.loads(r.value)) for r in records)
        # and nothing more arrives (no duplicates)
        extra = await consumer.getmany(timeout_ms=1000)
        out.extend((r.key, json.loads(r.value)) for records in extra.values() for r in records)
    finally:
        await consumer.stop()
    return out


def test_replay_publishes_every_result_to_kafka(tmp_path: Path) -> None:
    kafka_bootstrap()  # skip (or fail, when required) without a broker
    tag = uuid.uuid4().hex[:8]
    tiers_topic, alerts_topic = f"test.tiers.{tag}", f"test.alerts.{tag}"
    out = tmp_path / "results.jsonl"
    settings = load_settings(
        flags={
            "interval": 3600,
            "out": out,
            "kafka_bootstrap": BOOTSTRAP,
            "kafka_topic_tiers": tiers_topic,
            "kafka_topic_alerts": alerts_topic,
            "panel_size": 10,  # a panel of 10 holds under half of the attribution from run 4: the alert fires
        },
        env={},
    )
    _, pipe = asyncio.run(replay_pipeline(settings, default_archive(), tables=False))
    assert pipe.kafka.buffered == 0 and pipe.kafka.dropped == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    want_tiers = [{k: v for k, v in m.items() if k != "topic"} for m in lines if m["topic"] == "tiers"]
    want_alerts = [{k: v for k, v in m.items() if k != "topic"} for m in lines if m["topic"] == "alerts"]
    got_tiers = asyncio.run(_consume(tiers_topic, len(want_tiers)))
    got_alerts = asyncio.run(_consume(alerts_topic, len(want_alerts)))
    assert [m for _, m in got_tiers] == want_tiers, "same messages, same order, none duplicated"
    assert [m for _, m in got_alerts] == want_alerts
    assert want_alerts and want_alerts[0]["state"] == "firing"
    assert {k for k, _ in got_tiers} == {b"cascade"}
