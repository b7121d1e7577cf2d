"""Per-decision cost of telemetry: bare baseline vs NoTelemetry vs Telemetry enabled.

One synthetic decision = select and evaluate ``--policies`` small Python rules over a
request context, "reserve" counters (a dict update), build the result. The same body runs

* ``baseline``: no telemetry calls at all;
* ``off``: wrapped in every telemetry call the engine makes, on :class:`NoTelemetry`
  (decision span, one policy span per policy, counter span, ``record_decision``);
* ``on``: the same calls on an enabled :class:`Telemetry` (spans recorded and handed to a
  batch processor whose exporter drops them; metrics aggregated for a Prometheus reader);
  also with ``policy_spans=False``, and for a caller whose traceparent is not sampled.

Blocks of each variant are interleaved so machine noise hits all alike; the report is the
median per-decision time and the ratios to the baseline, all from the same run.

Usage: python bench/telemetry_bench.py [-n 20000] [--policies 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from pdp.telemetry import DecisionTelemetry, NoTelemetry, Telemetry, TelemetrySettings

Rule = Callable[[dict[str, Any]], bool]
CARRIER = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
           "user-agent": "grpc-python/1.85", "authorization": "Bearer x"}


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def make_rules(n: int) -> list[tuple[str, Rule]]:
    rules: list[tuple[str, Rule]] = [
        ("no-insecure-tls",
         lambda c: c["config"]["tls"]["insecure"] and c["endpoint"] != "localhost"),
        ("min-os", lambda c: c["device"]["os"] < (14, 0)),
        ("exporter-removal", lambda c: any(e not in c["config"]["exporters"]
                                           for e in c["previous"]["exporters"])),
    ]
    return [(f"{rules[i % 3][0]}-{i}", rules[i % 3][1]) for i in range(n)]


CTX: dict[str, Any] = {
    "config": {"tls": {"insecure": False}, "exporters": ["otlp", "prom"]},
    "previous": {"exporters": ["otlp", "prom"]},
    "endpoint": "collector.internal", "device": {"os": (15, 1)},
}


def bare(rules: list[tuple[str, Rule]], counters: dict[str, int]) -> dict[str, Any]:
    """The same decision with no telemetry call (it still times itself: decisions carry
    their elapsed time)."""
    t0 = time.perf_counter()
    reasons = []
    for name, rule in rules:
        if rule(CTX):
            reasons.append(name)
    if not reasons:
        counters["t"] = counters.get("t", 0) + 1
    outcome = "deny" if reasons else "allow"
    return {"allow": not reasons, "reasons": reasons, "outcome": outcome,
            "elapsed": time.perf_counter() - t0}


def instrumented(
    tel: DecisionTelemetry, rules: list[tuple[str, Rule]], counters: dict[str, int],
    carrier: dict[str, str] = CARRIER,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    with tel.decision_span("pdp.CheckPush", carrier) as span:
        reasons = []
        for name, rule in rules:
            with tel.policy_span(name):
                if rule(CTX):
                    reasons.append(name)
        if not reasons:
            with tel.counter_span():
                counters["t"] = counters.get("t", 0) + 1
        outcome = "deny" if reasons else "allow"
        span.set_attribute("pdp.outcome", outcome)
    elapsed = time.perf_counter() - t0
    tel.record_decision(outcome, "acme", "push", elapsed)
    return {"allow": not reasons, "reasons": reasons, "outcome": outcome, "elapsed": elapsed}


UNSAMPLED = dict(CARRIER, traceparent=CARRIER["traceparent"][:-2] + "00")


def enabled(**kw: Any) -> Telemetry:
    tel = Telemetry(TelemetrySettings(enabled=True, prometheus_port=0, **kw))
    tel.tracer_provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=65536))
    tel.start()
    return tel


def run(n: int, policies: int, block: int = 250) -> dict[str, float]:
    rules = make_rules(policies)
    off = NoTelemetry()
    on, on_lean = enabled(), enabled(policy_spans=False)
    counters: dict[str, int] = {}
    fns: dict[str, Callable[[], object]] = {
        "baseline": lambda: bare(rules, counters),
        "off": lambda: instrumented(off, rules, counters),
        "on": lambda: instrumented(on, rules, counters),
        "on_lean": lambda: instrumented(on_lean, rules, counters),
        "on_unsampled": lambda: instrumented(on, rules, counters, UNSAMPLED),
    }
    try:
        for fn in fns.values():
            for _ in range(1000):
                fn()
        per_block: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(max(1, n // block)):
            for name, fn in fns.items():
                t0 = time.perf_counter_ns()
                for _ in range(block):
                    fn()
                per_block[name].append((time.perf_counter_ns() - t0) / block)
    finally:
        on.shutdown()
        on_lean.shutdown()
    return {k: statistics.median(v) for k, v in per_block.items()}


LABELS = {
    "baseline": "bare baseline",
    "off": "NoTelemetry",
    "on": "enabled",
    "on_lean": "enabled, policy_spans=False",
    "on_unsampled": "enabled, caller unsampled",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=10_000, help="decisions per variant")
    ap.add_argument("--policies", type=int, default=3)
    args = ap.parse_args()
    r = run(args.n, args.policies)
    base = r["baseline"]
    print(f"per decision ({args.policies} policies, median of blocks, n={args.n}):")
    for name, label in LABELS.items():
        print(f"  {label:<28} {r[name] / 1000:8.2f} us   x{r[name] / base:6.2f}   "
              f"{(r[name] - base) / 1000:+7.2f} us")
    print(f"NoTelemetry overhead vs baseline: {(r['off'] / base - 1) * 100:+.1f}% "
          f"({(r['off'] - base) / 1000:+.2f} us per decision; budget 50 000 us)")


if __name__ == "__main__":
    main()
