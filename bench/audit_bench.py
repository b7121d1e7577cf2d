"""Decision throughput with audit off, on (JSON-lines file, async) and on with sync durability.

Real engine decisions (example policies, in-process counters), N concurrent callers on one
event loop, the way the server runs them. Rounds of each variant are interleaved so machine
noise hits all alike; the report is the median throughput per variant and its ratio to
"audit off" from the same run, plus the process CPU time per decision (steadier on a shared
machine). Target: async audit >= 0.9x of off. A round with audit on ends when the last
record is written to the file, not when the last answer is out. ("off" still builds the
decision's audit dict and hands it to a sink that drops it: what it leaves out is the
pipeline, encoding, hashing and the file.)

Usage: python bench/audit_bench.py [--decisions 5000] [--concurrency 64] [--rounds 9] [--anchors]

``--anchors`` adds the two file variants with signed checkpoints (an anchor key: every 1000
records / 10 s in async mode, with every batch in sync mode), for the cost of anchoring.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdp.audit.log import AuditLog
from pdp.audit.settings import AuditSettings
from pdp.cel import ProgramCache, pdp_environment
from pdp.counters import MemoryCounterStore
from pdp.engine.context import ConfigCache
from pdp.engine.engine import Engine, EngineOptions
from pdp.engine.request import CheckRequest
from pdp.logging import configure_logging
from pdp.policy.builtins import builtin_policies
from pdp.policy.compiled import compile_or_broken
from pdp.policy.loader import load_directory
from pdp.policy.model import Checkpoint
from pdp.policy.policyset import PolicySet

ROOT = Path(__file__).resolve().parents[1]
CONFIG = (ROOT / "examples" / "configs" / "collector.yaml").read_text()


class NoAudit:
    def emit(self, event: dict[str, Any]) -> None:
        pass

    async def log_decision(self, decision: dict[str, Any]) -> None:
        pass


def policy_set() -> PolicySet:
    env, cache = pdp_environment(), ProgramCache(1000)
    own = [compile_or_broken(p, env, cache) for p in load_directory(ROOT / "examples" /
                                                                    "policies")]
    return PolicySet(own, [compile_or_broken(p, env, cache) for p in builtin_policies()])


def request(i: int) -> CheckRequest:
    return CheckRequest(tenant="acme", checkpoint=Checkpoint.PUSH,
                        change={"subject": "otel-collector"},
                        agent={"id": f"agent-{i}", "labels": {"env": "prod", "region": "eu"}},
                        rollout={"id": "r-1", "step_percent": 10.0}, config_yaml=CONFIG)


async def throughput(engine: Engine, sink: Any, decisions: int,
                     concurrency: int) -> tuple[float, float]:
    """Decisions per second, counted until the last one's audit record is written (a writer
    that lags behind the answers is not allowed to look free), and the process CPU time per
    decision in µs (steadier than wall time on a shared machine: stolen time is not in it)."""
    queue = iter(range(decisions))

    async def caller() -> None:
        for i in queue:
            await engine.check(request(i), 1.0)
            # A served decision arrives through the event loop, so other tasks (the audit
            # writer among them) run between requests. Without this yield, in-process
            # callers never suspend (in-process counters do not wait), and the writer would
            # only start after the last decision, with every record of the round queued.
            await asyncio.sleep(0)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    if isinstance(sink, AuditLog):
        await sink.flush(fsync=False)  # every record written (async mode does not fsync)
    return (decisions / (time.perf_counter() - started),
            (time.process_time() - cpu) / decisions * 1e6)


VARIANTS = ("off", "file async", "file sync")
ANCHORED = ("async anchored", "sync anchored")


async def run(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    variants = VARIANTS + ANCHORED if args.anchors else VARIANTS
    policies = policy_set()
    # As `pdp serve` does once started: what lives as long as the process (policies,
    # compiled programs, modules) is kept out of the collector's generations.
    gc.collect()
    gc.freeze()
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "anchor.key"
        key.write_bytes(b"bench-anchor-key-0123456789abcdef")
        for r in range(args.rounds):
            for variant in variants:
                is_async = variant in ("file async", "async anchored")
                if variant == "off":
                    sink: Any = NoAudit()
                else:
                    sink = AuditLog(AuditSettings(
                        path=f"{tmp}/{variant.replace(' ', '-')}-{r}/audit.jsonl",
                        durability="async" if is_async else "sync",
                        anchor_key_file=str(key) if variant in ANCHORED else None))
                    await sink.start()
                # As the server sets it up: with async durability, records are made after
                # the answer (EngineOptions.audit_after_answer).
                engine = Engine(policies, MemoryCounterStore(), sink, ConfigCache(64, 1 << 22),
                                EngineOptions(audit_after_answer=is_async))
                results[variant].append(await throughput(engine, sink, args.decisions,
                                                         args.concurrency))
                if isinstance(sink, AuditLog):
                    if sink.stats().spilled:  # the writer fell behind: say so, it is slow
                        print(f"{variant}: {sink.stats().spilled} events spilled to disk")
                    await sink.close()  # drained: every event is on disk
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--anchors", action="store_true",
                        help="also run the file variants with signed checkpoints")
    args = parser.parse_args(argv)
    configure_logging("warning")
    results = asyncio.run(run(args))
    rate = {v: statistics.median(x[0] for x in results[v]) for v in results}
    cpu = {v: statistics.median(x[1] for x in results[v]) for v in results}
    print(f"{'audit':<14} {'decisions/s (median)':>22} {'ratio to off':>13}"
          f" {'CPU µs/decision':>16} {'off/this':>9}")
    for v in results:
        print(f"{v:<14} {rate[v]:>22,.0f} {rate[v] / rate['off']:>13.3f}"
              f" {cpu[v]:>16.1f} {cpu['off'] / cpu[v]:>9.3f}")
    if args.anchors:
        for plain, anchored in zip(VARIANTS[1:], ANCHORED, strict=True):
            print(f"anchored / plain, {plain.split()[1]}: {rate[anchored] / rate[plain]:.3f}"
                  f" (by CPU time {cpu[plain] / cpu[anchored]:.3f})")
    ratio = rate["file async"] / rate["off"]
    print(f"target: async audit >= 0.9x of off: {'met' if ratio >= 0.9 else 'MISSED'}"
          f" ({ratio:.3f}; by CPU time {cpu['off'] / cpu['file async']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
