"""The worker's endpoint (``skyattr worker --metrics-port``): what an operator of a Kafka streaming service watches.

Read at scrape time from the worker (:class:`~streamer.distributed.worker.Worker`) and its own counts:

* ``skyattr_worker_assigned_partitions``: partitions of the events topic this worker folds now.
* ``skyattr_worker_consumer_lag{partition}``: records of that partition not folded yet (the partition's high
  watermark minus the next offset to fold), once the worker has folded a record of it since it was assigned.
* ``skyattr_worker_in_recovery``: 1 while the worker reads a partition's state back from its changelog (after a
  rebalance, or a start); ``skyattr_worker_recovery_remaining{partition}``: changelog records still to read for
  that partition.
* ``skyattr_worker_events_total``, ``skyattr_worker_refused_total``, ``skyattr_worker_shards_total``,
  ``skyattr_worker_shard_bytes_total`` and ``skyattr_worker_shard_publish_seconds``;
  ``skyattr_worker_early_total``: records delivered ahead of their turn and left for the consumer to deliver again
  (see :mod:`streamer.distributed.partition_state`).

``/readyz`` is 503 until the first assignment and while a partition's state is read back, so a rolling update of
the worker StatefulSet waits for each pod to hold its state again before it moves on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streamer.sinks.prometheus import Endpoint

PUBLISH_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30)


class WorkerView(Protocol):
    """What the gauges read from the worker when scraped."""

    assigned_once: bool
    recovering: dict[int, int]  # partition -> changelog records still to read

    def held_partitions(self) -> list[int]: ...

    def positions(self) -> dict[int, int]: ...  # partition -> next offset to fold

    def highwater(self, partition: int) -> int | None: ...


class WorkerMetrics(Endpoint):
    """Counters the fold loop feeds, gauges read from the worker at scrape time (:meth:`bind`)."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
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
        self._worker: WorkerView | None = None
        self.collector = _AppCollector(self)
        r.register(self.collector)
        self.track_kafka(connected=True)  # the worker's broker probe reports from then on (streamer.distributed.worker)

    def bind(self, worker: WorkerView) -> None:
        """Read the assignment, watermarks and recovery from ``worker`` at scrape time."""
        self._worker = worker

    def folded(self) -> None:
        self.events.inc()

    def role_readiness(self) -> tuple[bool, str]:
        worker = self._worker
        if worker is None or not worker.assigned_once:
            return False, "waiting for the consumer group to assign partitions"
        recovering = dict(worker.recovering)
        if recovering:
            return False, f"reading the state of partition(s) {', '.join(map(str, sorted(recovering)))} back"
        return True, ""


class _AppCollector(Collector):
    """Gauges computed from the worker when scraped."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Any]:
        """The families, as a collection yields them (empty before the app exists): the registry checks their
        names against every other metric's when the collector is registered."""
        return iter(list(self.collect()))

    def collect(self) -> Iterator[Any]:
        worker = self.metrics._worker
        assigned = GaugeMetricFamily(
            "skyattr_worker_assigned_partitions", "Partitions of the events topic this worker folds."
        )
        lag = GaugeMetricFamily(
            "skyattr_worker_consumer_lag", "Records of a partition not folded yet.", labels=["partition"]
        )
        in_recovery = GaugeMetricFamily("skyattr_worker_in_recovery", "1 while a partition's state is read back.")
        remaining = GaugeMetricFamily(
            "skyattr_worker_recovery_remaining", "Changelog records still to read.", labels=["partition"]
        )
        if worker is not None:
            held = worker.held_partitions()
            assigned.add_metric([], len(held))
            positions = worker.positions()
            for partition in held:
                high = worker.highwater(partition)
                if high is not None and partition in positions:
                    lag.add_metric([str(partition)], max(0, high - positions[partition]))
            recovering = dict(worker.recovering)
            in_recovery.add_metric([], 1 if recovering else 0)
            for partition, n in sorted(recovering.items()):
                remaining.add_metric([str(partition)], n)
        yield from (assigned, lag, in_recovery, remaining)
