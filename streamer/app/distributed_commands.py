"""``skyattr worker`` and ``skyattr attributor``: the distributed mode's two long-running roles.

``ingest --to-kafka`` writes and sequences the events; workers (a faust-streaming app, as many as there are
partitions at most) fold them into per-partition state and publish a shard at each due time; one attributor merges
the shards and publishes the results. See :mod:`streamer.distributed.worker` and
:mod:`streamer.distributed.attributor`, and the README's "Distributed mode" section.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from streamer.app import options as opt
from streamer.app.flags import ATTRIBUTION_FIELDS, load_or_exit, with_settings_options
from streamer.app.kafka_errors import exit_for, run_kafka_role
from streamer.distributed import defaults as dd
from streamer.distributed.attributor import AttributorStats
from streamer.distributed.ride_out import BrokerLink, BrokerUnreachable, connect_timeout, fold_client_logs, ride_out

KAFKA_SETTINGS = {
    "kafka_bootstrap",
    "kafka_connect_timeout",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "log_level",
}


def _bootstrap_or_exit(settings: Any, command: str) -> str:
    if not settings.kafka_bootstrap:
        typer.echo(f"error: {command} needs --kafka-bootstrap (or SKYATTR_KAFKA_BOOTSTRAP)", err=True)
        raise typer.Exit(2)
    return str(settings.kafka_bootstrap)


def _partitions_or_exit(bootstrap: str, topic: str, security: dict[str, Any], timeout_s: float) -> int:
    """The partitions of ``topic``, waiting for a broker that is not up yet (a pod started before it) for at most
    ``timeout_s``; exit 2 with one line when it is never reached, or has no such topic."""
    from streamer.distributed.kafka_ingest import partitions_of

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


@with_settings_options(include=KAFKA_SETTINGS | {"metrics_port", "metrics_host"})
def worker_command(
    events_topic: Annotated[str, typer.Option(help="Topic of the sequenced events.")] = dd.EVENTS_TOPIC,
    shards_topic: Annotated[str, typer.Option(help="Topic the shards go to.")] = dd.SHARDS_TOPIC,
    store: Annotated[
        str, typer.Option(help="Where the state table lives: rocksdb:// (under --data-dir) or memory://.")
    ] = dd.WORKER_STORE,
    data_dir: Annotated[Path, typer.Option(help="Directory of the RocksDB table.")] = dd.WORKER_DATA_DIR,
    app_id: Annotated[str, typer.Option(help="Consumer group, and prefix of the changelog topic.")] = dd.WORKER_APP_ID,
    instance: Annotated[
        str, typer.Option(help="Static group membership id (a pod's name): a restart keeps its partitions.")
    ] = "",
    session_timeout: Annotated[
        float, typer.Option(min=6.0, help="Seconds without a heartbeat before a worker's partitions move.")
    ] = dd.SESSION_TIMEOUT_S,
    stuck_timeout: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Seconds holding no partition and recovering none before the worker exits 3 to be started again "
            "(0: never; for more workers than partitions).",
        ),
    ] = dd.STUCK_TIMEOUT_S,
    config: opt.Config = None,
    **flags: Any,
) -> None:
    """Fold the sequenced events into per-partition state and publish a shard of it at every due time.

    A faust-streaming app: the state is a changelog-backed table, so a partition moved to another worker, or a
    worker restarted without its disk, recovers it from Kafka. Runs until SIGTERM."""
    from streamer.distributed.worker import WorkerConfig, internals_error, run_worker

    if (problem := internals_error()) is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    settings = load_or_exit(config, flags)
    bootstrap = _bootstrap_or_exit(settings, "worker")
    if store not in ("rocksdb://", "memory://"):
        typer.echo(f"error: --store must be rocksdb:// or memory://, got {store!r}", err=True)
        raise typer.Exit(2)
    partitions = _partitions_or_exit(bootstrap, events_topic, settings.kafka_security(), connect_timeout(settings))
    cfg = WorkerConfig(
        bootstrap=bootstrap,
        events_topic=events_topic,
        shards_topic=shards_topic,
        app_id=app_id,
        store=store,
        data_dir=data_dir,
        instance=instance,
        session_timeout_s=session_timeout,
        stuck_timeout_s=stuck_timeout,
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
    )
    try:
        run_worker(cfg, partitions, loglevel=settings.log_level.lower())
    except OSError as exc:  # the metrics port taken, the data directory not writable
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


ATTRIBUTOR_SETTINGS = KAFKA_SETTINGS | ATTRIBUTION_FIELDS | {"followers", "kafka_topic_tiers", "kafka_topic_alerts"}
ATTRIBUTOR_SETTINGS |= {"metrics_port", "metrics_host"}
GATHER_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


@with_settings_options(include=ATTRIBUTOR_SETTINGS)
def attributor_command(
    shards_topic: Annotated[str, typer.Option(help="Topic of the workers' shards.")] = dd.SHARDS_TOPIC,
    state_topic: Annotated[str, typer.Option(help="Compacted topic of the attributor's state.")] = dd.STATE_TOPIC,
    name: Annotated[
        str, typer.Option(help="Names the consumer group, the transactional id and the state record.")
    ] = dd.ATTRIBUTOR_NAME,
    gather_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a run may wait for its last shard before it is given up.")
    ] = dd.GATHER_TIMEOUT_S,
    out: Annotated[Path | None, typer.Option(help="Also append the results to this JSON lines file.")] = None,
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
    SIGTERM (or --until-final)."""
    from streamer.core.followers import load_followers
    from streamer.distributed.attributor import AttributorConfig, run_attributor

    settings = load_or_exit(config, flags)
    bootstrap = _bootstrap_or_exit(settings, "attributor")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    attribution = settings.attribution()
    followers = load_followers(settings.followers) if settings.followers else None
    sink = None
    if out is not None:
        from streamer.sinks.jsonl import JsonlSink

        sink = JsonlSink(out)
    cfg = AttributorConfig(
        bootstrap=bootstrap,
        shards_topic=shards_topic,
        state_topic=state_topic,
        name=name,
        gather_timeout_s=gather_timeout,
        security=settings.kafka_security(),
        topics={"tiers": settings.kafka_topic_tiers, "alerts": settings.kafka_topic_alerts},
    )

    metrics, on_outcome = _attributor_metrics(settings)

    def deliver(result: Any) -> None:
        if metrics is not None:
            metrics.publish(result)
        if sink is not None:
            sink.publish(result)
        if result.topic == "tiers":
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


def _attributor_metrics(settings: Any) -> tuple[Any, Any]:
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


def _figure(result: Any) -> str:
    """The run's line's last part: the figure the alert reads, or why it has none."""
    sb = result.scale_bias
    if sb is None:
        return "nothing to attribute"
    return f"same-game r* {sb.same_game.residual:.3f}"
