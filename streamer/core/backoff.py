"""The one reconnect/retry delay: exponential backoff with "equal jitter", for the relay, Jetstream and Kafka."""

from __future__ import annotations

import random


def backoff_delay(streak: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before the next attempt after ``streak`` failures in a row (0 after a success): ``base · 2^streak``
    capped at ``maximum``, half of it fixed and half random, so many clients cut off together do not come back in
    lockstep, yet none retries sooner than half the nominal delay."""
    nominal = min(maximum, base * 2 ** min(streak, 32))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)
