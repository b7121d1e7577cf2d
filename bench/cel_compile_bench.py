"""How long compiling the largest admissible expression of each shape takes, against a
typical policy compiled in the same run.

Compiling runs on the server's event loop (admission, start-up, store updates), so the
parser's limits (MAX_CHAIN selections in a row, MAX_NODES nodes) are what bounds that pause.
Prints, per shape: nodes, ms, and the ratio to the typical policy. This is a benchmark, not a
test.

    python bench/cel_compile_bench.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from pdp.cel import CelCompileError, count_nodes, new_pdp_environment
from pdp.cel.parser import MAX_NODES

TYPICAL = ("config.exporters.exists(e, e.endpoint.startsWith('http://') && "
           "!e.endpoint.contains('localhost')) && agent.labels['env'] == 'prod'")

SHAPES: dict[str, Callable[[int], str]] = {
    "select chains": lambda n: "[" + ",".join(["config.b" + ".c" * 98] * n) + "].size() > 0",
    "index chains": lambda n: "[" + ",".join(["config" + "[0]" * 95] * n) + "].size() > 0",
    "member calls": lambda n: "[" + ",".join(["config.a.size()"] * n) + "].size() > 0",
    "ternaries": lambda n: "[" + ",".join(["(config.a == 1 ? 1 : 2)"] * n) + "].size() > 0",
    "comprehensions": lambda n: "[" + ",".join(
        ["config.exporters.exists(e, e.name == 'x')"] * n) + "].size() > 0",
    "or chain": lambda n: " || ".join(f"agent.id == 'a{i}'" for i in range(n)),
    "allow list": lambda n: "agent.id in [" + ",".join(f"'a{i}'" for i in range(n)) + "]",
    "map literal": lambda n: "{" + ",".join(f"'{i}': {i}" for i in range(n)) + "}.size() > 0",
}


def nodes(env: object, expr: str) -> int:
    return count_nodes(env.parse(expr))  # type: ignore[attr-defined]


def largest(env: object, make: Callable[[int], str]) -> str:
    lo, hi = 1, 20_000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            env.parse(make(mid))  # type: ignore[attr-defined]
            lo = mid
        except CelCompileError:
            hi = mid - 1
    return make(lo)


def compile_ms(expr: str, reps: int) -> float:
    times = []
    for _ in range(reps):
        env = new_pdp_environment()  # nothing cached between runs
        t0 = time.perf_counter()
        env.compile(expr, max_cost=10**15)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    env = new_pdp_environment()
    base = compile_ms(TYPICAL, 21)
    print(f"node limit {MAX_NODES}; typical policy ({nodes(env, TYPICAL)} nodes):"
          f" {base:.2f} ms (the baseline)")
    print(f"{'shape':16s} {'nodes':>6s} {'ms':>8s} {'x typical':>10s}")
    for name, make in SHAPES.items():
        expr = largest(env, make)
        ms = compile_ms(expr, 5)
        print(f"{name:16s} {nodes(env, expr):6d} {ms:8.1f} {ms / base:10.0f}")


if __name__ == "__main__":
    main()
