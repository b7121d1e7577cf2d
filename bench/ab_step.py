"""The 1 000-agent step, this checkout against an earlier commit, side by side in one run.

    python3 bench/ab_step.py de83402              # 20 steps each, Redis counters
    python3 bench/ab_step.py de83402 --steps 30

Why: a step's time on a shared 2-core machine swings by 2x between runs minutes apart (for
any tree), so "no slower than before" is read here, not from two suite runs: both servers
run at once from their own trees, each with its own redis-server, on the suite's step
workload (10 policies, agent cooldowns), and the steps alternate between them (old first,
then new first, ...), each starting on an idle server as a rollout's steps do. Prints the
median and fastest step of each and the ratio new/old. Run it with REF = HEAD for an A/A
reading of the harness's own noise. Nothing is written to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import _load as L  # noqa: E402
from _workload import batch_request, write_policy_dir  # noqa: E402


def main() -> int:
    import grpc

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ref", help="the earlier commit (e.g. de83402)")
    ap.add_argument("--steps", type=int, default=20, help="steps per server (after one warm-up)")
    ap.add_argument("--agents", type=int, default=1000)
    args = ap.parse_args()
    with L.old_and_new(args.ref, lambda d: write_policy_dir(d, {"step": 10},
                                                            agent_cooldown=True),
                       redis=True) as servers:
        channels = {k: grpc.insecure_channel(s.address) for k, s in servers.items()}
        calls = {k: c.unary_unary(L.CHECK_PUSH_BATCH) for k, c in channels.items()}
        times: dict[str, list[float]] = {k: [] for k in servers}
        order = list(servers)
        for rep in range(args.steps + 1):  # the first is a warm-up
            for name in (order if rep % 2 == 0 else order[::-1]):
                data = batch_request("step", [f"b{rep}-agent-{i}" for i in range(args.agents)])
                payload = data.SerializeToString()  # type: ignore[attr-defined]
                L.wait_idle(servers[name].pid)
                t0 = time.perf_counter()
                calls[name](payload, timeout=60)
                if rep:
                    times[name].append(time.perf_counter() - t0)
        for c in channels.values():
            c.close()
    for name, v in times.items():
        print(f"{name}: median {statistics.median(v) * 1e3:.1f} ms, fastest"
              f" {min(v) * 1e3:.1f} ms ({len(v)} steps of {args.agents} agents)")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"new/old: median {med['new'] / med['old']:.3f}, fastest"
          f" {min(times['new']) / min(times['old']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
