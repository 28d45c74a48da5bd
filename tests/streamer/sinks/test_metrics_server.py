"""The /metrics server: loopback unless told otherwise, a bounded number of threads, and a deadline per connection.

A thousand idle TCP connections must not become a thousand threads, and once they are dropped a scrape answers.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from streamer.app.settings import ConfigError, load_settings
from streamer.sinks.prometheus import MAX_CONNECTIONS, Metrics
from tests.net import http_get

ROOT = Path(__file__).resolve().parents[3]
IDLE = 1000


@contextlib.contextmanager
def _open_files(needed: int) -> Iterator[None]:
    """Raise the soft limit on open files for the test (both ends of each connection live in this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(predicate())  # type: ignore[operator]


def test_a_thousand_idle_connections_keep_threads_bounded_and_scrapes_answer_after() -> None:
    metrics = Metrics()
    before = threading.active_count()
    port = metrics.serve(0, "127.0.0.1", timeout=2.0)
    serving = threading.active_count()
    assert serving == before + 1, "one thread accepts"
    idle: list[socket.socket] = []
    with _open_files(2 * IDLE + 256):
        try:
            for _ in range(IDLE):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(0.3)
            flooded = threading.active_count()
            # a new client while every slot is held by an idler: closed at once, not queued behind them
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                with contextlib.suppress(ConnectionResetError):
                    assert extra.recv(100) == b""
            assert time.monotonic() - started < 1.0
            # the idlers hit their deadline and are dropped; a scrape answers again
            assert _wait_for(lambda: threading.active_count() <= serving, 10.0), threading.active_count()
            dropped = threading.active_count()
            status, body = http_get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200 and "skyattr_ingest_events" in body
            print(
                f"threads: {before} before serve, {serving} serving, {flooded} with {IDLE} idle connections open, "
                f"{dropped} after they timed out"
            )
            assert flooded <= serving + MAX_CONNECTIONS, flooded
        finally:
            for s in idle:
                s.close()
            started = time.monotonic()
            metrics.stop_serving()
            assert time.monotonic() - started < 2.0, "close does not wait for clients"


def test_a_slow_client_is_cut_at_the_deadline_not_at_each_read() -> None:
    metrics = Metrics()
    port = metrics.serve(0, "127.0.0.1", timeout=1.0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            started = time.monotonic()
            with contextlib.suppress(OSError):  # reset or broken pipe once the server has closed it
                for _ in range(40):  # a byte every 0.2 s: each read is quick, the request never ends
                    slow.sendall(b"G")
                    time.sleep(0.2)
                assert slow.recv(100) == b""
            assert time.monotonic() - started < 3.0
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        metrics.stop_serving()


def test_loopback_by_default_and_bind_errors_name_the_address() -> None:
    metrics = Metrics()
    port = metrics.serve(0)
    try:
        assert metrics._server is not None and metrics._server.server_address[0] == "127.0.0.1"
        taken = Metrics()
        with pytest.raises(OSError, match=f"cannot serve /metrics on 127.0.0.1:{port}: "):
            taken.serve(port, "127.0.0.1")
    finally:
        metrics.stop_serving()


def test_ipv6_address() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    metrics = Metrics()
    try:
        port = metrics.serve(0, "::1")
    except OSError as exc:
        pytest.skip(f"cannot bind ::1 here: {exc}")
    try:
        assert http_get(f"http://[::1]:{port}/healthz")[0] == 200
    finally:
        metrics.stop_serving()


def test_metrics_host_setting() -> None:
    assert load_settings(env={}).metrics_host == "127.0.0.1"
    assert load_settings(env={"SKYATTR_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"
    assert load_settings(flags={"metrics_host": "::"}, env={}).metrics_host == "::"
    assert load_settings(flags={"metrics_host": "metrics.internal"}, env={}).metrics_host == "metrics.internal"
    with pytest.raises(ConfigError, match=r"metrics_host: must be an IP address or a host name, got '0\.0\.0\.0 '"):
        load_settings(env={"SKYATTR_METRICS_HOST": "0.0.0.0 "})


def test_the_image_and_the_chart_bind_all_interfaces() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "SKYATTR_METRICS_HOST=0.0.0.0" in dockerfile
    values = yaml.safe_load((ROOT / "helm" / "skyattr" / "values.yaml").read_text())
    assert values["config"]["metrics_host"] == "0.0.0.0"


def test_a_metric_named_like_one_the_stream_collector_yields_is_refused_at_registration() -> None:
    """The stream's families are computed at scrape time; the collector still describes them, so a metric added
    later under one of their names fails at once instead of exporting two series of one name."""
    from prometheus_client import Gauge

    m = Metrics()
    with pytest.raises(ValueError, match="skyattr_ingest_events"):
        Gauge("skyattr_ingest_events", "a second metric of that name", registry=m.registry)


def test_a_worker_metric_named_like_one_its_app_collector_yields_is_refused() -> None:
    from prometheus_client import Gauge

    from streamer.distributed.worker_metrics import WorkerMetrics

    m = WorkerMetrics()
    with pytest.raises(ValueError, match="skyattr_worker_consumer_lag"):
        Gauge("skyattr_worker_consumer_lag", "a second metric of that name", ["partition"], registry=m.registry)


def test_metrics_negotiates_openmetrics_gzip_and_a_family_filter_as_prometheus_asks() -> None:
    """Prometheus asks for OpenMetrics (exemplars, ``# EOF``) and gzip; a hand-written text-only reply would pass
    every other test here and fail this one. Parsed back by prometheus-client's own OpenMetrics parser."""
    import gzip
    import urllib.request

    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    metrics = Metrics()
    metrics.active_agents.set(7)
    port = metrics.serve(0)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics?name[]=skyattr_active_agents",
            headers={"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
            assert reply.headers["Content-Encoding"] == "gzip"
            text = gzip.decompress(reply.read()).decode()
        assert text.endswith("# EOF\n")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert list(families) == ["skyattr_active_agents"]  # the filter: one family, not the registry
        assert families["skyattr_active_agents"].samples[0].value == 7
        status, plain = http_get(f"http://127.0.0.1:{port}/metrics")  # no Accept: the classic text, every family
        assert status == 200 and "# EOF" not in plain and "skyattr_attribution_runs" in plain
    finally:
        metrics.stop_serving()
