"""The event-loop lag monitor: samples reach ``pdp_event_loop_lag_seconds`` on the scrape
endpoint of a real server; a late timer logs one rate-limited warning; stop ends the task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import structlog

from pdp.client import push_request
from pdp.telemetry import NO_TELEMETRY, LoopLagMonitor
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer
from tests.support.procs import free_port

PATIENCE_S = 30.0


def lag_count(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("pdp_event_loop_lag_seconds_count"):
            return float(line.split()[-1])
    return -1.0


def test_the_lag_histogram_is_served_and_grows(tmp_path: Path) -> None:
    prom = free_port()
    server = PdpServer(tmp_path, args=["--telemetry-enabled", "true",
                                       "--prometheus-port", str(prom)]).start()
    try:
        def scrape() -> str:
            return httpx.get(f"http://127.0.0.1:{prom}/metrics", timeout=5,
                             trust_env=False).text

        first = -1.0
        deadline = time.monotonic() + PATIENCE_S
        while (first := lag_count(scrape())) <= 0:
            assert time.monotonic() < deadline, "no lag sample was recorded"
            time.sleep(0.05)
        with grpc.insecure_channel(server.address) as ch:  # still sampling while serving
            dgrpc.DecisionServiceStub(ch).CheckPush(
                push_request("acme", "a1", config_yaml="a: 1"), timeout=10)
        while lag_count(scrape()) <= first:
            assert time.monotonic() < deadline, "the lag histogram stopped growing"
            time.sleep(0.05)
        assert 'pdp_event_loop_lag_seconds_bucket{le="0.05"' in scrape()
        assert server.terminate() == 0
    finally:
        server.stop()


def test_a_blocked_loop_warns_once_then_counts_what_it_did_not_log() -> None:
    async def main() -> tuple[LoopLagMonitor, list[MutableMapping[str, Any]]]:
        monitor = LoopLagMonitor(NO_TELEMETRY, interval_s=0.01, warn_s=0.05,
                                 warn_every_s=3600)
        with structlog.testing.capture_logs() as logs:
            monitor.start()
            for _ in range(2):
                time.sleep(0.2)  # not-a-wait: holds the loop, so the next sample is late by that
                before = monitor.samples
                deadline = time.monotonic() + PATIENCE_S
                while monitor.samples == before:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.005)
            await monitor.stop()
        return monitor, logs

    monitor, logs = asyncio.run(main())
    assert monitor.max_lag_s > 0.05
    warnings = [e for e in logs if e["event"] == "event_loop_lag"]
    assert len(warnings) == 1  # the second one falls inside warn_every_s
    assert monitor._task is None


@pytest.mark.parametrize("lag", [0.0, 0.2])
def test_record_counts_samples(lag: float) -> None:
    monitor = LoopLagMonitor(NO_TELEMETRY)
    monitor.record(lag, now=1.0)
    assert (monitor.samples, monitor.last_lag_s) == (1, lag)
