"""``skyattr relay``: serve an archive as a local subscribeRepos relay, for tests and demos.

``--speed`` is the settings option (also from ``--config`` and ``SKYATTR_SPEED``, as for ``replay``); the other
options are the relay's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from streamer.app import options as opt
from streamer.app.flags import load_or_exit, with_settings_options
from streamer.app.signals import stop_event
from streamer.sources.relay_server import (
    DEFAULT_MAX_CLIENTS,
    DEFAULT_SEND_TIMEOUT_S,
    SUBSCRIBE_PATH,
    Misbehaviour,
    Relay,
)

if TYPE_CHECKING:  # aiohttp, which the local v2 runs on, is imported only when it is asked for
    from streamer.testing.jetstream2_server import Jetstream2Server


def banner(relay: Relay) -> str:
    """The start-up line: what is served, how fast, and where to subscribe."""
    assert relay.range is not None
    pace = "as fast as clients read" if relay.speed is None else f"paced at {relay.speed:g}x event time"
    if not relay.live:
        mode = "a client without a cursor gets the archive from its start"
    elif relay.speed is None:
        mode = (
            "live: the whole archive is history at once, so a client without a cursor gets nothing (give it a "
            "cursor, or use --speed or --from-start)"
        )
    else:
        mode = "live: the archive happens from now on; a client without a cursor gets what happens after it connects"
    return (
        f"relay: {relay.range.frames:,} frames, seq {relay.range.first_seq}..{relay.range.last_seq}, {pace}; "
        f"{mode}; subscribe at {relay.url}{SUBSCRIBE_PATH}"
    ) + _documents_line(relay)


def _documents_line(relay: Relay) -> str:
    if not relay.documents:
        return ""
    base = relay.url.replace("ws://", "http://")
    return f"; DID documents of {len(relay.documents):,} accounts at {base}/{{did}} (a PLC directory's URL scheme)"


def v2_banner(server: Jetstream2Server) -> str:
    """The start-up line of the local Jetstream v2: how much is sealed, where the SDK's client points."""
    events, sealed = len(server.payloads()), server.archive_server
    tip, segments = (sealed.sealed_tip, len(sealed.files)) if sealed is not None else (0, 0)
    return (
        f"jetstream v2: {events:,} events, seq {server.first_seq}..{server.first_seq + events - 1}, sealed through "
        f"seq {tip} in {segments} segments, dict-zstd frames with dictionary {server.dictionary_id} (archive key: "
        f"the jetstream2_api_key setting, or {LOCAL_KEY!r}); "
        f"JetstreamClient(base_uri={server.url + '/xrpc'!r}) or --source jetstream2 --jetstream2-url {server.url}"
    )


async def _serve(relay: Relay, v2: Jetstream2Server | None) -> None:
    stop = stop_event()
    async with relay, v2 if v2 is not None else contextlib.nullcontext():
        typer.echo(banner(relay), err=True)
        if v2 is not None:
            typer.echo(v2_banner(v2), err=True)
        typer.echo(relay.url)
        if v2 is not None:
            typer.echo(v2.url)
        await stop.wait()
    typer.echo(
        f"relay: stopped after {relay.connections} connection(s), {relay.frames_sent:,} frames sent, "
        f"{relay.refused} refused (over --max-clients), {relay.slow_dropped} dropped as slow readers",
        err=True,
    )


# The settings `relay` reads (flags generated from Settings; also from --config and SKYATTR_*).
RELAY_SETTINGS = {"speed", "jetstream2_api_key", "jetstream2_api_key_file"}
LOCAL_KEY = "local-archive-key"  # the local v2 archive's key when none is set


@with_settings_options(include=RELAY_SETTINGS)
def relay_command(
    archive: Annotated[Path, typer.Argument(help="Archive file or directory of raw relay frames.")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 picks a free one).")] = 8765,
    config: opt.Config = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    max_clients: Annotated[
        int, typer.Option(min=0, help="Connections served at once; more get HTTP 503 (0: no cap).")
    ] = DEFAULT_MAX_CLIENTS,
    send_timeout: Annotated[
        float,
        typer.Option(min=0, help="Seconds a client may leave a frame unread before it is dropped (0: never)."),
    ] = DEFAULT_SEND_TIMEOUT_S,
    from_start: Annotated[
        bool,
        typer.Option(
            "--from-start",
            help="Send a client that gives no cursor the whole archive from its first frame (a replay). Without "
            "it the relay is live, as the spec says: no cursor is a tail from now, a cursor is exclusive.",
        ),
    ] = False,
    restart_at: Annotated[
        int | None,
        typer.Option(
            min=1, help="Test mode: restart the relay's sequence before this archive frame (0-based, so at least 1)."
        ),
    ] = None,
    restart_head: Annotated[
        int,
        typer.Option(min=0, help="Test mode: after --restart-at keep frames up to this seq, number on from it."),
    ] = 0,
    skip_every: Annotated[
        int | None, typer.Option(min=2, help="Test mode: never send every n-th frame (seq gaps).")
    ] = None,
    swap_every: Annotated[
        int | None, typer.Option(min=2, help="Test mode: send every n-th frame after the next one (out of order).")
    ] = None,
    jetstream2_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Also serve the archive's events as a Jetstream v2 on this port (0 picks a free one): "
            "subscribeEvents, getZstdDictionary and the sealed archive (listSegments, planSnapshot, getSegment, "
            "getBlock), all on the one port, as the atproto SDK's JetstreamClient expects.",
        ),
    ] = None,
    jetstream2_unsealed: Annotated[
        int,
        typer.Option(min=0, help="Events at the end left out of the v2 archive's sealed segments (live tail only)."),
    ] = 500,
    **flags: Any,
) -> None:
    """Serve an archive as a local com.atproto.sync.subscribeRepos relay (honours ?cursor=) until Ctrl-C.

    Also answers _health, com.atproto.sync.listHosts, listRepos, getLatestCommit, getRepoStatus and
    com.atproto.server.describeServer, and GET /{did} with the DID documents beside the archive (written by
    `skyattr synth`): point a verifying consumer's PLC host at the relay. A live relay
    by default (no cursor: what happens from now on; --speed sets how fast the archive happens); --from-start
    replays it to every client that gives no cursor. The test-mode misbehaviours imply --from-start."""
    settings = load_or_exit(config, flags)
    speed = settings.speed
    try:
        misbehave = Misbehaviour(
            restart_at=restart_at, restart_head=restart_head, skip_every=skip_every, swap_every=swap_every
        )
        relay = Relay(
            archive,
            host=host,
            port=port,
            speed=speed,
            max_clients=max_clients or None,
            send_timeout=send_timeout or None,
            misbehave=misbehave,
            live=not from_start and misbehave == Misbehaviour(),
        )
        v2 = None
        if jetstream2_port is not None:
            from streamer.testing.jetstream2_server import Jetstream2Server

            key = settings.archive_key() or LOCAL_KEY
            v2 = Jetstream2Server(
                archive, host, jetstream2_port, unsealed=jetstream2_unsealed, api_key=key, train_dictionary=True
            )
        asyncio.run(_serve(relay, v2))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            typer.echo(
                f"error: cannot listen on {host}:{port}: the address is already in use (another `skyattr relay`, "
                "or another server); stop it or choose another --port",
                err=True,
            )
        else:
            typer.echo(f"error: cannot serve on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
