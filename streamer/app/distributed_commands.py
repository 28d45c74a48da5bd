"""``skyattr worker`` and ``skyattr attributor``: the distributed mode's two long-running roles.

``ingest --to-kafka`` writes and sequences the events; workers (one consumer group, as many as there are
partitions at most) fold them into per-partition state and publish a shard at each due time; one attributor merges
the shards and publishes the results. See :mod:`streamer.distributed.worker` and
:mod:`streamer.distributed.attributor`, and the README's "Distributed mode" section.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from streamer.app import options as opt
from streamer.app.flags import ATTRIBUTION_FIELDS, load_or_exit, with_settings_options
from streamer.app.kafka_errors import exit_for, run_kafka_role
from streamer.core.results import Result, RunResult
from streamer.distributed.attributor import AttributorStats
from streamer.distributed.ride_out import BrokerLink, BrokerUnreachable, connect_timeout, fold_client_logs, ride_out

if TYPE_CHECKING:
    from streamer.app.settings import Settings
    from streamer.sinks.prometheus import Metrics

KAFKA_SETTINGS = {
    "kafka_bootstrap",
    "kafka_connect_timeout",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "log_level",
}


def _bootstrap_or_exit(settings: Settings, command: str) -> str:
    if not settings.kafka_bootstrap:
        typer.echo(f"error: {command} needs --kafka-bootstrap (or SKYATTR_KAFKA_BOOTSTRAP)", err=True)
        raise typer.Exit(2)
    return str(settings.kafka_bootstrap)


def _partitions_or_exit(bootstrap: str, topic: str, security: dict[str, Any], timeout_s: float) -> int:
    """The partitions of ``topic``, waiting for a broker that is not up yet (a pod started before it) for at most
    ``timeout_s``; exit 2 with one line when it is never reached, or has no such topic."""
    from streamer.sinks.kafka_topics import partitions_of

    async def listing() -> list[int] | None:
        fold_client_logs()
        link = BrokerLink(bootstrap)
        return await ride_out(lambda _: partitions_of(bootstrap, topic, security), link, connect_timeout_s=timeout_s)

    try:
        parts = asyncio.run(listing()) or []
    except BrokerUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:  # whatever else stops the listing is named in one line
        raise exit_for(exc, bootstrap) from exc
    if not parts:
        typer.echo(f"error: no topic {topic} at {bootstrap}: start `skyattr ingest --to-kafka` first", err=True)
        raise typer.Exit(2)
    return len(parts)


@with_settings_options(
    include=KAFKA_SETTINGS | {"metrics_port", "metrics_host"},
    sections={"topics": ["events", "shards"], "worker": None},
)
def worker_command(config: opt.Config = None, **flags: Any) -> None:
    """Fold the sequenced events into per-partition state and publish a shard of it at every due time.

    Records are folded in batches; each partition's changes, shards and consumer offsets are committed in one Kafka
    transaction, and its state is kept in memory with a changelog topic behind it, so a partition moved to another
    worker, or a worker restarted anywhere, reads it back from Kafka. Runs until SIGTERM. Its options are also the
    `worker` and `topics` sections of the --config file and SKYATTR_WORKER__*, SKYATTR_TOPICS__*."""
    from streamer.distributed.worker import Worker, WorkerConfig

    settings = load_or_exit(config, flags)
    bootstrap = _bootstrap_or_exit(settings, "worker")
    w, topics = settings.worker, settings.topics
    partitions = _partitions_or_exit(bootstrap, topics.events, settings.kafka_security(), connect_timeout(settings))
    cfg = WorkerConfig(
        bootstrap=bootstrap,
        events_topic=topics.events,
        shards_topic=topics.shards,
        app_id=w.app_id,
        instance=w.instance,
        session_timeout_s=w.session_timeout,
        stuck_timeout_s=w.stuck_timeout,
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        security=settings.kafka_security(),
    )
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = None
    if cfg.metrics_port is not None:
        from streamer.distributed.worker_metrics import WorkerMetrics

        metrics = WorkerMetrics()
        try:
            port = metrics.serve(cfg.metrics_port, cfg.metrics_host)
        except OSError as exc:  # the metrics port taken
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        logging.getLogger("skyattr.worker").info("metrics on http://%s:%d/metrics", cfg.metrics_host, port)
    worker = Worker(cfg, partitions, metrics)
    link = BrokerLink(bootstrap, on_change=metrics.on_kafka if metrics is not None else None)
    try:
        run_kafka_role(lambda stop, link: worker.run(stop, link), link, settings)
    finally:
        if metrics is not None:
            metrics.stop_serving()


ATTRIBUTOR_SETTINGS = KAFKA_SETTINGS | ATTRIBUTION_FIELDS | {"followers", "appview", "appview_cache"}
ATTRIBUTOR_SETTINGS |= {"kafka_topic_tiers", "kafka_topic_alerts"}
ATTRIBUTOR_SETTINGS |= {"metrics_port", "metrics_host", "out"}
GATHER_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


@with_settings_options(include=ATTRIBUTOR_SETTINGS, sections={"topics": ["shards", "state"], "attributor": None})
def attributor_command(
    until_final: Annotated[
        bool,
        typer.Option(
            "--until-final",
            help=(
                "Exit after the tail run of a finite source (a replayed archive); at once if its state says that run "
                "is already done."
            ),
        ),
    ] = False,
    config: opt.Config = None,
    **flags: Any,
) -> None:
    """Gather the shards of each run, attribute the merged state, publish the results exactly once.

    The results (skyattr.tiers, skyattr.alerts) are the single process's for the same events; each run's messages,
    the attributor's state and its position in the shards topic are committed in one Kafka transaction. Runs until
    SIGTERM (or --until-final). Its options are also the `attributor` and `topics` sections of the --config file
    and SKYATTR_ATTRIBUTOR__*, SKYATTR_TOPICS__*."""
    from streamer.distributed.attributor import AttributorConfig, run_attributor

    settings = load_or_exit(config, flags)
    bootstrap = _bootstrap_or_exit(settings, "attributor")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    attribution = settings.attribution()
    followers = settings.follower_source()
    sink = None
    if settings.out is not None:
        from streamer.sinks.jsonl import JsonlSink

        sink = JsonlSink(settings.out)
    cfg = AttributorConfig(
        bootstrap=bootstrap,
        shards_topic=settings.topics.shards,
        state_topic=settings.topics.state,
        name=settings.attributor.name,
        gather_timeout_s=settings.attributor.gather_timeout,
        pipeline=settings.attributor.pipeline,
        security=settings.kafka_security(),
        topics={"tiers": settings.kafka_topic_tiers, "alerts": settings.kafka_topic_alerts},
    )

    metrics, on_outcome = _attributor_metrics(settings)

    def deliver(result: Result) -> None:
        if metrics is not None:
            metrics.publish(result)
        if sink is not None:
            sink.publish(result)
        if isinstance(result, RunResult):
            print(f"run {result.run} at {result.as_of_us}: value {result.value:.4g}, {_figure(result)}")
            sys.stdout.flush()

    stats = AttributorStats()
    link = BrokerLink(bootstrap, on_change=metrics.on_kafka if metrics is not None else None)

    def attempt(stop: asyncio.Event, link: BrokerLink) -> Any:
        return run_attributor(
            cfg,
            attribution,
            followers=followers,
            deliver=deliver,
            stop=stop,
            until_final=until_final,
            on_outcome=on_outcome,
            link=link,
            stats=stats,
        )

    try:
        run_kafka_role(attempt, link, settings)
    finally:
        if sink is not None:
            sink.close_now()
        if metrics is not None:
            metrics.stop_serving()
    resumed = stats.resumed_from
    start = "from the start" if resumed is None else f"resumed after the run at {resumed.done_through_us}"
    typer.echo(
        f"attributor: {start}; {stats.runs} runs published, {stats.skipped} skipped, {stats.incomplete} incomplete",
        err=True,
    )


def _attributor_metrics(
    settings: Settings,
) -> tuple[Metrics, Callable[[str, float], None]] | tuple[None, None]:
    """The attributor's endpoint (``--metrics-port``): the result gauges every run feeds, as the single process's,
    and ``skyattr_attributor_runs_total{outcome}`` (ok, skipped, incomplete) and
    ``skyattr_attributor_gather_seconds`` (first chunk of a run to its last shard)."""
    if settings.metrics_port is None:
        return None, None
    from prometheus_client import Counter, Histogram

    from streamer.sinks.prometheus import Metrics

    metrics = Metrics()
    runs = Counter(
        "skyattr_attributor_runs", "Runs of the attributor, by outcome.", ["outcome"], registry=metrics.registry
    )
    gather = Histogram(
        "skyattr_attributor_gather_seconds",
        "From the first chunk of a run to its last shard.",
        buckets=GATHER_BUCKETS,
        registry=metrics.registry,
    )
    for outcome in ("ok", "skipped", "incomplete"):
        runs.labels(outcome)

    def on_outcome(outcome: str, gather_s: float) -> None:
        runs.labels(outcome).inc()
        if outcome != "incomplete":
            gather.observe(gather_s)

    metrics.track_kafka()  # ready while the broker is reached
    metrics.ready = True
    port = metrics.serve(settings.metrics_port, settings.metrics_host)
    logging.getLogger("skyattr.attributor").info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    return metrics, on_outcome


def _figure(result: RunResult) -> str:
    """The run's line's last part: the figure the alert reads, or why it has none."""
    sb = result.scale_bias
    if sb is None:
        return "nothing to attribute"
    return f"same-game r* {sb.same_game.residual:.3f}"
