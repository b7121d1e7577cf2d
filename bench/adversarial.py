"""Issue 16: the adversarial corpus through a real `pdp serve`, into bench/RESULTS.md.

    python bench/adversarial.py            # full: 5 runs per case, 10 000 decisions for RSS
    python bench/adversarial.py --quick    # 2 runs per case, 300 decisions, shorter windows

Sections (every ratio against a baseline measured in the same run; the machine is noisy):

1. cases     every policy case (bench/adversarial/policies/*.yaml, admitted through the admin
             API) and every input (bench/adversarial/inputs.py): what happened, the slowest
             server-side `Decision.elapsed` and client-side latency; target: answered (deny or
             INVALID_ARGUMENT) within deadline + 5 ms server-side.
2. memory    server VmRSS growth over N adversarial decisions (after one warm-up pass);
             target <= 64 MiB.
3. benign    p99 of benign CheckPush (10 policies) alone vs with adversarial load alongside
             (another process: two callers flat out, then one), in alternating windows;
             target <= 2x. Control: the same with ordinary calls (another tenant's,
             allowed) at the two callers' rate, to separate what adversarial inputs cost
             from what any load costs here.
4. health    grpc.health.v1 Check latency while 1 000-agent steps with a slow policy run;
             target: every check <= 50 ms.
5. draft     live p50 of a tenant with a runaway draft vs the same tenant without it
             (interleaved rounds); target: same outcome, p50 within 10 %.

The section between <!-- adversarial:start --> and <!-- adversarial:end --> in
bench/RESULTS.md is replaced; the rest of the file is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import _load as L  # noqa: E402
from _workload import push_bytes, tenant_policies  # noqa: E402
from adversarial import corpus as C  # noqa: E402
from adversarial import inputs as I  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
START, END = "<!-- adversarial:start -->", "<!-- adversarial:end -->"
DEADLINE_MS = 50.0  # the server default (--deadline-ms)
HEALTH = "/grpc.health.v1.Health/Check"

BENIGN, LIVE, LIVE_DRAFT, SLOW = "bench-benign", "bench-live", "bench-live-draft", "bench-slow"
RUNAWAY_DRAFT = f"""\
tenant: {LIVE_DRAFT}
name: runaway-draft
status: draft
checkpoints: [push, auto_apply]
rule:
  cel:
    deny: '[{", ".join(map(str, range(100)))}].all(a, [{", ".join(map(str, range(100)))}].all(b,
      [{", ".join(map(str, range(100)))}].all(c, a + b + c >= 0)))'
"""
# Per agent (reads agent.id, so it is not shared across the step): 1 000 comparisons.
SLOW_POLICY = f"""\
tenant: {SLOW}
name: slow-per-agent
checkpoints: [push]
rule:
  cel:
    deny: 'config.items.exists(x, x == agent.id.size() + 1000000)'
