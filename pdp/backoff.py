"""Exponential backoff, one spelling for every retry loop (audit writer, audit sinks,
notification deliveries): the delay doubles after each failure up to a ceiling, with
optional jitter so many retriers do not knock in step, and resets after a success."""

from __future__ import annotations

import random


def delay_after(failures: int, initial: float, maximum: float, jitter: float = 0.0) -> float:
    """The wait before the next attempt after ``failures`` failures in a row (>= 1)."""
    delay: float = min(maximum, initial * 2.0 ** max(0, failures - 1))
    if jitter:
        delay *= random.uniform(1.0 - jitter, 1.0 + jitter)
    return delay


class Backoff:
    """The state of one retry loop: ``next()`` after a failure, ``reset()`` after a success."""

    def __init__(self, initial: float, maximum: float, jitter: float = 0.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return delay_after(self.failures, self.initial, self.maximum, self.jitter)

    def reset(self) -> None:
        self.failures = 0
