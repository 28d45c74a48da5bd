"""The network's endpoints, written once: the relay's firehose and Jetstream, their default hosts and paths."""

from __future__ import annotations

DEFAULT_RELAY = "wss://bsky.network"
SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"  # com.atproto.sync.subscribeRepos, on a relay or a PDS
DEFAULT_JETSTREAM = "wss://jetstream2.us-east.bsky.network"
JETSTREAM_PATH = "/subscribe"
DEFAULT_JETSTREAM2 = "wss://jetstream.us-east.bsky.network"  # Jetstream v2 (network.bsky.jetstream.subscribeEvents)
