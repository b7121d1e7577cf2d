"""Audit sinks: the JSON-lines ledger (always on) and the forwarded sinks (Redis, stdout)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pdp.audit.chain import Entry


class Sink(Protocol):
    """A destination records are forwarded to after the ledger wrote them.

    ``send`` raises on any failure; the forwarder then spools and retries the same records in
    the same order, so a sink only needs to be idempotent where it can be (Redis is, via its
    delivery cursor; stdout is at-least-once across a crash).
    """

    name: str

    async def send(self, entries: Sequence[Entry]) -> None: ...

    async def close(self) -> None: ...
