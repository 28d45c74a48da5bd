"""Warn once per kind: what a hostile peer sends thousands of times must not flood the log, and the first of each
kind is worth a line an operator reads."""

from __future__ import annotations

import logging
from collections import Counter

from streamer.core.frames import clean_text


class OncePerKind:
    """A logger's messages at ``level`` the first time of each kind, at debug after that."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._seen: set[str] = set()

    def log(self, kind: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        self._log.log(logging.DEBUG if kind in self._seen else level, message, *args)
        self._seen.add(kind)

    def skipped(self, errors: Counter[str], reason: str, detail: str, what: str) -> None:
        """Count one skipped item in ``errors`` by ``reason`` and say so: ``skipped <what> (<reason>): <detail>``."""
        errors[reason] += 1
        self.log(reason, "skipped %s (%s): %s", what, reason, clean_text(detail))


__all__ = ["OncePerKind"]
