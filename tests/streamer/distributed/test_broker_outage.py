"""Every distributed role rides out its broker: down 30 s while the roles start, and down again 30 s while they run.

The real broker (the scripts' own, stopped and started with ``ops/kafka``). Its topics made, the broker is stopped
for 30 s and an ingest writing the bundled archive at 1,000x its event time, two workers and an attributor are
started: they wait for it (the ingest and the attributor not ready, ``skyattr_kafka_connected`` 0, one log line
each, no exit) and start when it is back. Once results flow the broker is stopped again for 30 s, mid-stream: the
ingest, the attributor and a worker turn unready and say so once, then come back by themselves. The results are
still the single process's (the golden file), each run once, and the ingest wrote every event once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from streamer.sinks.kafka_topics import ensure_topics
from tests.broker import SCRIPTS_BOOTSTRAP, ScriptBroker, kafka_bootstrap
from tests.faults import line_count, reach, wait_until
from tests.net import free_port, http_get
from tests.streamer.distributed.test_distributed_mode import Deployment, _assert_golden, _metrics

OUTAGE_S = 30.0
NOT_READY = (503, "not ready: Kafka unreachable: waiting for the broker\n")


def _ready(port: int) -> tuple[int, str]:
    try:
        return http_get(f"http://127.0.0.1:{port}/readyz")
    except OSError:
        return (0, "not listening")


def test_every_role_waits_for_the_broker_at_start_and_rides_out_an_outage(tmp_path: Path) -> None:
    if kafka_bootstrap() != SCRIPTS_BOOTSTRAP:
        pytest.skip(f"stops the scripts' own broker ({SCRIPTS_BOOTSTRAP}), not {kafka_bootstrap()}")
    broker = ScriptBroker()
    dep = Deployment(SCRIPTS_BOOTSTRAP, tmp_path, partitions=2)
    asyncio.run(ensure_topics(SCRIPTS_BOOTSTRAP, {dep.events: (2, False), dep.cursors: (1, True)}))
    ports = {"ingest": free_port(), "attributor": free_port()}
    worker_port = free_port()
    out = tmp_path / "results.jsonl"
    try:
        broker.stop()
        down = time.monotonic()
        ingest = dep.ingest(wait=False, batch_items=10, speed=1000, extra=("--metrics-port", str(ports["ingest"])))
        attributor = dep.attributor(out, "--until-final", "--metrics-port", str(ports["attributor"]))
        workers = [dep.worker(1, metrics_port=worker_port), dep.worker(2)]
        for role, port in ports.items():
            wait_until(lambda port=port: _ready(port)[0] == 503, 60, f"the {role}'s endpoint")
        time.sleep(max(10.0, OUTAGE_S - (time.monotonic() - down)))  # the broker down 30 s while they start
        for port in ports.values():
            assert _ready(port) == NOT_READY
            assert _metrics(port)["skyattr_kafka_connected"] == 0
        assert all(p.poll() is None for p in (ingest, attributor, *workers)), "a role exited while the broker was down"
        broker.ensure_running()
        for role, port in ports.items():
            wait_until(lambda port=port: _ready(port)[0] == 200, 120, f"the {role} ready once the broker is back")
        reach(ingest, lambda: line_count(out) >= 6, 240, "six results")
        assert ingest.poll() is None, "the second outage is mid-stream"
        broker.stop()
        down = time.monotonic()
        for role, port in {**ports, "worker": worker_port}.items():
            wait_until(lambda port=port: _ready(port) == NOT_READY, 20, f"the {role} unready in the outage")
            assert _metrics(port)["skyattr_kafka_connected"] == 0
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
        assert all(p.poll() is None for p in (ingest, attributor, *workers)), "a role exited during the outage"
        broker.ensure_running()
        for role, port in {**ports, "worker": worker_port}.items():
            wait_until(lambda port=port: _ready(port)[0] == 200, 120, f"the {role} ready after the outage")
            assert _metrics(port)["skyattr_kafka_connected"] == 1
        assert ingest.wait(400) == 0, dep.log("ingest")
        dep.finish(attributor, 400, workers)
        _assert_golden(out)
        for role in ("ingest", "attributor"):
            log = (tmp_path / f"{role}.log").read_text()
            assert log.count("not reachable yet") == 1 and log.count("lost (") == 1, log
            assert log.count("reached after") == 1 and log.count("is back after") == 1, log
            client_lines = [line for line in log.splitlines() if "aiokafka" in line or "Unable" in line]
            assert len(client_lines) < 40, "the client's lines are folded: one per kind, not one per attempt"
    finally:
        broker.ensure_running()
        dep.close()
