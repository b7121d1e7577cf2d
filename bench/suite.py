"""pdp benchmark suite: one entry point, one table, bench/RESULTS.md.

    python bench/suite.py            # full run (about 5-8 minutes on 2 cores)
    python bench/suite.py --quick    # tiny sizes (< 60 s), for the smoke test

Every figure is a ratio to a baseline measured in the same run (this machine is noisy):

1. floor      empty grpc.aio handler (bench/floor_server.py, same server options, same client)
              vs CheckPush on the embedded default vs CheckPush with Redis counters:
              p50 / p99 of sequential calls, throughput under multi-process load.
1b. realistic the same comparison on the examples as a user writes them: examples/policies
              (daily cap raised, so the allow path is measured) and the request
              examples/requests/push-allow.yaml; throughput with h2load (C) when installed,
              and the server's CPU per call for the floor and pdp.
2. step       a rollout step of 1 000 agents, 10 policies (CEL, typed, counters in Redis):
              one CheckPushBatch call vs 1 000 sequential CheckPush calls.
3. workers    `pdp serve --workers 1` vs `--workers 2` (both with Redis): throughput.
4. tenants    policies per tenant 10 / 100 / 1 000, with 1 tenant vs 1 000 tenants loaded
              (the other tenants hold 10 policies each): p50 of the measured tenant.
5. memory     server RSS with 10 000 policies loaded vs with none (built-ins only).

Servers are real `pdp serve` processes; clients are separate processes (see bench/_load.py)
and every throughput window reports client CPU next to server CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _load as L
from _workload import (
    ROOT,
    batch_request,
    push_bytes,
    realistic_push_bytes,
    write_policy_dir,
    write_realistic_policy_dir,
)

RESULTS = ROOT / "bench" / "RESULTS.md"


@dataclass
class Sizes:
    lat_n: int  # sequential calls per target per round
    rounds: int  # interleaved rounds (latency) / repeated windows (throughput)
    duration: float  # seconds per throughput window
    procs: int  # client processes
    conc: int  # calls in flight per client process
    agents: int  # rollout step size
    step_reps: int
    per_tenant: tuple[int, ...]
    tenants: int
    grid_n: int  # sequential calls at 10 policies per tenant (scaled down for more)


FULL = Sizes(lat_n=1000, rounds=3, duration=4.0, procs=2, conc=32, agents=1000, step_reps=7,
             per_tenant=(10, 100, 1000), tenants=1000, grid_n=1000)
QUICK = Sizes(lat_n=100, rounds=1, duration=0.5, procs=2, conc=8, agents=50, step_reps=2,
              per_tenant=(10, 50), tenants=20, grid_n=100)


@dataclass
class Row:
    section: str
    metric: str
    value: str
    ratio: str = ""
    target: str = ""
    met: str = ""


ROWS: list[Row] = []
NOTES: list[str] = []


def row(*a: str) -> None:
    ROWS.append(Row(*a))
    r = ROWS[-1]
    print(f"  {r.section:<9} {r.metric:<46} {r.value:>16} {r.ratio:>10} {r.target:>10}"
          f" {r.met}", flush=True)


def us(s: float) -> str:
    return f"{s * 1e6:,.0f} µs"


def ms(s: float) -> str:
    return f"{s * 1e3:,.1f} ms"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def load_note(name: str, w: L.Window, workers: int = 1) -> str:
    cores = os.cpu_count() or 1
    busy = w.server_cpu + w.client_cpu + w.other_cpu
    if w.server_cpu >= 0.9 * workers:
        who = "server-bound (its event loop(s) saturated)"
    elif busy >= 0.85 * cores:
        who = "machine-bound (server + clients use all cores)"
    else:
        who = "NOT saturated: the load generator may be the limit"
    per_call_s = w.server_cpu / w.calls_per_s if w.calls_per_s else float("nan")
    per_call_c = w.client_cpu / w.calls_per_s if w.calls_per_s else float("nan")
    return (f"{name}: {w.calls_per_s:,.0f} calls/s; CPU cores used: server {w.server_cpu:.2f},"
            f" clients {w.client_cpu:.2f}, redis {w.other_cpu:.2f} (of {cores}); per call:"
            f" server {us(per_call_s)}, client {us(per_call_c)} -> {who}")


def best_window(server: L.Server, payloads: list[bytes], sz: Sizes, channels: int = 2,
                helpers: tuple[int, ...] = (), workers: int = 1) -> L.Window:
    wins = [L.throughput(server.pid, server.address, L.CHECK_PUSH, payloads, procs=sz.procs,
                         concurrency=sz.conc, channels=channels, duration=sz.duration,
                         helper_pids=helpers) for _ in range(max(1, sz.rounds - 1))]
    errors = sum(w.errors for w in wins)
    if errors:
        NOTES.append(f"{errors} calls failed during throughput windows against {server.address}")
    return max(wins, key=lambda w: w.calls_per_s)


def interleaved_latency(targets: dict[str, L.Server], payloads: dict[str, list[bytes]],
                        n: int, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in targets}
    for _ in range(rounds):
        for name, s in targets.items():
            out[name] += L.latency(s.address, L.CHECK_PUSH, payloads[name], n)
    return out


# -- sections ------------------------------------------------------------------------------

def trio(base: Path, prefix: str, pol: Path, redis: L.RedisServer) -> dict[str, L.Server]:
    """The empty handler, pdp on the embedded default and pdp with Redis counters, started
    and serving (the comparison of the floor and realistic sections)."""
    servers = {
        "floor": L.Server(base / f"{prefix}-floor"),
        "embedded": L.Server(base / f"{prefix}-embedded", pol),
        "redis": L.Server(base / f"{prefix}-redis", pol, ["--redis-url", redis.url]),
    }
    try:
        for s in servers.values():
            s.start()
        for s in servers.values():
            s.wait()
    except BaseException:
        for s in servers.values():
            s.stop()
        raise
    return servers


def floor_section(base: Path, redis: L.RedisServer, sz: Sizes) -> None:
    print("1. floor: empty handler vs CheckPush (embedded) vs CheckPush (Redis counters)")
    pol = base / "pol-floor"
    write_policy_dir(pol, {"acme": 10})
    servers = trio(base, "s", pol, redis)
    try:
        payload = [push_bytes("acme", f"agent-{i}") for i in range(100)]
        _check_allowed(servers["redis"].address, payload[0])
        lat = interleaved_latency(servers, dict.fromkeys(servers, payload), sz.lat_n, sz.rounds)
        f50, f99 = L.pct(lat["floor"], 0.5), L.pct(lat["floor"], 0.99)
        row("floor", "empty handler p50 / p99 (sequential)", f"{us(f50)} / {us(f99)}", "1.00")
        for name, target in (("embedded", 1.3), ("redis", 1.6)):
            p50, p99 = L.pct(lat[name], 0.5), L.pct(lat[name], 0.99)
            row("floor", f"CheckPush {name} p50", us(p50), f"{p50 / f50:.2f}x",
                f"<= {target}x", verdict(p50 / f50 <= target))
            row("floor", f"CheckPush {name} p99", us(p99), f"{p99 / f99:.2f}x")
        wins = {}
        for name, s in servers.items():
            helpers = (redis.proc.pid,) if name == "redis" and redis.proc else ()
            wins[name] = best_window(s, payload, sz, helpers=helpers)
            NOTES.append(load_note(f"throughput {name}", wins[name]))
        def cpu_per_call(w: Any) -> float:  # a window can come back empty on a loaded box
            return float(w.server_cpu / w.calls_per_s) if w.calls_per_s else 0.0

        extra = {k: cpu_per_call(wins[k]) - cpu_per_call(wins["floor"])
                 for k in ("embedded", "redis")}
        if L.pct(lat["embedded"], 0.5) / f50 > 1.3 or L.pct(lat["redis"], 0.5) / f50 > 1.6:
            NOTES.append(
                "floor: why the p50 targets are missed: pdp spends"
                f" {us(extra['embedded'])} (embedded) / {us(extra['redis'])} (Redis) of server"
                " CPU per call above the empty handler's, while the whole floor round trip is"
                f" {us(f50)}; a 1.3x target leaves {us(0.3 * f50)}. Where that CPU goes, and the"
                " fixes: bench/README.md, 'Profile of the decision path'.")
        for name, w in wins.items():
            row("floor", f"throughput {name} (calls/s)", f"{w.calls_per_s:,.0f}",
                f"{w.calls_per_s / wins['floor'].calls_per_s:.2f}x")
            row("floor", f"loaded p50 / p99 {name}", f"{ms(w.p50)} / {ms(w.p99)}",
                f"{w.p50 / wins['floor'].p50:.2f}x")
    finally:
        for s in servers.values():
            s.stop()


def realistic_section(base: Path, redis: L.RedisServer, sz: Sizes) -> None:
    print("1b. realistic: examples/policies + examples/requests/push-allow.yaml, floor vs pdp")
    pol = base / "pol-real"
    write_realistic_policy_dir(pol)
    servers = trio(base, "s-real", pol, redis)
    try:
        # Sequential calls: the example request to 100 agents in turn; load: the request as is.
        payload = [realistic_push_bytes(f"agent-eu-{i}") for i in range(100)]
        one = realistic_push_bytes()
        _check_allowed(servers["embedded"].address, one)
        _check_allowed(servers["redis"].address, one)
        lat = interleaved_latency(servers, dict.fromkeys(servers, payload), sz.lat_n, sz.rounds)
        f50, f99 = L.pct(lat["floor"], 0.5), L.pct(lat["floor"], 0.99)
        row("realistic", "empty handler p50 / p99 (sequential)", f"{us(f50)} / {us(f99)}",
            "1.00")
        targets = {"embedded": (1.5, 0.6), "redis": (1.8, 0.5)}
        for name, (p50_max, _) in targets.items():
            p50, p99 = L.pct(lat[name], 0.5), L.pct(lat[name], 0.99)
            row("realistic", f"CheckPush {name} p50", us(p50), f"{p50 / f50:.2f}x",
                f"<= {p50_max}x", verdict(p50 / f50 <= p50_max))
            row("realistic", f"CheckPush {name} p99", us(p99), f"{p99 / f99:.2f}x")
        h2 = L.have_h2load()
        # Interleaved rounds (floor, embedded, redis, floor, ...): the best window of each.
        runs: dict[str, list[L.Window]] = {k: [] for k in servers}
        for _ in range(max(1, sz.rounds - 1)):
            for name, s in servers.items():
                helpers = (redis.proc.pid,) if name == "redis" and redis.proc else ()
                if h2:
                    runs[name].append(L.h2load_throughput(
                        s.pid, s.address, L.CHECK_PUSH, one, connections=4, streams=8,
                        duration=sz.duration + 1, helper_pids=helpers))
                else:
                    runs[name].append(L.throughput(
                        s.pid, s.address, L.CHECK_PUSH, payload, procs=sz.procs,
                        concurrency=sz.conc, channels=2, duration=sz.duration,
                        helper_pids=helpers))
        wins = {k: max(v, key=lambda w: w.calls_per_s) for k, v in runs.items()}
        errors = sum(w.errors for v in runs.values() for w in v)
        if errors:
            NOTES.append(f"realistic: {errors} calls failed during the throughput windows")
        floor_rate = wins["floor"].calls_per_s

        def per_call(w: L.Window) -> float:
            return w.server_cpu / w.calls_per_s if w.calls_per_s else float("nan")

        for name, w in wins.items():
            ratio = w.calls_per_s / floor_rate if floor_rate else float("nan")
            minimum = targets.get(name, (0.0, 0.0))[1]
            row("realistic", f"throughput {name} (calls/s)", f"{w.calls_per_s:,.0f}",
                f"{ratio:.2f}x", f">= {minimum}x" if minimum else "",
                verdict(ratio >= minimum) if minimum else "")
            row("realistic", f"  server CPU per call, {name}", us(per_call(w)),
                f"{per_call(w) / per_call(wins['floor']):.2f}x")
            NOTES.append(load_note(f"realistic {name}", w))
        NOTES.append("realistic: load generator: " + (
            "h2load (C, nghttp2-client), 4 connections x 8 streams, the request repeated"
            if h2 else f"Python client processes ({sz.procs} x {sz.conc} in flight; install"
            " nghttp2-client for h2load, which leaves the server more of the machine)"))
    finally:
        for s in servers.values():
            s.stop()


def _check_allowed(address: str, payload: bytes) -> None:
    import grpc

    from pdp.v1 import decision_pb2 as dpb

    with grpc.insecure_channel(address) as ch:
        r = dpb.CheckPushResponse.FromString(ch.unary_unary(L.CHECK_PUSH)(payload, timeout=10))
    if r.decision.outcome != 1:  # OUTCOME_ALLOW
        raise SystemExit(f"bench workload is denied, fix the workload: {r.decision.reasons}")


def step_section(base: Path, redis: L.RedisServer, sz: Sizes) -> None:
    import grpc

    from pdp.v1 import decision_pb2 as dpb

    n = sz.agents
    print(f"2. rollout step: {n} agents, 10 policies (CEL, typed, counters in Redis)")
    pol = base / "pol-step"
    write_policy_dir(pol, {"step": 10}, agent_cooldown=True)
    pdp = L.Server(base / "s-step", pol, ["--redis-url", redis.url]).start()
    floor = L.Server(base / "s-step-floor").start()
    try:
        pdp.wait()
        floor.wait()
        batch_times, floor_times, allowed = [], [], []
        back_to_back: list[float] = []
        denied: dict[str, int] = {}
        with grpc.insecure_channel(pdp.address) as ch, \
                grpc.insecure_channel(floor.address) as fch:
            call = ch.unary_unary(L.CHECK_PUSH_BATCH)
            fcall = fch.unary_unary(L.CHECK_PUSH_BATCH)
            for rep in range(sz.step_reps + 1):  # the first is a warm-up
                body = batch_request("step", [f"b{rep}-agent-{i}" for i in range(n)])
                data = body.SerializeToString()  # type: ignore[attr-defined]
                # Steps of a rollout are minutes apart: each call starts on an idle server
                # (the audit records of the previous step are written after its answer).
                L.wait_idle(pdp.pid)
                t0 = time.perf_counter()
                resp = call(data, timeout=30)
                t1 = time.perf_counter()
                L.wait_idle(pdp.pid)  # the floor's call does not share the CPU with pdp's
                t1b = time.perf_counter()
                fcall(data, timeout=30)
                t2 = time.perf_counter()
                if rep:
                    batch_times.append(t1 - t0)
                    floor_times.append(t2 - t1b)
                    out = dpb.CheckPushBatchResponse.FromString(resp)
                    allowed.append(out.allowed_count)
                    for d in out.decisions:
                        if d.decision.reasons:
                            why = d.decision.reasons[0].message
                            denied[why] = denied.get(why, 0) + 1
            # The same, back to back (not a rollout's pace): each call also competes with
            # the previous one's audit records. Shown for comparison, no target.
            bodies = [batch_request("step", [f"c{rep}-agent-{i}" for i in range(n)])
                      .SerializeToString() for rep in range(sz.step_reps)]  # type: ignore
            for data in bodies:
                t0 = time.perf_counter()
                call(data, timeout=30)
                back_to_back.append(time.perf_counter() - t0)
        seq_payload = [push_bytes("step", f"s-agent-{i}") for i in range(n)]
        seq = L.latency(pdp.address, L.CHECK_PUSH, seq_payload, n, warmup=0)
        seq_total = sum(seq)
        b = statistics.median(batch_times)
        row("step", f"CheckPushBatch {n} agents (median of {len(batch_times)})", ms(b), "",
            "<= 30 ms" if n == 1000 else "", verdict(b <= 0.030) if n == 1000 else "")
        row("step", "  same request to the empty handler", ms(statistics.median(floor_times)),
            f"{b / statistics.median(floor_times):.1f}x")
        row("step", "  per agent in the batch", us(b / n))
        row("step", f"  back to back, no pause (median of {len(back_to_back)})",
            ms(statistics.median(back_to_back)))
        row("step", f"{n} sequential CheckPush calls", ms(seq_total),
            f"{seq_total / b:.1f}x", ">= 20x", verdict(seq_total / b >= 20))
        if min(allowed) != n:
            NOTES.append(f"step: only {min(allowed)} of {n} agents allowed in some batch"
                         " (expected all), so the batch timing is NOT a full allow path"
                         " (denied agents skip the counter call). Deny reasons over all batches: "
                         + "; ".join(f"{c} x {why!r}" for why, c in denied.items()))
        else:
            NOTES.append(f"step: every batch allowed all {n} agents (counters reserved in Redis)")
    finally:
        pdp.stop()
        floor.stop()


def workers_section(base: Path, redis: L.RedisServer, sz: Sizes) -> None:
    print("3. workers: --workers 1 vs --workers 2 (Redis counters), throughput")
    pol = base / "pol-workers"
    write_policy_dir(pol, {"acme": 10})
    payload = [push_bytes("acme", f"agent-{i}") for i in range(100)]
    wins: dict[int, L.Window] = {}
    # h2load (C) when installed: the Python clients use about half a core, which a second
    # worker on a 2-core machine needs. Same load (connections x streams) for both.
    h2 = L.have_h2load()
    for workers in (1, 2):
        s = L.Server(base / f"s-w{workers}", pol, ["--redis-url", redis.url], workers=workers)
        try:
            s.start().wait()
            helpers = (redis.proc.pid,) if redis.proc else ()
            if h2:
                _check_allowed(s.address, payload[0])
                runs = [L.h2load_throughput(s.pid, s.address, L.CHECK_PUSH, payload[0],
                                            connections=16, streams=8, duration=sz.duration + 1,
                                            helper_pids=helpers)
                        for _ in range(max(1, sz.rounds - 1))]
                if sum(w.errors for w in runs):
                    NOTES.append(f"{sum(w.errors for w in runs)} h2load calls failed"
                                 f" against {s.address}")
                wins[workers] = max(runs, key=lambda w: w.calls_per_s)
            else:
                wins[workers] = best_window(s, payload, sz, channels=4, helpers=helpers,
                                            workers=workers)
            NOTES.append(load_note(f"workers={workers}", wins[workers], workers))
        finally:
            s.stop()
    NOTES.append("workers: load generator: " + (
        "h2load (C, nghttp2-client), 16 connections x 8 streams, one request repeated"
        if h2 else "Python client processes (install nghttp2-client for h2load, which"
        " leaves the server more of the machine)"))
    r = wins[2].calls_per_s / wins[1].calls_per_s
    row("workers", "1 worker (calls/s)", f"{wins[1].calls_per_s:,.0f}", "1.00")
    row("workers", "2 workers (calls/s)", f"{wins[2].calls_per_s:,.0f}", f"{r:.2f}x",
        ">= 1.6x", verdict(r >= 1.6))
    cores = os.cpu_count() or 1
    if r < 1.6:
        used = wins[2].server_cpu + wins[2].client_cpu + wins[2].other_cpu
        NOTES.append(
            f"workers: 2 workers reached {r:.2f}x. With 2 workers the machine's {cores} cores are"
            f" shared by both workers, the client processes and redis-server ({used:.2f} cores"
            f" busy: server {wins[2].server_cpu:.2f}, clients {wins[2].client_cpu:.2f}, redis"
            f" {wins[2].other_cpu:.2f}); a second worker can only use the CPU the load generator,"
            " redis-server and the kernel's loopback networking leave free, and each call costs"
            f" the workers more CPU ({us(wins[2].server_cpu / wins[2].calls_per_s)} per call vs"
            f" {us(wins[1].server_cpu / wins[1].calls_per_s)} with one). Measure on a machine"
            " with spare cores (or with the clients elsewhere) to see the scaling of the server"
            " itself.")


def tenants_section(base: Path, sz: Sizes) -> dict[str, int]:
    print(f"4. tenants: policies per tenant {sz.per_tenant}, 1 vs {sz.tenants} tenants")
    rss: dict[str, int] = {}
    payload = [push_bytes("t0000", f"agent-{i}") for i in range(100)]
    first: float | None = None
    for per in sz.per_tenant:
        one = base / f"pol-t1-p{per}"
        many = base / f"pol-t{sz.tenants}-p{per}"
        write_policy_dir(one, {"t0000": per}, counters=True)
        others = {f"t{i:04d}": 10 for i in range(1, sz.tenants)}
        total = write_policy_dir(many, {"t0000": per, **others}, counters=True)
        servers = {"1": L.Server(base / f"s-t1-p{per}", one),
                   "many": L.Server(base / f"s-tmany-p{per}", many)}
        empty = None
        if per == sz.per_tenant[0]:
            (base / "pol-empty").mkdir(exist_ok=True)
            empty = L.Server(base / "s-empty", base / "pol-empty")
        try:
            for s in [*servers.values(), *([empty] if empty else [])]:
                s.start()
            t0 = time.monotonic()
            servers["many"].wait(timeout=600)
            load_s = time.monotonic() - t0
            for s in [servers["1"], *([empty] if empty else [])]:
                s.wait()
            n = max(30, sz.grid_n * 10 // per)
            lat = interleaved_latency(servers, dict.fromkeys(servers, payload), n, sz.rounds)
            p1, pm = L.pct(lat["1"], 0.5), L.pct(lat["many"], 0.5)
            first = first or p1
            row("tenants", f"{per} policies/tenant, 1 tenant p50", us(p1), f"{p1 / first:.2f}x")
            row("tenants", f"{per} policies/tenant, {sz.tenants} tenants p50", us(pm),
                f"{pm / p1:.2f}x", "~1.0x", verdict(pm / p1 <= 1.25))
            NOTES.append(f"tenants: {total} policies ({sz.tenants} tenants, {per} for the measured"
                         f" tenant) took {load_s:.1f} s from process start to SERVING")
            if per == 10:
                if empty:
                    L.latency(empty.address, L.CHECK_PUSH, payload, 200)
                    rss["none"] = L.rss_kib(empty.pid)
                L.latency(servers["many"].address, L.CHECK_PUSH, payload, 200)
                rss["loaded"] = L.rss_kib(servers["many"].pid)
                rss["loaded_hwm"] = L.rss_kib(servers["many"].pid, "VmHWM")
                rss["count"] = total
        finally:
            for s in [*servers.values(), *([empty] if empty else [])]:
                s.stop()
    return rss


def memory_section(rss: dict[str, int]) -> None:
    print("5. memory: server RSS with policies loaded vs none")
    if "none" not in rss or "loaded" not in rss:
        row("memory", "not measured (10 policies/tenant not in the grid)", "")
        return
    none, loaded, n = rss["none"], rss["loaded"], rss["count"]
    row("memory", "RSS, built-ins only", f"{none / 1024:,.1f} MiB", "1.00")
    row("memory", f"RSS, {n:,} policies loaded", f"{loaded / 1024:,.1f} MiB",
        f"{loaded / none:.2f}x")
    row("memory", "  per policy", f"{(loaded - none) / n:,.1f} KiB")
    row("memory", f"  peak RSS (VmHWM), {n:,} policies", f"{rss['loaded_hwm'] / 1024:,.1f} MiB")


# -- output --------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    import grpc

    try:
        import redis

        redis_v = redis.__version__
    except Exception:  # pragma: no cover
        redis_v = "?"
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cores": str(os.cpu_count()), "cpu": model or platform.processor(),
            "python": platform.python_version(), "grpcio": grpc.__version__,
            "redis-py": redis_v, "platform": platform.platform()}


def write_results(info: dict[str, str], quick: bool, elapsed: float) -> None:
    lines = ["# pdp benchmark results", "",
             "Written by `python bench/suite.py" + (" --quick" if quick else "") + "`."
             " Every ratio is against a baseline measured in the same run.", ""]
    if quick:
        lines += ["**Quick run (tiny sizes, smoke test): the figures are not meaningful.**", ""]
    lines += [f"- date: {info['date']} (suite took {elapsed:.0f} s)",
              f"- machine: {info['cores']} cores, {info['cpu']}, {info['platform']}",
              f"- Python {info['python']}, grpcio {info['grpcio']}, redis-py {info['redis-py']}",
              "", "| section | metric | value | ratio | target | met |",
              "|---|---|---|---|---|---|"]
    for r in ROWS:
        lines.append(f"| {r.section} | {r.metric.strip()} | {r.value} | {r.ratio} | {r.target}"
                     f" | {r.met} |")
    missed = [r for r in ROWS if r.met == "MISSED"]
    lines += ["", "## Targets", ""]
    if missed:
        lines += [f"- **missed**: {r.section} / {r.metric.strip()}: {r.value} ({r.ratio},"
                  f" target {r.target})" for r in missed]
    lines += [f"- met: {r.section} / {r.metric.strip()} ({r.ratio or r.value}, target"
              f" {r.target})" for r in ROWS if r.met == "met"]
    lines += ["", "## Load generator and notes", ""] + [f"- {n}" for n in NOTES]
    lines += ["", "How the numbers are made: see bench/README.md.", ""]
    kept = adversarial_block()
    if kept:
        lines += [kept, ""]
    RESULTS.write_text("\n".join(lines))


ADV_START, ADV_END = "<!-- adversarial:start -->", "<!-- adversarial:end -->"


def adversarial_block() -> str:
    """The section bench/adversarial.py keeps in RESULTS.md, as it is: this suite does not
    measure it, so a rewrite of the file must not lose it."""
    try:
        text = RESULTS.read_text()
    except OSError:
        return ""
    start, end = text.find(ADV_START), text.find(ADV_END)
    return text[start:end + len(ADV_END)] if 0 <= start < end else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, < 60 s)")
    ap.add_argument("--only", default="", help="comma list of sections: floor,real,step,"
                                               "workers,tenants (tenants includes memory)")
    args = ap.parse_args(argv)
    sz = QUICK if args.quick else FULL
    only = set(filter(None, args.only.split(",")))
    info = machine()
    print(f"pdp bench suite {'(quick) ' if args.quick else ''}- {info['date']}, {info['cores']}"
          f" cores, Python {info['python']}, grpcio {info['grpcio']}")
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="pdp-bench-"))
    redis = L.RedisServer().start()
    try:
        if not only or "floor" in only:
            floor_section(base, redis, sz)
        if not only or "real" in only:
            realistic_section(base, redis, sz)
        if not only or "step" in only:
            step_section(base, redis, sz)
        if not only or "workers" in only:
            workers_section(base, redis, sz)
        if not only or "tenants" in only:
            memory_section(tenants_section(base, sz))
    finally:
        L.close_pool()
        redis.close()
        shutil.rmtree(base, ignore_errors=True)
    elapsed = time.monotonic() - started
    print("\nload generator / notes:")
    for n in NOTES:
        print(f"  - {n}")
    write_results(info, args.quick, elapsed)
    print(f"\nwrote {RESULTS.relative_to(ROOT)} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
