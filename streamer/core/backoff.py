"""The one reconnect/retry delay: exponential backoff with "equal jitter", for the relay, Jetstream and Kafka."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


def backoff_delay(streak: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before the next attempt after ``streak`` failures in a row (0 after a success): ``base · 2^streak``
    capped at ``maximum``, half of it fixed and half random, so many clients cut off together do not come back in
    lockstep, yet none retries sooner than half the nominal delay."""
    nominal = min(maximum, math.ldexp(base, min(streak, 32)))  # base · 2^streak, exactly
    jitter = rng.uniform(0, nominal / 2) if rng is not None else random.uniform(0, nominal / 2)
    return nominal / 2 + jitter


@dataclass(frozen=True)
class Backoff:
    """A retry policy's delays: ``base`` seconds after the first failure, doubling up to ``maximum``."""

    base: float = 1.0
    maximum: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.maximum:
            raise ValueError(f"backoff must have 0 < base <= maximum, got base={self.base!r}, maximum={self.maximum!r}")

    def delay(self, streak: int, rng: random.Random | None = None) -> float:
        """See :func:`backoff_delay`."""
        return backoff_delay(streak, self.base, self.maximum, rng)
