"""Unary CheckPush, this checkout against an earlier commit, side by side in one run.

    python3 bench/ab_unary.py de83402              # sequential latency, embedded counters
    python3 bench/ab_unary.py de83402 --redis      # the same with Redis counters
    python3 bench/ab_unary.py de83402 --load       # h2load 4x8: calls/s and server CPU per call

Why: "no slower than before" cannot be read from two runs on a noisy machine (the same tree
measured twice here differs by 10-30 %). Both servers run at once, from their own trees, on
the suite's workload (10 policies, the floor section's requests), and the measurement
windows alternate between them (old first, then new first, ...), so drift hits both alike.
Prints each side's figures and the ratios new/old. The earlier commit is checked out into a
temporary git worktree, removed afterwards. Nothing is written to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import _load as L  # noqa: E402
from _workload import push_bytes, write_policy_dir  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ref", help="the earlier commit (e.g. de83402)")
    ap.add_argument("--redis", action="store_true", help="counters in Redis (one each)")
    ap.add_argument("--load", action="store_true", help="h2load throughput, not latency")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("-n", type=int, default=400, help="sequential calls per window")
    args = ap.parse_args()
    if args.load and not L.have_h2load():
        print("h2load is not installed (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    with L.old_and_new(args.ref, lambda d: write_policy_dir(d, {"acme": 10}),
                       redis=args.redis) as servers:
        run(servers, args)
    return 0


def run(servers: dict[str, L.Server], args: argparse.Namespace) -> None:
    order = list(servers.items())
    payloads = [push_bytes("acme", f"agent-{i}") for i in range(100)]
    if not args.load:
        lat: dict[str, list[float]] = {k: [] for k in servers}
        cpu_s: dict[str, float] = {k: 0.0 for k in servers}  # server CPU in the windows
        for r in range(args.rounds):
            for name, s in (order if r % 2 == 0 else order[::-1]):
                before = L.cpu_seconds(s.pid)
                lat[name] += L.latency(s.address, L.CHECK_PUSH, payloads, args.n)
                cpu_s[name] += L.cpu_seconds(s.pid) - before
        for name, v in lat.items():
            print(f"{name}: p50 {L.pct(v, 0.5) * 1e6:,.0f} µs  p99 {L.pct(v, 0.99) * 1e6:,.0f} µs"
                  f"  server CPU {cpu_s[name] / len(v) * 1e6:,.0f} µs per call ({len(v)} calls)")
        print(f"new/old: p50 {L.pct(lat['new'], 0.5) / L.pct(lat['old'], 0.5):.3f}"
              f"  p99 {L.pct(lat['new'], 0.99) / L.pct(lat['old'], 0.99):.3f}"
              f"  CPU per call {cpu_s['new'] / cpu_s['old']:.3f}")
        return
    res: dict[str, list[L.Window]] = {k: [] for k in servers}
    for _, s in order:  # warm-up
        L.h2load_throughput(s.pid, s.address, L.CHECK_PUSH, payloads[0], connections=4,
                            streams=8, duration=3)
    for r in range(args.rounds):
        for name, s in (order if r % 2 == 0 else order[::-1]):
            res[name].append(L.h2load_throughput(s.pid, s.address, L.CHECK_PUSH, payloads[0],
                                                 connections=4, streams=8, duration=5))
    rate = {k: statistics.median(w.calls_per_s for w in v) for k, v in res.items()}
    cpu = {k: statistics.median(w.server_cpu / w.calls_per_s for w in v) for k, v in res.items()}
    for name in servers:
        print(f"{name}: {rate[name]:,.0f} calls/s  server CPU {cpu[name] * 1e6:,.0f} µs per call")
    print(f"new/old: calls/s {rate['new'] / rate['old']:.3f}"
          f"  CPU per call {cpu['new'] / cpu['old']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
