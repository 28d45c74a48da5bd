"""The Kafka broker the integration tests use: given by SKYATTR_KAFKA_BOOTSTRAP (CI starts one with
ops/kafka/start.sh). Without it the tests skip, unless SKYATTR_REQUIRE_KAFKA=1 makes that a failure."""

from __future__ import annotations

import os

import pytest


def kafka_bootstrap() -> str:
    servers = os.environ.get("SKYATTR_KAFKA_BOOTSTRAP", "").strip()
    if servers:
        return servers
    if os.environ.get("SKYATTR_REQUIRE_KAFKA") == "1":
        pytest.fail("SKYATTR_REQUIRE_KAFKA=1 but SKYATTR_KAFKA_BOOTSTRAP is not set (run ops/kafka/start.sh first)")
    pytest.skip("SKYATTR_KAFKA_BOOTSTRAP not set: no Kafka broker (start one with ops/kafka/start.sh)")
