"""CEL benchmark: pdp's CEL vs cel-python (celpy) vs Google's cel-expr-python.

Realistic policy expressions over a 5- and a 200-exporter OpenTelemetry collector config
are evaluated on identical inputs by each implementation.  Prints µs per evaluation and
the ratios against pdp measured in the same run (median over the expression set), plus the
deadline overshoot of a runaway comprehension.  This is a benchmark, not a test.

    python bench/cel_bench.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from pdp.cel import Budget, DeadlineExceeded, new_pdp_environment


def collector_config(n: int, insecure_at: int | None = None) -> dict[str, Any]:
    exporters: dict[str, Any] = {}
    for i in range(n):
        exporters[f"otlp/{i}"] = {
            "endpoint": f"collector-{i}.example.com:4317",
            "tls": {"insecure": i == insecure_at},
            "headers": {"x-tenant": f"t{i % 7}"},
        }
    pipelines = {
        f"traces/{j}": {"receivers": ["otlp"], "processors": ["batch"],
                        "exporters": [f"otlp/{k}" for k in range(j, n, max(1, n // 4))]}
        for j in range(min(4, n))
    }
    return {"receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "0.0.0.0:4317"}}}},
            "processors": {"batch": {}}, "exporters": exporters,
            "service": {"pipelines": pipelines}}


def activation(n: int) -> dict[str, Any]:
    return {
        "agent": {"id": "a-17", "group": "edge", "version": "16.4.1", "version_major": 16,
                  "version_minor": 4,
                  "labels": {"env": "prod", "region": "eu-west-1", "team": "observability"}},
        "device": {"id": "d-1", "platform": "linux", "os_version": "6.1",
                   "memory_bytes": 8_000_000_000, "groups": ["canary", "edge"]},
        "config": collector_config(n, insecure_at=n - 1),
        "previous_config": collector_config(n),
        "rollout": {"id": "r-9", "step": 2, "step_percent": 25, "approved": True},
        "metrics": {"error_rate": 0.01, "p95_latency_ms": 180.0},
    }


EXPRESSIONS: list[tuple[str, str, int]] = [
    ("label selector", 'agent.labels["env"] == "prod" && '
     'agent.labels["region"] in ["eu-west-1", "eu-central-1"]', 5),
    ("label has+prefix", 'has(agent.labels.team) && agent.labels.team.startsWith("obs")', 5),
    ("device constraint", 'device.memory_bytes >= 4000000000 && '
     'device.platform in ["linux", "darwin"] && "canary" in device.groups', 5),
    ("version compare", "agent.version_major > 16 || "
     "(agent.version_major == 16 && agent.version_minor >= 4)", 5),
    ("rollout step", "rollout.step_percent <= 25 || rollout.approved == true", 5),
    ("metrics gate", 'metrics["error_rate"] < 0.05 && metrics["p95_latency_ms"] < 300.0', 5),
    ("tls insecure (5)", "config.exporters.exists(n, config.exporters[n].tls.insecure && "
     '!config.exporters[n].endpoint.startsWith("localhost:"))', 5),
    ("tls insecure (200)", "config.exporters.exists(n, config.exporters[n].tls.insecure && "
     '!config.exporters[n].endpoint.startsWith("localhost:"))', 200),
    ("endpoint ports (5)", 'config.exporters.all(n, config.exporters[n].endpoint.endsWith(":4317")'
     ' || config.exporters[n].endpoint.endsWith(":443"))', 5),
    ("endpoint ports (200)", "config.exporters.all(n, "
     'config.exporters[n].endpoint.endsWith(":4317") || '
     'config.exporters[n].endpoint.endsWith(":443"))', 200),
    ("endpoint regex (5)", "config.exporters.all(n, "
     'config.exporters[n].endpoint.matches("^[a-z0-9.-]+:[0-9]+$"))', 5),
    ("pipelines reference exporters (5)", "config.service.pipelines.all(p, "
     "config.service.pipelines[p].exporters.all(e, e in config.exporters))", 5),
    ("pipelines reference exporters (200)", "config.service.pipelines.all(p, "
     "config.service.pipelines[p].exporters.all(e, e in config.exporters))", 200),
    ("no exporter removed (200)", "previous_config.exporters.all(n, n in config.exporters)",
     200),
    ("count insecure (200)", "config.exporters.filter(n, config.exporters[n].tls.insecure)"
     ".size() <= 1", 200),
]

VARIABLES = ["agent", "device", "config", "previous_config", "rollout", "metrics"]


def timeit(fn: Callable[[], Any], budget_s: float) -> float:
    """Median µs per call over several batches sized to take ~budget_s in total."""
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
    batches = max(3, int(budget_s / dt))
    samples = []
    for _ in range(min(batches, 7)):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    quick = "--quick" in sys.argv
    budget_s = 0.1 if quick else 0.4
    acts = {5: activation(5), 200: activation(200)}
    # Untyped declarations: the expressions read made-up fields (agent.version_major, ...),
    # as the other engines compared here see them (all dyn).
    env = new_pdp_environment(typed=False)
    try:
        from cel_expr_python import cel as gcel
        genv = gcel.NewEnv(variables={v: gcel.Type.DYN for v in VARIABLES})
    except ImportError:
        gcel = None
    try:
        import celpy
        cenv = celpy.Environment()
    except ImportError:
        celpy = None

    rows = []
    print(f"{'expression':38} {'pdp µs':>9} {'expr µs':>9} {'expr+act':>9} {'celpy µs':>10}"
          f" {'x expr':>7} {'x act':>7} {'x celpy':>8}")
    for name, src, n in EXPRESSIONS:
        data = acts[n]
        prog = env.compile(src)
        want = prog.evaluate(data)
        pdp_us = timeit(lambda p=prog, d=data: p.evaluate(d), budget_s)
        g_us = ga_us = c_us = float("nan")
        if gcel is not None:
            gexpr = genv.compile(src)
            assert gexpr.eval(data=data).value() == want, name
            g_us = timeit(lambda e=gexpr, d=data: e.eval(data=d), budget_s)
            gact = genv.Activation(data)
            ga_us = timeit(lambda e=gexpr, a=gact: e.eval(a), budget_s)
        if celpy is not None:
            cprog = cenv.program(cenv.compile(src))
            cact = {k: celpy.json_to_cel(v) for k, v in data.items()}
            assert bool(cprog.evaluate(cact)) == want, name
            c_us = timeit(lambda p=cprog, a=cact: p.evaluate(a), budget_s / 4)
        rows.append((g_us / pdp_us, ga_us / pdp_us, c_us / pdp_us))
        print(f"{name:38} {pdp_us:9.2f} {g_us:9.2f} {ga_us:9.2f} {c_us:10.1f}"
              f" {g_us / pdp_us:7.1f} {ga_us / pdp_us:7.1f} {c_us / pdp_us:8.0f}")

    med = [statistics.median(r[i] for r in rows) for i in range(3)]
    print()
    print(f"median speed-up of pdp vs cel-expr-python eval(data=...):     {med[0]:.1f}x")
    print(f"median speed-up of pdp vs cel-expr-python prebuilt Activation: {med[1]:.1f}x")
    print(f"median speed-up of pdp vs cel-python (celpy):                 {med[2]:.0f}x")

    # hand-written Python for the 5-exporter TLS check, for scale
    def hand(d: dict[str, Any] = acts[5]) -> bool:
        ex = d["config"]["exporters"]
        return any(ex[k]["tls"]["insecure"] and not ex[k]["endpoint"].startswith("localhost:")
                   for k in ex)

    prog = env.compile(EXPRESSIONS[6][1])
    hand_us = timeit(hand, budget_s)
    pdp_us = timeit(lambda: prog.evaluate(acts[5]), budget_s)
    print(f"hand-written Python 'tls insecure (5)': {hand_us:.2f} µs, pdp: {pdp_us:.2f} µs "
          f"({pdp_us / hand_us:.1f}x)")

    # a runaway comprehension stops itself at the deadline
    big = {"config": {"items": list(range(5_000_000))}}
    runaway = env.compile("config.items.all(i, config.items.exists(j, j == -1) || true)")
    overs = []
    for _ in range(5):
        deadline = time.monotonic() + 0.01
        try:
            runaway.evaluate(big, budget=Budget(deadline=deadline))
        except DeadlineExceeded:
            overs.append((time.monotonic() - deadline) * 1000)
    print(f"deadline overshoot of a runaway nested comprehension: median "
          f"{statistics.median(overs):.3f} ms, max {max(overs):.3f} ms (5 runs)")

    # RE2: a classic ReDoS pattern stays linear
    evil = env.compile('config.s.matches("^(a+)+$")')
    for n in (1_000, 100_000):
        s = {"config": {"s": "a" * n + "!"}}
        t = time.perf_counter()
        evil.evaluate(s)
        print(f"matches('^(a+)+$') on {n + 1} chars: {(time.perf_counter() - t) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
