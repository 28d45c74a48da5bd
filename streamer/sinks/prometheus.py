"""Prometheus metrics and the HTTP endpoints ``/metrics``, ``/healthz`` and ``/readyz``.

Each :class:`Metrics` owns its own registry (several daemons or tests can live in one process). The HTTP server is
the standard library's threading WSGI server around prometheus-client's exposition app, so a slow scrape never blocks
ingest; it is bounded (at most ``MAX_CONNECTIONS`` at once, each with ``CONNECTION_TIMEOUT_S`` for its whole
request and reply), so idle or slow clients cannot pile up threads. ``/healthz`` answers 200 while the process is
alive; ``/readyz`` answers 200 once the state is restored and the source is connected (or replaying), else 503
with the reason.
"""

from __future__ import annotations

import io
import logging
import math
import socket
import socketserver
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector

from kernels.bias import CRITERIA
from streamer.core.dispatch import Dispatcher
from streamer.core.results import GAME_NAMES, TIER_NAMES, Result, RunResult
from streamer.core.source import Source, SourceStats

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
MAX_CONNECTIONS = 32  # served at once; one more is closed at once (a scrape needs one, a probe one)
CONNECTION_TIMEOUT_S = 10.0  # for a connection's whole request and reply (Prometheus' default scrape timeout)
log = logging.getLogger(__name__)


