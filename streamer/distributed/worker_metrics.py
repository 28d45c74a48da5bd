"""The worker's endpoint (``skyattr worker --metrics-port``): what an operator of a Kafka streaming service watches.

Read at scrape time from the faust app and the worker's own counts:

* ``skyattr_worker_assigned_partitions``: partitions of the events topic this worker folds now.
* ``skyattr_worker_consumer_lag{partition}``: records of that partition not folded yet (the partition's high
  watermark minus the next offset to fold), once the worker has folded a record of it since it was assigned.
* ``skyattr_worker_in_recovery``: 1 while the worker reads the state table back from its changelog (after a
  rebalance, or a start on an empty disk); ``skyattr_worker_recovery_remaining{partition}``: changelog records
  still to read for that partition.
* ``skyattr_worker_events_total``, ``skyattr_worker_refused_total``, ``skyattr_worker_shards_total``,
  ``skyattr_worker_shard_bytes_total`` and ``skyattr_worker_shard_publish_seconds``;
  ``skyattr_worker_early_total``: records delivered ahead of their turn and left for the consumer to deliver again
  (see :mod:`streamer.distributed.partition_state`).

``/readyz`` is 503 until the first assignment and while the table recovers, so a rolling update of the worker
StatefulSet waits for each pod to hold its state again before it moves on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streamer.sinks.prometheus import Endpoint

PUBLISH_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30)


class WorkerMetrics(Endpoint):
    """Counters the fold loop feeds, gauges read from the app at scrape time (:meth:`bind`)."""

    def __init__(self, events_topic: str) -> None:
        super().__init__()
        r = self.registry
        self.events_topic = events_topic
        self.events = Counter("skyattr_worker_events", "Records read (folded or refused).", registry=r)
        self.refused = Counter("skyattr_worker_refused", "Records refused (named in the log), skipped.", registry=r)
        self.early = Counter(
            "skyattr_worker_early",
            "Records delivered ahead of their turn (skyattr-seq), not folded: the consumer delivers them again in "
            "order.",
            registry=r,
        )
        self.shards = Counter("skyattr_worker_shards", "Shards published (one per partition and run).", registry=r)
        self.shard_bytes = Counter("skyattr_worker_shard_bytes", "Compressed bytes of shards published.", registry=r)
        self.publish = Histogram(
            "skyattr_worker_shard_publish_seconds",
            "From a tick to the broker's acknowledgement of its shard's last chunk.",
            buckets=PUBLISH_BUCKETS,
            registry=r,
        )
        self._next: dict[int, int] = {}  # partition -> next offset to fold
        self._lock = threading.Lock()
        self._app: Any = None
        self.assigned_once = False
        self.collector = _AppCollector(self)
        r.register(self.collector)
        self.track_kafka(connected=True)  # the worker's broker probe reports from then on (streamer.distributed.worker)

    def bind(self, app: Any) -> None:
        """Read the assignment, watermarks and recovery from ``app`` at scrape time."""
        self._app = app

    def folded(self, partition: int, offset: int) -> None:
        with self._lock:
            self._next[partition] = offset + 1
        self.events.inc()

    def forget(self) -> None:
        """After a revocation: the positions are known again once records of a partition are folded."""
        with self._lock:
            self._next.clear()

    def positions(self) -> dict[int, int]:
        with self._lock:
            return dict(self._next)

    def role_readiness(self) -> tuple[bool, str]:
        app = self._app
        if app is None or not self.assigned_once:
            return False, "waiting for the consumer group to assign partitions"
        recovery = app.tables.recovery
        if recovery.in_recovery:
            return False, f"recovering the state table from its changelog ({_remaining_total(recovery)} records left)"
        return True, ""


def _remaining(recovery: Any) -> dict[int, int]:
    """Changelog records still to read per partition (faust's own bookkeeping; empty when none is recovering)."""
    try:
        return {tp.partition: int(n) for tp, n in recovery.active_remaining().items() if n > 0}
    except RuntimeError:  # the recovery thread changed the dicts while we read them: next scrape
        return {}


def _remaining_total(recovery: Any) -> int:
    return sum(_remaining(recovery).values())


class _AppCollector(Collector):
    """Gauges computed from the faust app when scraped."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Any]:
        """The families, as a collection yields them (empty before the app exists): the registry checks their
        names against every other metric's when the collector is registered."""
        return iter(list(self.collect()))

    def collect(self) -> Iterator[Any]:
        m, app = self.metrics, self.metrics._app
        assigned = GaugeMetricFamily(
            "skyattr_worker_assigned_partitions", "Partitions of the events topic this worker folds."
        )
        lag = GaugeMetricFamily(
            "skyattr_worker_consumer_lag", "Records of a partition not folded yet.", labels=["partition"]
        )
        in_recovery = GaugeMetricFamily("skyattr_worker_in_recovery", "1 while the state table is recovered.")
        remaining = GaugeMetricFamily(
            "skyattr_worker_recovery_remaining", "Changelog records still to read.", labels=["partition"]
        )
        if app is not None:
            tps = [tp for tp in _assigned(app) if tp.topic == m.events_topic]
            assigned.add_metric([], len(tps))
            positions = m.positions()
            for tp in sorted(tps):
                high = _highwater(app, tp)
                if high is not None and tp.partition in positions:
                    lag.add_metric([str(tp.partition)], max(0, high - positions[tp.partition]))
            recovery = app.tables.recovery
            in_recovery.add_metric([], 1 if recovery.in_recovery else 0)
            for partition, n in sorted(_remaining(recovery).items()):
                remaining.add_metric([str(partition)], n)
        yield from (assigned, lag, in_recovery, remaining)


def _assigned(app: Any) -> list[Any]:
    try:
        return list(app.assignor.assigned_actives())
    except RuntimeError:
        return []


def _highwater(app: Any, tp: Any) -> int | None:
    """The partition's high watermark as the consumer last saw it (None before its first fetch)."""
    try:
        high = app.consumer.highwater(tp)
    except Exception:  # no consumer yet, or one being replaced in a rebalance: no sample this time
        return None
    return int(high) if high is not None and high >= 0 else None
