"""Stdout sink: one JSON line per record, for container log collectors."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import BinaryIO

from pdp.audit.chain import Entry


class StdoutSink:
    """Writes in a worker thread: a blocked pipe must stall only this sink's forwarder."""

    name = "stdout"

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream

    def _write(self, data: bytes) -> None:
        out = self._stream if self._stream is not None else sys.stdout.buffer
        out.write(data)
        out.flush()

    async def send(self, entries: Sequence[Entry]) -> None:
        await asyncio.to_thread(self._write, b"".join(e.line for e in entries))

    async def close(self) -> None:
        return None
