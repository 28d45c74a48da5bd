"""skyattr streamer: the daemon around the kernels (sources, state, scheduler, publishers, CLI)."""

__version__ = "0.1.0"
