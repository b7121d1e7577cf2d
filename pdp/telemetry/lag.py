"""Event-loop lag: how late the loop runs a timer, as a metric and a warning.

Every decision, audit write and health check shares one event loop, so anything that holds
it (a long synchronous evaluation, a big parse on the loop, GC) delays every call at once;
per-call latencies show it only spread thin. A timer that should fire every ``interval_s``
measures it directly: lag = when it ran - when it was due. Each sample goes to
``pdp_event_loop_lag_seconds``; a lag over ``warn_s`` logs ``event_loop_lag`` at most once
per ``warn_every_s`` (with how many were not logged in between), so a stalled loop cannot
flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from pdp.telemetry.base import DecisionTelemetry

log = structlog.get_logger("pdp.telemetry")


class LoopLagMonitor:
    def __init__(self, telemetry: DecisionTelemetry, interval_s: float = 0.1,
                 warn_s: float = 0.05, warn_every_s: float = 10.0) -> None:
        self.telemetry = telemetry
        self.interval_s = interval_s
        self.warn_s = warn_s
        self.warn_every_s = warn_every_s
        self.samples = 0
        self.last_lag_s = 0.0
        self.max_lag_s = 0.0
        self._warned_at = float("-inf")
        self._unlogged = 0  # warnings not logged since the last one
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling on the running loop. Idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def record(self, lag_s: float, now: float) -> None:
        """One sample (``now``: loop time, for rate-limiting the warning)."""
        self.samples += 1
        self.last_lag_s = lag_s
        self.max_lag_s = max(self.max_lag_s, lag_s)
        self.telemetry.record_loop_lag(lag_s)
        if lag_s <= self.warn_s:
            return
        if now - self._warned_at >= self.warn_every_s:
            log.warning("event_loop_lag", lag_ms=round(lag_s * 1000, 1),
                        threshold_ms=round(self.warn_s * 1000, 1),
                        not_logged=self._unlogged)
            self._warned_at = now
            self._unlogged = 0
        else:
            self._unlogged += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = loop.time()
            self.record(max(0.0, now - due), now)
