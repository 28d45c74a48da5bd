"""``skyattr ingest --to-kafka``: an archive or a relay's firehose to ``skyattr.events``, exactly once.

The Kafka connection comes from the settings (``--kafka-bootstrap``, its security options, ``--config``,
``SKYATTR_KAFKA_*``), the relay from ``--relay``; the rest are this command's own options.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from streamer.app import options as opt
from streamer.app.flags import load_or_exit, with_settings_options
from streamer.app.kafka_errors import run_kafka_role
from streamer.core.checkpoint import file_identity
from streamer.distributed.kafka_ingest import (
    IngestCursor,
    IngestStats,
    ingest_to_kafka,
)
from streamer.distributed.ride_out import BrokerLink
from streamer.sources.archive import ArchiveSource
from streamer.sources.base import Source
from streamer.sources.firehose import FirehoseSource

if TYPE_CHECKING:
    from streamer.app.settings import Settings

INGEST_SETTINGS = {
    "relay",
    "source",
    "jetstream2_url",
    "jetstream2_kinds",
    "jetstream_collections",
    "jetstream_compress",
    "backfill",
    "backfill_only",
    "jetstream2_api_key",
    "jetstream2_api_key_file",
    "jetstream2_archive_url",
    "speed",
    "kafka_bootstrap",
    "kafka_connect_timeout",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "interval",
    "bucket_hours",
    "buckets",
    "edge_budget",
    "record_budget",
    "max_future_skew",
    "metrics_port",
    "metrics_host",
    "log_level",
}


def source_id(archive: Path | None, relay: str) -> str:
    """What names a source (in its cursor's key and its transactional id, with the events topic): an archive by
    its name, size and the hash of its head (renaming it keeps its cursor, another file does not get it); a relay
    (``relay:<url>``) or a Jetstream v2 (``jetstream2:<url>``, given whole) by its URL."""
    if archive is None:
        return relay if relay.startswith("jetstream2:") else f"relay:{relay}"
    identity = file_identity(archive)
    digest = hashlib.sha256(repr(sorted(identity.items())).encode()).hexdigest()[:16]
    return f"archive:{archive.name}:{digest}"


@with_settings_options(include=INGEST_SETTINGS, sections={"topics": ["events", "cursors"], "ingest": None})
def ingest_command(
    archive: Annotated[
        Path | None, typer.Argument(help="Archive file or directory (default: the relay's live firehose).")
    ] = None,
    to_kafka: Annotated[
        bool, typer.Option("--to-kafka", help="Write the events to Kafka (the one destination there is).")
    ] = False,
    config: opt.Config = None,
    **flags: Any,
) -> None:
    """Ingest an archive or a relay into Kafka: normalized events on --events-topic, exactly once.

    Each batch of events and the source's cursor after it are committed in one Kafka transaction; a restart
    resumes from the cursor topic alone (no local state), so whatever is killed when, every event is written once.
    The stream-order decisions of the rolling window (late and future times, the window's moves, the due times
    of --interval) are made here and written with the events, for `skyattr worker`. Consumers must read with
    isolation.level=read_committed. Statistics go to stderr."""
    if not to_kafka:
        typer.echo("error: ingest writes to Kafka: give --to-kafka (and --kafka-bootstrap)", err=True)
        raise typer.Exit(2)
    settings = load_or_exit(config, flags)
    if not settings.kafka_bootstrap:
        typer.echo("error: --to-kafka needs --kafka-bootstrap (or SKYATTR_KAFKA_BOOTSTRAP)", err=True)
        raise typer.Exit(2)
    if archive is not None and not archive.exists():
        typer.echo(f"error: archive {archive} does not exist", err=True)
        raise typer.Exit(2)
    if archive is None and settings.source == "jetstream":
        typer.echo("error: ingest reads a relay or a Jetstream v2 (--source jetstream2), not Jetstream v1", err=True)
        raise typer.Exit(2)
    v2 = archive is None and settings.source == "jetstream2"
    name = source_id(archive, f"jetstream2:{settings.jetstream2_url}" if v2 else settings.relay)

    def make_source(cursor: IngestCursor | None) -> Source:
        if archive is not None:
            decoders = settings.ingest.decoders
            if cursor is None:
                return ArchiveSource(archive, decoders=decoders)
            seq_cursor = cursor.seq_cursor if cursor.seq_cursor >= 0 else None
            return ArchiveSource(
                archive, skip=cursor.position, seq_cursor=seq_cursor, seen=cursor.seen_seqs(), decoders=decoders
            )
        position = cursor.position if cursor and cursor.position >= 0 else None
        if v2:
            from streamer.app.daemon import jetstream2_source

            return jetstream2_source(settings, cursor=position)
        return FirehoseSource(settings.relay, cursor=position)

    stats = IngestStats()
    endpoint = _endpoint(settings, stats, live=archive is None)
    link = BrokerLink(settings.kafka_bootstrap or "", on_change=endpoint.on_kafka if endpoint is not None else None)

    async def attempt(stop: asyncio.Event, link: BrokerLink) -> Any:
        return await ingest_to_kafka(
            make_source,
            bootstrap=settings.kafka_bootstrap or "",
            source_id=name,
            events_topic=settings.topics.events,
            cursor_topic=settings.topics.cursors,
            partitions=settings.ingest.partitions,
            batch_items=settings.ingest.batch_items,
            batch_seconds=settings.ingest.batch_seconds,
            security=settings.kafka_security(),
            stop=stop,
            state_config=settings.state(),
            interval_s=settings.interval,
            live=archive is None,
            speed=settings.speed if archive is not None else None,
            transactional_id=settings.ingest.transactional_id,
            link=link,
            totals=stats,
            at_least_once=v2,
        )

    try:
        run_kafka_role(attempt, link, settings)
    finally:
        if endpoint is not None:
            endpoint.stop_serving()
    resumed = stats.resumed_from
    start = "from the start"
    if resumed is not None:
        start = f"resumed after {resumed.items:,} items ({resumed.events:,} events)"
    typer.echo(
        f"ingest: {name} {start}; wrote {stats.events:,} events of {stats.items:,} items in "
        f"{stats.transactions:,} transactions to {settings.topics.events} ({stats.seconds:.1f}s)",
        err=True,
    )


def _endpoint(settings: Settings, stats: IngestStats, *, live: bool) -> Any:
    """``/metrics``, ``/healthz`` and ``/readyz`` with ``--metrics-port``: ready while the broker is reached and,
    for a live relay, while its websocket is open; ``skyattr_kafka_connected``, ``skyattr_source_connected``."""
    if settings.metrics_port is None:
        return None
    from prometheus_client import Gauge

    from streamer.sinks.prometheus import Endpoint

    class IngestEndpoint(Endpoint):
        def role_readiness(self) -> tuple[bool, str]:
            if live and not stats.source.connected:
                return False, "relay not connected"
            return True, ""

    endpoint = IngestEndpoint()
    endpoint.track_kafka()
    Gauge(
        "skyattr_source_connected",
        "1 while the relay websocket is open (run; 0 in replay).",
        registry=endpoint.registry,
    ).set_function(lambda: 1 if live and stats.source.connected else 0)
    endpoint.serve(settings.metrics_port, settings.metrics_host)
    return endpoint