class Endpoint:
    """A registry served over HTTP (:meth:`serve`): ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (what
    :meth:`readiness` says). The single process's :class:`Metrics` and each distributed role's metrics are one."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ready = False
        self.not_ready_reason = "starting"
        self.port: int | None = None
        self._server: _BoundedWSGIServer | None = None
        self._exposition = make_wsgi_app(self.registry)
        self.kafka_connected: bool | None = None  # None: no broker to track (see track_kafka)
        self._kafka_waiting = "connecting to Kafka"

    def track_kafka(self, connected: bool = False) -> None:
        """A distributed role's readiness follows its broker too: ``skyattr_kafka_connected`` and, while it is
        not connected, ``/readyz`` 503. ``connected``: what to assume before the first report to :meth:`on_kafka`
        (a :class:`streamer.distributed.ride_out.BrokerLink` calls it)."""
        self.kafka_connected = connected
        Gauge(
            "skyattr_kafka_connected",
            "1 while the role has its Kafka broker (0 before and during an outage).",
            registry=self.registry,
        ).set_function(lambda: 1 if self.kafka_connected else 0)

    def on_kafka(self, connected: bool) -> None:
        self.kafka_connected = connected
        if not connected:
            self._kafka_waiting = "Kafka unreachable: waiting for the broker"

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): ``/readyz`` answers 200 when ready, else 503 with the reason. A role that tracks its
        broker is not ready without it; otherwise :meth:`role_readiness` says."""
        if self.kafka_connected is False:
            return False, self._kafka_waiting
        return self.role_readiness()

    def role_readiness(self) -> tuple[bool, str]:
        return self.ready, self.not_ready_reason

    # HTTP ----------------------------------------------------------------------------------------------------
    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """The WSGI application: ``/metrics`` is prometheus-client's own exposition app (text or OpenMetrics by
        the ``Accept`` header, gzip when asked, ``name[]`` to select families, ``HEAD``/``OPTIONS``);
        ``/healthz`` and ``/readyz`` are answered here."""
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._exposition(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            status, body = "200 OK", b"ok\n"
        elif path == "/readyz":
            ready, reason = self.readiness()
            status, body = (
                ("200 OK", b"ready\n") if ready else ("503 Service Unavailable", f"not ready: {reason}\n".encode())
            )
        else:
            status, body = "404 Not Found", b"not found\n"
        data = body if isinstance(body, bytes) else body.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
        return [data]

    def serve(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = CONNECTION_TIMEOUT_S,
    ) -> int:
        """Start the endpoints in a daemon thread; returns the bound port (0 picks a free one).

        ``host`` is loopback unless told otherwise (``--metrics-host``): the endpoints carry no authentication. A
        bind failure is an ``OSError`` naming the address."""

        class Handler(_QuietHandler):
            deadline_s = timeout

        Handler.timeout = timeout  # socket timeout of each read and write, under the deadline above
        server_class = _BoundedWSGIServer6 if ":" in host else _BoundedWSGIServer
        try:
            self._server = server_class((host, port), Handler, max_connections)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}") from None
        self._server.set_app(self.app)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name="skyattr-metrics", daemon=True).start()
        return self.port

    def stop_serving(self) -> None:
        """Stop accepting and close the listening socket; connections still open end at their deadline."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Metrics(Endpoint):
    """All of skyattr's metrics (names in the README's metrics table)."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.active_agents = Gauge("skyattr_active_agents", "Agents with activity in the window.", registry=r)
        self.duration = Histogram(
            "skyattr_attribution_duration_seconds",
            "Wall time of one attribution run (full + panel).",
            ["indicator"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.runs = Counter("skyattr_attribution_runs", "Attribution runs, by outcome.", ["outcome"], registry=r)
        self.last_success = Gauge(
            "skyattr_attribution_last_success_timestamp_seconds", "Wall time of the last successful run.", registry=r
        )
        self.tier_share = Gauge(
            "skyattr_tier_share", "Share of the attribution per tier.", ["indicator", "tier", "scale"], registry=r
        )
        game = ["indicator", "game"]
        self.tvd = Gauge(
            "skyattr_scale_bias_tvd", "Tier-share TVD, full vs panel, per game (decides nothing).", game, registry=r
        )
        self.rstar = Gauge(
            "skyattr_scale_bias_residual", "Residual r* no rescaling of the panel study removes.", game, registry=r
        )
        self.rescale = Gauge("skyattr_scale_bias_rescale", "Best rescaling c* of the panel study.", game, registry=r)
        self.panel_share = Gauge(
            "skyattr_scale_bias_panel_share", "Panel's share of the full attribution.", ["indicator"], registry=r
        )
        self.alert = Gauge("skyattr_scale_bias_alert", "1 while the scale-bias alert fires.", ["indicator"], registry=r)
        self.criterion = Gauge(
            "skyattr_scale_bias_criterion",
            "1 where an alert criterion (residual, coverage) is past its threshold in the last run.",
            ["indicator", "criterion"],
            registry=r,
        )
        self.completeness = Gauge(
            "skyattr_completeness_residual", "Efficiency residual of the path integral.", ["indicator"], registry=r
        )
        self.error_estimate = Gauge(
            "skyattr_attribution_error_estimate",
            "Estimated relative L2 quadrature error of phi (nodes vs twice the nodes).",
            ["indicator"],
            registry=r,
        )
        self.value = Gauge("skyattr_indicator_value", "Macro indicator v(x) now.", ["indicator"], registry=r)
        self.stratified_size = Gauge(
            "skyattr_stratified_panel_size",
            "Accounts in the smallest stratified panel whose weighted tier shares match the full scale within epsilon.",
            ["indicator"],
            registry=r,
        )
        self.stratified_accounts = Gauge(
            "skyattr_stratified_panel_accounts",
            "Accounts the stratified panel draws from each tier.",
            ["indicator", "tier"],
            registry=r,
        )
        self.stratified_weight = Gauge(
            "skyattr_stratified_panel_weight",
            "Sampling weight of each tier's accounts in the stratified panel (accounts of the tier each stands for).",
            ["indicator", "tier"],
            registry=r,
        )
        self.results_repeated = Counter(
            "skyattr_results_repeated",
            "Results computed again after a restart whose identity was already delivered (not sent again).",
            registry=r,
        )
        self.checkpoints = Counter("skyattr_checkpoints", "Checkpoints written, by outcome.", ["outcome"], registry=r)
        self.sink_errors = Counter(
            "skyattr_sink_errors",
            "Results a sink failed on (logged; the other sinks still got them).",
            ["sink"],
            registry=r,
        )
        self.stream = StreamCollector()
        r.register(self.stream)

    def bind(self, stats: SourceStats, dispatcher: Dispatcher, source: Source | None = None) -> None:
        """Export this stream's figures at scrape time: its stats, the state behind the dispatcher, the source."""
        self.stream.stats, self.stream.dispatcher, self.stream.source = stats, dispatcher, source

    name = "prometheus"

    def publish(self, result: Result) -> None:
        """The Sink protocol: a run's figures become the result gauges (alert transitions show in them too)."""
        if isinstance(result, RunResult):
            self.record_run(result)
            self.runs.labels("ok" if result.attributed else result.outcome).inc()
            self.last_success.set(time.time())

    async def start(self) -> None:
        return None

    async def close(self, timeout: float) -> int:
        """The Sink protocol: nothing is buffered, nothing left undelivered (the HTTP server stops with
        :meth:`stop_serving`)."""
        return 0

    def record_run(self, result: RunResult) -> None:
        """Update the result gauges from a :class:`~streamer.core.results.RunResult`."""
        ind = result.indicator
        # a figure that this run does not have (nothing to attribute, a panel that sees nothing) is NaN, not the
        # last run's value: a dashboard shows a gap, and no rule compares it with a threshold
        nan = math.nan
        sb = result.scale_bias
        tiers = result.tiers
        scales = [("full", None if tiers is None else tiers.full)]
        scales += [(name, None if tiers is None else tiers.panel(name)) for name in GAME_NAMES]
        for scale, shares in scales:
            values = shares.model_dump() if shares is not None else dict.fromkeys(TIER_NAMES, nan)
            for tier, share in values.items():
                self.tier_share.labels(ind, tier, scale).set(share)
        for name in GAME_NAMES:
            g = None if sb is None else sb.game(name)
            self.tvd.labels(ind, name).set(nan if g is None or g.tvd is None else g.tvd)
            self.rstar.labels(ind, name).set(nan if g is None else g.residual)
            self.rescale.labels(ind, name).set(nan if g is None else g.rescale)
        self.panel_share.labels(ind).set(nan if sb is None or sb.panel_share is None else sb.panel_share)
        self.alert.labels(ind).set(1 if result.alert.active else 0)
        for criterion in CRITERIA:
            self.criterion.labels(ind, criterion).set(nan if sb is None else float(criterion in result.alert.criteria))
        self.completeness.labels(ind).set(result.residual)
        self.error_estimate.labels(ind).set(nan if result.error_estimate is None else result.error_estimate)
        self.value.labels(ind).set(result.value)
        sp = result.stratified_panel
        self.stratified_size.labels(ind).set(nan if sp is None or sp.size is None else sp.size)
        for tier in TIER_NAMES:
            accounts = nan if sp is None or sp.allocation is None else getattr(sp.allocation, tier)
            weight = nan if sp is None or sp.weights is None else getattr(sp.weights, tier)
            self.stratified_accounts.labels(ind, tier).set(accounts)
            self.stratified_weight.labels(ind, tier).set(weight)
        self.active_agents.set(result.active_agents)
        self.duration.labels(ind).observe(result.runtime_s)


class _DeadlineReader(io.RawIOBase):
    """The read side of a socket under one deadline: each read waits at most for what is left of it."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("connection deadline passed")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's handler with one deadline for the whole request (a per-read timeout alone lets a client that
    sends a byte every few seconds hold its thread, and its slot, forever), and no log line per scrape."""

    deadline_s = CONNECTION_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + self.deadline_s))

    def log_message(self, *args: Any) -> None:  # scrapes (and timed-out idlers) are not worth a log line
        return


