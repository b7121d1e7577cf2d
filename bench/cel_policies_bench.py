"""Micro-benchmark: the CEL deny expressions of examples/policies/*.yaml on the example
collector config (examples/configs/collector.yaml), against hand-written Python equivalents
measured in the same run.

Prints µs per evaluation (``Program.evaluate`` with a deadline and cost limit, one Budget
shared as in a decision) and the ratio pdp / hand-written.  Two configs: the example as is,
and the example with 20 exporters (the comprehension-heavy case).  Not a test.

    python bench/cel_policies_bench.py [--quick]
"""

from __future__ import annotations

import functools
import ipaddress
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pdp.cel import Budget, pdp_environment

ROOT = Path(__file__).resolve().parent.parent


def _load_config() -> Any:
    try:  # the engine's loader (no implicit timestamps), when importable
        from pdp.engine.configparse import ConfigLoader
        loader: Any = ConfigLoader
    except ImportError:
        loader = yaml.SafeLoader
    return yaml.load((ROOT / "examples/configs/collector.yaml").read_text(), Loader=loader)


def _deny_expressions() -> list[tuple[str, str]]:
    out = []
    for f in sorted((ROOT / "examples/policies").glob("*.yaml")):
        if f.name.endswith(".test.yaml"):
            continue
        for doc in yaml.safe_load_all(f.read_text()):
            cel = (doc or {}).get("rule", {}).get("cel")
            if cel:
                out.append((doc["name"], cel["deny"]))
    return out


# -- hand-written Python equivalents (same guards, no CEL error semantics; endpoint parsing
# memoised like pdp's domain helpers, so the ratio is the evaluator's overhead) -------------

@functools.lru_cache(maxsize=4096)
def _host(ep: str) -> str:
    s = ep.strip()
    if "://" in s:
        s = s.split("://", 1)[1].split("/", 1)[0]
    if s.count(":") == 1:
        s = s.split(":")[0]
    return s.lower()


@functools.lru_cache(maxsize=4096)
def _is_localhost(ep: str) -> bool:
    if ep.startswith(("unix:", "/")):
        return True
    h = _host(ep)
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def hand_eu_endpoints(a: dict[str, Any]) -> bool:
    c = a["config"]
    if not (type(c) is dict and "exporters" in c and type(c["exporters"]) is dict):
        return False
    ex = c["exporters"]
    for n in ex:
        e = ex[n]
        if type(e) is dict and "endpoint" in e and not _is_localhost(e["endpoint"]):
            h = _host(e["endpoint"])
            if not (h in ("otel.acme.eu", "ingest.acme.eu") or h.endswith(".eu.example.com")
                    or h.endswith(".europe-west1.example.net")):
                return True
    return False


def hand_tail_sampling(a: dict[str, Any]) -> bool:
    c = a["config"]
    if not (type(c) is dict and "service" in c and type(c["service"]) is dict
            and "pipelines" in c["service"] and type(c["service"]["pipelines"]) is dict):
        return False
    ps = c["service"]["pipelines"]
    return any((p == "traces" or p.startswith("traces/"))
               and not (type(ps[p]) is dict and "processors" in ps[p]
                        and "tail_sampling" in ps[p]["processors"]) for p in ps)


_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _secs(d: str) -> float:
    for u in ("ns", "us", "ms", "s", "m", "h"):
        if d.endswith(u) and d[: -len(u)].replace(".", "", 1).isdigit():
            return float(d[: -len(u)]) * _UNITS[u]
    raise ValueError(d)


def hand_hostmetrics(a: dict[str, Any]) -> bool:
    c = a["config"]
    if not (type(c) is dict and "receivers" in c and type(c["receivers"]) is dict):
        return False
    rs = c["receivers"]
    return any((r == "hostmetrics" or r.startswith("hostmetrics/")) and type(rs[r]) is dict
               and "collection_interval" in rs[r] and _secs(rs[r]["collection_interval"]) < 60
               for r in rs)


def hand_debug_group(a: dict[str, Any]) -> bool:
    c = a["config"]
    if not (type(c) is dict and "exporters" in c and type(c["exporters"]) is dict):
        return False
    return any(n == "debug" or n.startswith("debug/") for n in c["exporters"])


def hand_debug_prod(a: dict[str, Any]) -> bool:
    c = a["config"]
    return (type(c) is dict and "exporters" in c and type(c["exporters"]) is dict
            and "debug" in c["exporters"])


def hand_batch(a: dict[str, Any]) -> bool:
    c = a["config"]
    if not (type(c) is dict and "service" in c and "pipelines" in c["service"]):
        return False
    ps = c["service"]["pipelines"]
    return any(p.startswith("traces") and "batch" not in ps[p]["processors"] for p in ps)


HAND: dict[str, Callable[[dict[str, Any]], bool]] = {
    "eu-endpoints-only": hand_eu_endpoints,
    "traces-through-tail-sampling": hand_tail_sampling,
    "hostmetrics-interval-at-least-60s": hand_hostmetrics,
    "no-debug-exporter-in-production-group": hand_debug_group,
    "no-debug-exporter-in-prod": hand_debug_prod,
    "require-batch-processor": hand_batch,
}


def timeit(fn: Callable[[], Any], budget_s: float) -> float:
    """Median µs per call over up to 7 batches of ~20 ms+."""
    fn()
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        if dt > 0.02:
            break
        n *= 4
    samples = []
    for _ in range(min(max(3, int(budget_s / dt)), 7)):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(samples)


def activations() -> dict[str, dict[str, Any]]:
    cfg = _load_config()
    base = {"agent": {"id": "agent-eu-1", "labels": {"region": "eu", "env": "prod",
                                                     "group": "production"}},
            "rollout": {}, "request": {}, "device": {}, "previous_config": None,
            "metrics": {}}
    big = dict(cfg)
    exporters = {f"otlp/{i}": {"endpoint": f"otel-{i}.eu.example.com:4317",
                               "tls": {"insecure": False}} for i in range(18)}
    exporters.update(cfg["exporters"])
    big["exporters"] = exporters
    return {"collector.yaml": {**base, "config": cfg},
            "collector+18 exporters": {**base, "config": big}}


def main() -> None:
    budget_s = 0.1 if "--quick" in sys.argv else 0.4
    env = pdp_environment()
    exprs = _deny_expressions()
    for label, act in activations().items():
        print(f"config: {label}")
        print(f"  {'policy (deny expression)':40} {'pdp µs':>8} {'hand µs':>8} {'ratio':>7}")
        pdp_total = hand_total = 0.0
        for name, src in exprs:
            prog = env.compile(src)
            hand = HAND[name]
            want = prog.evaluate(act, Budget(deadline=time.monotonic() + 60, cost_limit=10**6))
            assert want == hand(act), name

            # one Budget per decision, shared by its policies (as the engine does)
            bud = Budget(deadline=time.monotonic() + 3600, cost_limit=10**15)

            def run(p: Any = prog, a: dict[str, Any] = act, b: Budget = bud) -> Any:
                return p.evaluate(a, b)

            def run_hand(h: Any = hand, a: dict[str, Any] = act) -> Any:
                return h(a)

            p_us = timeit(run, budget_s)
            h_us = timeit(run_hand, budget_s)
            pdp_total += p_us
            hand_total += h_us
            print(f"  {name:40} {p_us:8.2f} {h_us:8.2f} {p_us / h_us:6.1f}x   deny={want}")
        print(f"  {'all ' + str(len(exprs)) + ' policies':40} {pdp_total:8.2f} {hand_total:8.2f}"
              f" {pdp_total / hand_total:6.1f}x")
        print()


if __name__ == "__main__":
    main()
