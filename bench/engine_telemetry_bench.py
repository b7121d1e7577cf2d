"""What telemetry costs a real decision: the engine with telemetry off, and on.

The engine (example policies, in-process counters, audit to a sink that drops events) decides
the same request in interleaved blocks with ``NoTelemetry`` and with an enabled
``Telemetry`` (spans recorded, exporter dropping them). Telemetry off is the shipped default;
its whole cost is the seam itself — one ``telemetry.enabled`` test per decision plus a
``counter_span()`` no-op when counters are reserved — timed here on its own and shown as a
share of the decision. Every figure comes from the same run.

Usage: python bench/engine_telemetry_bench.py [-n 3000] [--blocks 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from pdp.cel import ProgramCache, pdp_environment
from pdp.counters import MemoryCounterStore
from pdp.engine.context import ConfigCache
from pdp.engine.engine import Engine
from pdp.engine.request import CheckRequest
from pdp.logging import configure_logging
from pdp.policy.builtins import builtin_policies
from pdp.policy.compiled import compile_or_broken
from pdp.policy.loader import load_directory
from pdp.policy.model import Checkpoint
from pdp.policy.policyset import PolicySet
from pdp.telemetry import NO_TELEMETRY, Telemetry, TelemetrySettings

ROOT = Path(__file__).resolve().parents[1]
CONFIG = (ROOT / "examples" / "configs" / "collector.yaml").read_text()


class Drop:
    def emit(self, event: dict[str, Any]) -> None:
        pass

    async def log_decision(self, decision: dict[str, Any]) -> None:
        pass


class DropSpans(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def engine(telemetry: Any) -> Engine:
    env, cache = pdp_environment(), ProgramCache(1000)
    own = [compile_or_broken(p, env, cache) for p in load_directory(ROOT / "examples" /
                                                                    "policies")]
    builtins = [compile_or_broken(p, env, cache) for p in builtin_policies()]
    return Engine(PolicySet(own, builtins), MemoryCounterStore(), Drop(),
                  ConfigCache(64, 1 << 22), telemetry=telemetry)


def request(i: int) -> CheckRequest:
    return CheckRequest(tenant="acme", checkpoint=Checkpoint.PUSH,
                        change={"subject": "otel-collector"},
                        agent={"id": f"agent-{i}", "labels": {"env": "prod", "region": "eu"}},
                        rollout={"id": "r-1", "step_percent": 10.0}, config_yaml=CONFIG)


async def per_decision_us(e: Engine, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await e.check(request(i), 1.0)
    return (time.perf_counter() - started) / n * 1e6


def seam_us(n: int) -> float:
    """The telemetry-off seam alone: the per-decision enabled test and a counter_span()."""
    tel = NO_TELEMETRY
    started = time.perf_counter()
    for _ in range(n):
        if tel.enabled:
            pass
        with tel.counter_span():
            pass
    return (time.perf_counter() - started) / n * 1e6


async def run(args: argparse.Namespace) -> None:
    enabled = Telemetry(TelemetrySettings(enabled=True))
    enabled.tracer_provider.add_span_processor(SimpleSpanProcessor(DropSpans()))
    engines = {"off": engine(NO_TELEMETRY), "on": engine(enabled)}
    for e in engines.values():
        await per_decision_us(e, 200)  # warm caches
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(args.blocks):
        for name, e in engines.items():
            times[name].append(await per_decision_us(e, args.n // args.blocks))
    seam = statistics.median(seam_us(20_000) for _ in range(5))
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"decision, telemetry off        {off:8.1f} µs")
    print(f"decision, telemetry on         {on:8.1f} µs   {on / off:5.2f}x of off")
    print(f"telemetry-off seam per decision {seam:7.2f} µs   {seam / off:6.2%} of a decision")
    enabled.shutdown()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args(argv)
    configure_logging("warning")
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