class _BoundedWSGIServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most ``max_connections`` of them: one more is closed as soon as it is accepted,
    so a thousand idle clients cost a thousand short-lived sockets, not a thousand threads."""

    daemon_threads = True
    block_on_close = False  # close() does not wait for clients still within their deadline
    request_queue_size = 1024  # listen backlog: a burst of connections waits here instead of being refused

    def __init__(self, address: tuple[str, int], handler: type[WSGIRequestHandler], max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN (a DNS query that can stall start-up); nothing needs it
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: its slot is free again
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets or times out is routine; socketserver would print a traceback for it."""
        log.debug("metrics connection from %s ended with an error", client_address, exc_info=True)


class _BoundedWSGIServer6(_BoundedWSGIServer):
    address_family = socket.AF_INET6


class StreamCollector(Collector):
    """The ingest figures, read from the stream's objects at scrape time: the one
    :class:`~streamer.sources.base.SourceStats` the source and the dispatcher count into, the state behind the
    dispatcher, the source's own flags. Nothing is copied into counters as ingest runs, so nothing can drift or be
    counted twice; a scrape before the stream is bound shows the families empty."""

    def __init__(self) -> None:
        self.stats: SourceStats | None = None
        self.dispatcher: Dispatcher | None = None
        self.source: Source | None = None
        self.kafka: Any = None  # the Kafka sink's stats (streamer.sinks.kafka_outbox.KafkaStats), when it has one

    def describe(self) -> Any:
        """The families, as a collection yields them (empty before the stream is bound): the registry checks
        their names against every other metric's when the collector is registered."""
        return list(self.collect())

    def collect(self) -> Any:
        st, disp, src = self.stats, self.dispatcher, self.source
        labelled = (
            ("skyattr_ingest_events", "Normalized events ingested, by kind.", "kind", "events"),
            ("skyattr_ingest_frames", "Frames or archive items, by type.", "type", "frames"),
            ("skyattr_decode_errors", "Items that could not be decoded, by reason.", "reason", "errors"),
            ("skyattr_skipped_ops", "Repo operations skipped, by reason.", "reason", "skipped"),
        )
        for name, doc, label, field in labelled:
            family = CounterMetricFamily(name, doc, labels=[label])
            if st is not None:
                for key, value in dict(getattr(st, field)).items():
                    family.add_metric([key], value)
            yield family
        plain = (
            ("skyattr_duplicate_frames", "Frames already applied, sent again: ignored.", "duplicates"),
            ("skyattr_seq_gaps", "Relay seq jumps of more than one (the relay's seqs need not be dense).", "gaps"),
            ("skyattr_seq_gap_frames", "Seqs jumped over by those jumps (the sum of jump - 1).", "gap_frames"),
            ("skyattr_seq_out_of_order", "Frames below the cursor not seen before: late, kept.", "out_of_order"),
            ("skyattr_seq_resets", "Relay sequence restarts followed (FutureCursor ones included).", "resets"),
            ("skyattr_source_reconnects", "Reconnections to the relay.", "reconnects"),
        )
        for name, doc, field in plain:
            yield CounterMetricFamily(name, doc, value=getattr(st, field) if st is not None else 0)
        anomalous = bool(getattr(src, "anomalous", False)) if src is not None else False
        yield GaugeMetricFamily(
            "skyattr_source_seq_anomaly",
            "1 for a minute after a relay sequence reset or an out-of-order frame, else 0.",
            value=1 if anomalous else 0,
        )
        yield GaugeMetricFamily(
            "skyattr_source_connected",
            "1 while the relay websocket is open (run; 0 in replay).",
            value=1 if st is not None and src is not None and st.connected else 0,
        )
        yield GaugeMetricFamily(
            "skyattr_source_cursor_seq", "Last relay seq applied to the state.", value=disp.cursor if disp else 0
        )
        state = disp.state if disp is not None else None
        last = state.last_time_us if state is not None else 0
        lag = GaugeMetricFamily("skyattr_event_lag_seconds", "Wall clock minus the event time of the newest event.")
        newest = GaugeMetricFamily("skyattr_event_time_seconds", "Event time of the newest event (Unix).")
        lag.add_metric([], time.time() - last / 1e6 if last else 0.0)
        newest.add_metric([], last / 1e6)
        yield lag
        yield newest
        yield GaugeMetricFamily(
            "skyattr_agents", "Agents interned in the state.", value=len(state.dids) if state is not None else 0
        )
        edges = sum(len(b.att) for b in list(state.buckets.values())) if state is not None else 0
        yield GaugeMetricFamily("skyattr_edges", "Attention edges in the rolling window.", value=edges)
        deletes = CounterMetricFamily(
            "skyattr_deletes",
            "Record deletes, by outcome: applied (what the create added taken back) or unmatched (the record is not "
            "in the window's index: created before it, beyond the record budget, or adding nothing).",
            labels=["outcome"],
        )
        for outcome in ("applied", "unmatched"):
            deletes.add_metric([outcome], state.counters[f"delete_{outcome}"] if state is not None else 0)
        yield deletes
        yield GaugeMetricFamily(
            "skyattr_record_index",
            "Records of the window a delete can take back (17 bytes each; at most --record-budget).",
            value=state.records_indexed if state is not None else 0,
        )
        kafka = self.kafka.snapshot() if self.kafka is not None else None
        messages = CounterMetricFamily(
            "skyattr_kafka_messages", "Kafka messages by topic and outcome.", labels=["topic", "outcome"]
        )
        for (topic, outcome), n in sorted(kafka.messages.items()) if kafka is not None else ():
            messages.add_metric([topic, outcome], n)
        yield messages
        yield GaugeMetricFamily(
            "skyattr_kafka_buffered", "Results waiting for the broker.", value=kafka.buffered if kafka else 0
        )
