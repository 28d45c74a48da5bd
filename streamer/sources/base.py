"""The source protocol and its stats, where a source's author looks for them (defined in
:mod:`streamer.core.source`, beside the stages that read them)."""

from __future__ import annotations

from streamer.core.source import Source, SourceStats

__all__ = ["Source", "SourceStats"]
