"""Collect cyclic garbage by the bytes let in, not only by the objects allocated.

Why: Python's collector runs after a count of container allocations (the server sets it
high, see ``app.GC_YOUNG_THRESHOLD``, so a step's own decisions are not traversed again
and again). A refused or failed call leaves a cycle behind (the status exception's
traceback and the handler's frames, which hold the request, its bytes and what was parsed
from them): a few dozen containers, but megabytes when the request was large. Counted by
containers, hundreds of such calls may pass before a collection, and memory grows with
what a hostile caller sends. Counted by bytes as well, the garbage large requests can keep
alive is bounded: every ``every_bytes`` of requests of ``large_bytes`` or more, the young
generations are collected.
"""

from __future__ import annotations

import gc

#: Requests at least this long count (the rest is what the allocation count covers).
LARGE_BYTES = 64 << 10
#: A collection after this many bytes of large requests.
EVERY_BYTES = 8 << 20


class Sweeper:
    """``note(len(data))`` for each request received; collects when due."""

    __slots__ = ("every_bytes", "large_bytes", "pending", "sweeps")

    def __init__(self, every_bytes: int = EVERY_BYTES, large_bytes: int = LARGE_BYTES) -> None:
        self.every_bytes = every_bytes
        self.large_bytes = large_bytes
        self.pending = 0  # large bytes received since the last collection
        self.sweeps = 0

    def note(self, nbytes: int) -> None:
        if nbytes < self.large_bytes:
            return
        self.pending += nbytes
        if self.pending >= self.every_bytes:
            self.pending = 0
            self.sweeps += 1
            gc.collect(1)  # the young generations: where a recent call's garbage is