"""


def ms(s: float | None) -> str:
    return "—" if s is None else f"{s * 1e3:,.1f} ms"


def pct(xs: list[float], q: float) -> float:
    return L.pct(xs, q) if xs else float("nan")


# -- 1. cases ----------------------------------------------------------------------------------

def run_cases(h: C.Harness, cases: list[C.PolicyCase], reps: int) -> list[list[str]]:
    rows = []
    limit = (DEADLINE_MS + 5) / 1e3
    for case in cases:
        runs = [h.check_case(case) for _ in range(reps if h.admission[case.id].kind
                                                    == "admitted" else 1)]
        rows.append(_row(case.family, case.id, case.expect, runs, case.expect, limit,
                         admission=h.admission[case.id]))
        print(" | ".join(rows[-1]), flush=True)
    for inp in I.INPUTS:
        payload = inp.build()
        runs = [h.call(inp.method, payload) for _ in range(reps)]
        rows.append(_row("input", inp.id, inp.expect, runs, "deny", limit))
        print(" | ".join(rows[-1]), flush=True)
    return rows


def _row(family: str, cid: str, expect: str, runs: list[C.Result], rule: str, limit: float,
         admission: C.Result | None = None) -> list[str]:
    last = runs[-1]
    problems = {p for r in runs if (p := C.problem(r, rule))}
    server = [r.server_s for r in runs if r.server_s is not None]
    slow_server = max(server) if server else None
    slow_client = max(r.client_s for r in runs)
    adm = "—" if admission is None else (
        "refused" if admission.kind == "refused" else
        "admitted" if admission.kind == "admitted" else admission.kind)
    answered = last.kind in ("deny", "invalid_argument", "refused") or (
        rule == "shadow" and last.kind == "allow")
    in_time = (slow_server is None or slow_server <= limit) if answered else False
    if last.kind == "refused":
        timing = "n/a (refused)"
    elif last.kind == "invalid_argument":
        timing = "met" if slow_client <= limit else "client-side over"
    else:
        timing = "met" if in_time else "MISSED"
    return [family, cid, expect, adm, last.kind, ms(slow_server), ms(slow_client), timing,
            "ok" if not problems else "FAIL: " + "; ".join(sorted(problems))[:200],
            last.short(140)]


# -- 2. memory ---------------------------------------------------------------------------------

def adversarial_payloads(h: C.Harness, cases: list[C.PolicyCase]) -> list[tuple[str, bytes]]:
    out = [(I.CHECK_PUSH, c.request()) for c in cases
           if h.admission[c.id].kind == "admitted"]
    out += [(i.method, i.build()) for i in I.INPUTS]
    return out


def memory_section(h: C.Harness, payloads: list[tuple[str, bytes]], n: int) -> dict[str, Any]:
    for method, p in payloads:  # warm-up: one pass
        h.call(method, p)
    before = L.rss_kib(h.pid)
    t0 = time.monotonic()
    kinds: dict[str, int] = {}
    for i in range(n):
        method, p = payloads[i % len(payloads)]
        kind = h.call(method, p).kind
        kinds[kind] = kinds.get(kind, 0) + 1
    L.wait_idle(h.pid)
    after = L.rss_kib(h.pid)
    return {"before": before, "after": after, "n": n, "s": time.monotonic() - t0,
            "kinds": kinds, "hwm": L.rss_kib(h.pid, "VmHWM"), "restarts": h.restarts}


# -- 3. benign alongside adversarial load --------------------------------------------------------

def _load_worker(address: str, token: str, payloads: list[tuple[str, bytes]], threads: int,
                 counter: Any, on: Any, stop: Any, rate: float = 0.0) -> None:
    """``threads`` closed loops over ``payloads`` while ``on`` is set, until ``stop`` is; with
    ``rate`` (calls/s, all threads together) each thread paces itself to its share instead
    of going flat out. Idle (not connected anew) while ``on`` is clear, so the benign
    windows alone and alongside can alternate in one run."""
    import grpc

    ch = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20),
                                                 ("grpc.max_receive_message_length", 64 << 20)])
    md = (("authorization", f"Bearer {token}"),)

    def loop(k: int) -> None:
        i = k
        gap = threads / rate if rate > 0 else 0.0
        due = time.monotonic()
        while not stop.value:
            if not on.value:
                time.sleep(0.005)
                due = time.monotonic()
                continue
            if gap:
                due += gap
                time.sleep(max(0.0, due - time.monotonic()))
            method, p = payloads[i % len(payloads)]
            i += threads
            with contextlib.suppress(grpc.RpcError):
                ch.unary_unary(method)(p, timeout=30, metadata=md)
            with counter.get_lock():
                counter.value += 1

    ts = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ch.close()


def benign_latency(h: C.Harness, tenant: str, n: int) -> tuple[list[float], set[str]]:
    payload = push_bytes(tenant)  # the suite's workload: every one of its policies allows it
    lat, kinds = [], set()
    for _ in range(n):
        r = h.call(I.CHECK_PUSH, payload)
        lat.append(r.client_s)
        kinds.add(r.kind)
    return lat, kinds


def benign_section(h: C.Harness, payloads: list[tuple[str, bytes]], n: int,
                   rounds: int) -> dict[str, Any]:
    """Per load: ``rounds`` pairs of benign windows, alone then alongside (the load process
    idles, then runs), so both sides of each ratio share the machine's drift."""
    assert h.people is not None
    benign_latency(h, BENIGN, 50)
    ctx = multiprocessing.get_context("spawn")
    counter, on, stop = ctx.Value("l", 0), ctx.Value("b", 0), ctx.Value("b", 0)
    small = [(m, p) for m, p in payloads if len(p) < 1 << 20]  # the client must keep up
    chunk = max(50, n // rounds)
    kinds: set[str] = set()

    def phase(load: list[tuple[str, bytes]], rate: float, threads: int = 2
              ) -> tuple[list[float], list[float], float]:
        counter.value, on.value, stop.value = 0, 0, 0
        proc = ctx.Process(target=_load_worker, args=(
            h.server.address, h.people.tokens["engine"], load, threads, counter, on, stop,
            rate))
        proc.start()
        time.sleep(2.0)  # the worker imports and connects
        alone: list[float] = []
        along: list[float] = []
        calls, busy = 0, 0.0
        for _ in range(rounds):
            on.value = 0
            time.sleep(0.2)  # its calls in flight finish
            L.wait_idle(h.pid, limit_s=5.0)  # and the server is done with their aftermath
            lat, k = benign_latency(h, BENIGN, chunk)
            alone += lat
            kinds.update(k)
            on.value = 1
            time.sleep(0.3)  # the load is going
            c0, t0 = counter.value, time.monotonic()
            lat, k = benign_latency(h, BENIGN, chunk)
            along += lat
            kinds.update(k)
            calls += counter.value - c0
            busy += time.monotonic() - t0
        stop.value = 1
        proc.join()
        return alone, along, calls / busy

    two = phase(small, 0.0)
    # The control: ordinary calls (another tenant's, allowed) at the adversarial load's rate,
    # to tell what the adversarial inputs cost from what any load costs on this machine.
    ordinary = phase([(I.CHECK_PUSH, push_bytes(LIVE))], two[2])
    # One adversarial caller (a closed loop, as the corpus runs) instead of two flat out:
    # two saturate a 2-core machine, where any load of that rate costs the benign tail.
    one = phase(small, 0.0, threads=1)
    return {"two": two, "ordinary": ordinary, "one": one, "kinds": kinds}


# -- 4. health during a slow 1 000-agent step ------------------------------------------------------

def health_section(h: C.Harness, seconds: float) -> dict[str, Any]:
    import grpc
    from grpc_health.v1 import health_pb2

    assert h.people is not None
    one = I.push(SLOW, I.config_yaml(["items-1k"]))
    from pdp.v1 import common_pb2 as cpb
    from pdp.v1 import decision_pb2 as dpb

    req = dpb.CheckPushBatchRequest(tenant=SLOW, checkpoint=cpb.CHECKPOINT_PUSH,
                                    rollout=one.rollout, change=one.change, config=one.config)
    for i in range(1000):
        req.agents.add(id=f"agent-{i:04d}", labels=I.AGENT_LABELS, group="eu-prod")
    batch = req.SerializeToString()
    stop = threading.Event()
    steps: list[float] = []
    kinds: set[str] = set()

    last: list[bytes] = []

    def stepper() -> None:
        # Raw bytes only: parsing a 1 000-decision response in Python here would hold this
        # (client) process's GIL for tens of milliseconds and delay the health checks sent
        # from the same process, which would be measured as the server's lateness.
        while not stop.is_set():
            t0 = time.perf_counter()
            raw = h._unary(I.CHECK_PUSH_BATCH, batch, "engine")
            steps.append(time.perf_counter() - t0)
            last[:] = [raw]

    probe = grpc.insecure_channel(h.server.address)
    check = probe.unary_unary(HEALTH)
    hreq = health_pb2.HealthCheckRequest().SerializeToString()
    check(hreq, timeout=5)
    t = threading.Thread(target=stepper)
    t.start()
    lat: list[float] = []
    failures = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            check(hreq, timeout=5)
        except grpc.RpcError:
            failures += 1
        lat.append(time.perf_counter() - t0)
        time.sleep(0.005)
    stop.set()
    t.join()
    probe.close()
    if last:  # the outcome, from the last step's answer (parsed once the window is over)
        kinds.add(C.decision_result(I.RESPONSES[I.CHECK_PUSH_BATCH].FromString(last[0]),
                                    0.0).kind)
    return {"lat": lat, "failures": failures, "steps": steps, "kinds": kinds}


# -- 5. runaway draft vs live ----------------------------------------------------------------------

def draft_section(h: C.Harness, n: int, rounds: int) -> dict[str, Any]:
    lat: dict[str, list[float]] = {LIVE: [], LIVE_DRAFT: []}
    kinds: dict[str, set[str]] = {LIVE: set(), LIVE_DRAFT: set()}
    for t in lat:
        benign_latency(h, t, 30)
    for _ in range(rounds):
        for t in lat:
            xs, ks = benign_latency(h, t, n)
            lat[t] += xs
            kinds[t] |= ks
    return {"lat": lat, "kinds": kinds}


# -- report ----------------------------------------------------------------------------------------

def write_results(lines: list[str]) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# pdp benchmark results\n"
    block = "\n".join([START, *lines, END])
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def _benign_row(ph: tuple[list[float], list[float], float], what: str, load: str, *,
                target: bool) -> str:
    alone, along, rate = ph
    a99, b99 = pct(alone, 0.99), pct(along, 0.99)
    return (f"| {what} | {ms(b99)} vs {ms(a99)} alone, windows interleaved (p50"
            f" {ms(pct(along, 0.5))} vs {ms(pct(alone, 0.5))}; {rate:.0f} {load} calls/s"
            f" alongside) | {b99 / a99:.2f}x | {verdict(b99 / a99 <= 2) if target else ''} |")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def benign_only(cases: list[C.PolicyCase], n: int, rounds: int, server_args: list[str]) -> None:
    """Section 3 alone, for working on it: its three rows, printed."""
    extra = {"benign": tenant_policies(BENIGN, 10, counters=False),
             "live": tenant_policies(LIVE, 10, counters=False)}
    with tempfile.TemporaryDirectory(prefix="pdp-adv-") as tmp, \
            C.harness(Path(tmp), extra_policies=extra, args=server_args) as h:
        h.admit(cases)
        payloads = adversarial_payloads(h, cases)
        for method, p in payloads:  # every case once, as section 1 would have
            h.call(method, p)
        ben = benign_section(h, payloads, n, rounds)
    for key, load in (("two", "adversarial"), ("one", "adversarial"), ("ordinary", "ordinary")):
        print(_benign_row(ben[key], key, load, target=key != "ordinary"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, shorter windows")
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--benign-only", action="store_true",
                    help="only section 3 (benign alongside adversarial load); print, write nothing")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="with --benign-only: an extra `pdp serve` argument (repeatable), e.g."
                         " --server-arg=--bulk-lane-bytes=0")
    args = ap.parse_args()
    reps, rss_n, lat_n, rounds_b, health_s, rounds = (
        (2, 300, 200, 2, 2.0, 2) if args.quick else (5, 10_000, 2000, 4, 5.0, 3))
    t_start = time.monotonic()
    cases = C.load_cases()
    if args.benign_only:
        benign_only(cases, lat_n, rounds_b, args.server_arg)
        return
    extra = {"benign": tenant_policies(BENIGN, 10, counters=False),
             "live": tenant_policies(LIVE, 10, counters=False),
             "live-draft": tenant_policies(LIVE_DRAFT, 10, counters=False) + "---\n"
             + RUNAWAY_DRAFT,
             "slow": SLOW_POLICY}
    with tempfile.TemporaryDirectory(prefix="pdp-adv-") as tmp, \
            C.harness(Path(tmp), extra_policies=extra) as h:
        print(f"admitting {len(cases)} policy cases ...", flush=True)
        h.admit(cases)
        print("1. cases", flush=True)
        rows = run_cases(h, cases, reps)
        payloads = adversarial_payloads(h, cases)
        print(f"2. memory: {rss_n} adversarial decisions", flush=True)
        mem = memory_section(h, payloads, rss_n)
        print("3. benign alone vs alongside adversarial load", flush=True)
        ben = benign_section(h, payloads, lat_n, rounds_b)
        print("4. health during 1 000-agent steps with a slow policy", flush=True)
        hl = health_section(h, health_s)
        print("5. live p50 with vs without a runaway draft", flush=True)
        dr = draft_section(h, lat_n // 2, rounds)
        restarts = h.restarts

    fam: dict[str, int] = {}
    for c in cases:
        fam[c.family] = fam.get(c.family, 0) + 1
    ok_rows = [r for r in rows if r[8] == "ok"]
    timed = [r for r in rows if r[7] in ("met", "MISSED")]
    missed = [r for r in timed if r[7] == "MISSED"]
    growth_mib = (mem["after"] - mem["before"]) / 1024
    h99, hmax = pct(hl["lat"], 0.99), max(hl["lat"]) if hl["lat"] else float("nan")
    l50, d50 = pct(dr["lat"][LIVE], 0.5), pct(dr["lat"][LIVE_DRAFT], 0.5)
    same = dr["kinds"][LIVE] == dr["kinds"][LIVE_DRAFT] == {"allow"}

    lines = [
        "## Adversarial corpus (issue 16)", "",
        f"Written by `python bench/adversarial.py{' --quick' if args.quick else ''}` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC ({time.monotonic() - t_start:.0f} s;"
        f" {os.cpu_count()} cores, Python {platform.python_version()}). One `pdp serve`"
        f" (embedded default, deadline {DEADLINE_MS:.0f} ms); policy cases admitted through the"
        " admin API, each in its own tenant. Corpus: "
        + ", ".join(f"{k} {v}" for k, v in fam.items()) + f" = {len(cases)} policies;"
        f" {len(I.INPUTS)} inputs. Server restarts after a crash: {restarts}.", "",
        "| target | measured | ratio | met |", "|---|---|---|---|",
        f"| every case answered (refused / deny with reason / INVALID_ARGUMENT naming a field)"
        f" | {len(ok_rows)} of {len(rows)} | | {verdict(len(ok_rows) == len(rows))} |",
        f"| slowest answer <= deadline + 5 ms server-side | {len(timed) - len(missed)} of"
        f" {len(timed)} evaluated cases | | {verdict(not missed)} |",
        f"| RSS growth over {mem['n']:,} adversarial decisions <= 64 MiB |"
        f" {growth_mib:,.1f} MiB ({mem['before'] / 1024:,.0f} -> {mem['after'] / 1024:,.0f} MiB,"
        f" peak {mem['hwm'] / 1024:,.0f} MiB, {mem['s']:.0f} s) | | {verdict(growth_mib <= 64)} |",
        _benign_row(ben["two"], "benign p99 alongside adversarial load <= 2x alone: two"
                    " adversarial callers flat out", "adversarial", target=True),
        _benign_row(ben["one"], "benign p99 alongside adversarial load <= 2x alone: one"
                    " adversarial caller flat out", "adversarial", target=True),
        _benign_row(ben["ordinary"], "(control) benign p99 alongside ordinary calls at the"
                    " two callers' rate", "ordinary", target=False),
        f"| health check <= 50 ms during 1 000-agent steps with a slow policy | max"
        f" {ms(hmax)}, p99 {ms(h99)} over {len(hl['lat'])} checks ({hl['failures']} failed);"
        f" {len(hl['steps'])} steps, median {ms(pct(hl['steps'], 0.5))}, outcome"
        f" {'/'.join(sorted(hl['kinds']))} | | {verdict(hmax <= 0.05 and not hl['failures'])} |",
        f"| runaway draft: same live outcome, p50 within 10 % | {ms(d50)} vs {ms(l50)} without"
        f" (outcomes {sorted(dr['kinds'][LIVE_DRAFT])} vs {sorted(dr['kinds'][LIVE])}) |"
        f" {d50 / l50:.2f}x | {verdict(same and d50 / l50 <= 1.10)} |",
        "",
        f"Per case ({reps} runs each; slowest of the runs). `expected` is what a good server"
        " does; `happened` is the last run. Timing: server-side `Decision.elapsed` against"
        f" {DEADLINE_MS + 5:.0f} ms (INVALID_ARGUMENT carries no elapsed: client-side).", "",
        "| family | case | expected | admission | happened | slowest server | slowest client"
        " | in time | verdict | reason / detail |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows),
        "",
        f"Memory run outcomes: {mem['kinds']}.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_results(lines)
        print(f"\nwrote the adversarial section of {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
