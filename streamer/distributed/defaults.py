"""The distributed roles' defaults, written once: the configurations of the ingest, the workers and the attributor,
and the command-line defaults of ``skyattr ingest --to-kafka``, ``worker`` and ``attributor`` read them from here.

Pure constants: importing this module pulls in no Kafka client (the command line imports it before
it knows which role runs). What the single process shares with them (the interval, the window) is in
:mod:`kernels.defaults` and :class:`~streamer.core.state.StateConfig`.
"""

from __future__ import annotations

# topics
EVENTS_TOPIC = "skyattr.events"  # the sequenced events, keyed by actor DID
CURSOR_TOPIC = "skyattr.ingest-cursors"  # compacted: each ingest source's cursor
SHARDS_TOPIC = "skyattr.shards"  # the workers' shards of the state at each due time
STATE_TOPIC = "skyattr.attributor-state"  # compacted: where the attributor stands

# ingest
PARTITIONS = 12  # partitions of the events topic when the ingest creates it
BATCH_ITEMS = 2000  # source items per Kafka transaction (at most)
BATCH_SECONDS = 1.0  # seconds a transaction stays open (at most)
DECODERS = 1  # processes decoding an archive ahead of the sequencer (1: the ingest's own)

# worker
WORKER_APP_ID = "skyattr-worker"  # consumer group, and prefix of the changelog topic
SESSION_TIMEOUT_S = 30.0  # a worker silent this long leaves the group and its partitions move
STUCK_TIMEOUT_S = 900.0  # no partition held and none recovering this long: the worker exits 3

# attributor
ATTRIBUTOR_NAME = "skyattr-attributor"  # names the group, the transactional id and the state record
GATHER_TIMEOUT_S = 120.0  # seconds a run may wait for its last shard before it is given up
PIPELINE = 2  # runs merged and measured at once (published one by one, in order)
