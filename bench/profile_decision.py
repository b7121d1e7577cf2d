"""Profile the decision path in-process, without the network.

Builds the engine exactly as ``pdp.server.app.start()`` does (policies from a directory,
counters, audit log, config cache) and drives the real ``DecisionService`` servicer with a
stand-in gRPC context, so the profile covers request -> context -> evaluation -> response ->
audit (the audit writer task runs in the same loop, as in the server).

    python bench/profile_decision.py                 # unary CheckPush, in-process counters
    python bench/profile_decision.py --batch 1000    # one CheckPushBatch of 1 000 agents
    python bench/profile_decision.py --redis         # counters in a throwaway redis-server
    python bench/profile_decision.py --stages        # time each stage without cProfile

Prints the top functions by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _workload import ROOT, batch_request, push_bytes, write_policy_dir

sys.path.insert(0, str(ROOT))


class FakeContext:
    """The bits of grpc.aio.ServicerContext the servicer uses."""

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


async def build(policy_dir: Path, audit_file: Path, redis_url: str | None) -> Any:
    from pdp.logging import configure_logging
    from pdp.server.app import start
    from pdp.settings import Settings

    configure_logging("info", "json")  # what `pdp serve` does with the default settings

    # The policy store beside the audit file, not the default ``var/`` of the current
    # directory: a store left there by an earlier run would add its policies to this one.
    settings = Settings(listen="127.0.0.1:0", policy_dir=str(policy_dir),
                        policy_store=f"sqlite:{audit_file.parent / 'policies.sqlite3'}",
                        audit_file=str(audit_file), redis_url=redis_url, reflection=False,
                        http_listen="")
    return await start(settings)


async def run(args: argparse.Namespace, base: Path) -> None:
    from pdp.api import convert
    from pdp.engine.request import Caller
    from pdp.server.app import stop
    from pdp.server.services import DecisionService
    from pdp.v1 import decision_pb2 as dpb

    pol = base / "pol"
    write_policy_dir(pol, {"acme": args.policies}, agent_cooldown=bool(args.batch))
    running = await build(pol, base / "audit" / "audit.jsonl", args.redis_url)
    svc = DecisionService(running.engine, 0.05, 5000)
    ctx = FakeContext()
    # The servicers authorise the caller the auth interceptor names: name one here.
    from pdp.server.roles import Principal, begin_call
    begin_call(Principal("bench", {"*": frozenset({"checker"})}), "bench")
    try:
        if args.batch:
            reqs = []
            for rep in range(args.n + 1):
                data = batch_request("acme", [f"r{rep}-a{i}" for i in range(args.batch)])
                reqs.append(dpb.CheckPushBatchRequest.FromString(
                    data.SerializeToString()))  # type: ignore[attr-defined]
            await svc.CheckPushBatch(reqs[0], ctx)  # warm-up

            async def once(i: int) -> Any:
                return await svc.CheckPushBatch(reqs[i + 1], ctx)
        else:
            reqs = [dpb.CheckPushRequest.FromString(push_bytes("acme", f"agent-{i}"))
                    for i in range(100)]
            for i in range(200):
                await svc.CheckPush(reqs[i % 100], ctx)

            async def once(i: int) -> Any:
                return await svc.CheckPush(reqs[i % 100], ctx)

        if args.stages and args.batch:
            await batch_stages(running, svc, ctx, args)
            return
        if args.stages and not args.batch:
            n = args.n
            eng = running.engine
            t = {"convert request": 0.0, "engine.check": 0.0, "convert response": 0.0,
                 "whole servicer": 0.0}
            for i in range(n):
                r = reqs[i % 100]
                t0 = time.perf_counter()
                req = convert.check_push_request(r, Caller())
                t1 = time.perf_counter()
                d = await eng.check(req, 0.05, None)
                t2 = time.perf_counter()
                dpb.CheckPushResponse(decision=convert.decision_pb(d)).SerializeToString()
                t3 = time.perf_counter()
                await svc.CheckPush(r, ctx)
                t4 = time.perf_counter()
                t["convert request"] += t1 - t0
                t["engine.check"] += t2 - t1
                t["convert response"] += t3 - t2
                t["whole servicer"] += t4 - t3
            for k, v in t.items():
                print(f"{k:<20} {v / n * 1e6:8.1f} µs/decision")
            await running.audit.flush()
            return
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for i in range(args.n):
            await once(i)
        await running.audit.flush()  # include the audit writer's work for these decisions
        prof.disable()
        wall = time.perf_counter() - t0
        unit = args.batch or 1
        call = f"CheckPushBatch({args.batch})" if args.batch else "CheckPush"
        print(f"{args.n} x {call}"
              f": {wall / args.n * 1e3:.2f} ms per call under cProfile,"
              f" {wall / args.n / unit * 1e6:.0f} µs per decision (profiler overhead included)")
        for key in ("tottime", "cumulative"):
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats(key).print_stats(args.top)
            print(s.getvalue())
        if args.callers:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).print_callers(args.callers)
            print(s.getvalue())
    finally:
        await stop(running, 1.0)


#: Async durability: the records are built after the answer, so this stage holds them too.
AUDIT_STAGE = "audit: records, writer, fsync"


async def batch_stages(running: Any, svc: Any, ctx: Any, args: argparse.Namespace) -> None:
    """Per-stage wall time of a CheckPushBatch (fresh agent ids each repetition), the audit
    writer's share measured by waiting for it after each call."""
    from pdp.api import convert
    from pdp.engine.request import Caller
    from pdp.v1 import decision_pb2 as dpb

    eng = running.engine
    t = {"convert request": 0.0, "engine.check_batch": 0.0, "  of which counters": 0.0,
         "convert response": 0.0, AUDIT_STAGE: 0.0, "whole servicer": 0.0}
    real = eng.counters.reserve_batch

    async def timed_reserve(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await real(*a, **kw)
        finally:
            t["  of which counters"] += time.perf_counter() - t0

    eng.counters.reserve_batch = timed_reserve
    n = args.n
    for rep in range(n):
        data = batch_request("acme", [f"s{rep}-a{i}" for i in range(args.batch)])
        req = dpb.CheckPushBatchRequest.FromString(data.SerializeToString())  # type: ignore
        t0 = time.perf_counter()
        reqs = convert.check_push_batch_requests(req, Caller())
        t1 = time.perf_counter()
        decisions = await eng.check_batch(reqs, 0.05, None)
        t2 = time.perf_counter()
        out = dpb.CheckPushBatchResponse()
        convert.fill_batch_response(out, (a.id for a in req.agents), decisions)  # as served
        out.SerializeToString()
        t3 = time.perf_counter()
        await running.audit.flush()
        t4 = time.perf_counter()
        data = batch_request("acme", [f"w{rep}-a{i}" for i in range(args.batch)])
        req = dpb.CheckPushBatchRequest.FromString(data.SerializeToString())  # type: ignore
        t5 = time.perf_counter()
        await svc.CheckPushBatch(req, ctx)
        t6 = time.perf_counter()
        await running.audit.flush()
        for k, v in (("convert request", t1 - t0), ("engine.check_batch", t2 - t1),
                     ("convert response", t3 - t2), (AUDIT_STAGE, t4 - t3),
                     ("whole servicer", t6 - t5)):
            t[k] += v
    t["  of which counters"] /= 2
    for k, v in t.items():
        print(f"{k:<30} {v / n * 1e3:8.2f} ms/batch")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="calls to profile")
    ap.add_argument("--batch", type=int, default=0, help="agents per CheckPushBatch (0: unary)")
    ap.add_argument("--policies", type=int, default=10)
    ap.add_argument("--redis", action="store_true", help="counters in a throwaway redis-server")
    ap.add_argument("--stages", action="store_true", help="time the stages, no profiler")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--callers", default="", help="also print who calls functions matching"
                                                  " this regex")
    args = ap.parse_args()
    if args.batch and args.n == 2000:
        args.n = 10
    with tempfile.TemporaryDirectory(prefix="pdp-prof-") as tmp:
        os.chdir(tmp)  # relative default paths (e.g. the policy store under var/) stay in tmp
        redis = None
        args.redis_url = None
        if args.redis:
            from tests.support.procs import RedisServer

            redis = RedisServer().start()
            args.redis_url = redis.url
        try:
            asyncio.run(run(args, Path(tmp)))
        finally:
            if redis is not None:
                redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
