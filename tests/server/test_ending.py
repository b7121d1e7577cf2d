"""A refused call ends without grpc's abort (pdp/server/ending.py), so what it held (the
request, what was parsed from it) is freed when the call returns, not left in a reference
cycle for the collector."""

from __future__ import annotations

import asyncio
import gc
import types
from pathlib import Path
from typing import Any

import grpc
import pytest

from pdp.server import ending
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.procs import free_port


class Aborting:
    """A servicer context whose abort records what it was given."""

    def __init__(self) -> None:
        self.aborted: tuple[Any, ...] | None = None

    async def abort(self, code: grpc.StatusCode, details: str, trailing: Any = ()) -> None:
        self.aborted = (code, details, trailing)
        raise RuntimeError("aborted")


async def test_under_the_stack_end_raises_the_status() -> None:
    token = ending.ends_here()
    try:
        with pytest.raises(ending.CallEnded) as info:
            await ending.end(Aborting(), grpc.StatusCode.INVALID_ARGUMENT,
                             "agent.id: required", (("k", "v"),))
    finally:
        ending.release(token)
    assert (info.value.code, info.value.details, info.value.trailing) == (
        grpc.StatusCode.INVALID_ARGUMENT, "agent.id: required", (("k", "v"),))
    assert not isinstance(info.value, Exception)  # `except Exception` does not swallow it


async def test_elsewhere_end_aborts_as_before() -> None:
    ctx = Aborting()
    with pytest.raises(RuntimeError, match="aborted"):
        await ending.end(ctx, grpc.StatusCode.UNAVAILABLE, "shutting down")
    assert ctx.aborted == (grpc.StatusCode.UNAVAILABLE, "shutting down", ())


#: The modules a unary call passes through (background tasks elsewhere in pdp/server, e.g.
#: the policy reloader, are not this test's business).
CALL_PATH = ("stack.py", "edges.py", "services.py", "limits.py", "ending.py", "auth.py",
             "roles.py")


def frames_left(call: Any, n: int) -> list[str]:
    """The frames of the server's call path that only the cyclic collector would free,
    after ``n`` calls (none collected meanwhile)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(n):
            call()
        gc.collect()
        return [f.f_code.co_name for f in gc.garbage if isinstance(f, types.FrameType)
                and "/pdp/server/" in f.f_code.co_filename
                and f.f_code.co_filename.endswith(CALL_PATH)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_a_refused_call_leaves_nothing_for_the_collector(
        tmp_path: Path) -> None:
    from pdp.logging import configure_logging
    from pdp.server.app import start, stop
    from pdp.settings import Settings

    configure_logging("warning", "json")
    policies = tmp_path / "policies"
    policies.mkdir()
    address = f"127.0.0.1:{free_port()}"
    running = await start(Settings(listen=address, policy_dir=str(policies),
                                   policy_store=f"sqlite:{tmp_path / 'p.sqlite3'}",
                                   audit_file=str(tmp_path / "audit.jsonl"),
                                   http_listen="", reflection=False))
    try:

        def client() -> list[str]:
            with grpc.insecure_channel(address) as ch:
                push = dgrpc.DecisionServiceStub(ch).CheckPush
                ok = dpb.CheckPushRequest(tenant="t", agent=cpb.Agent(id="a1"),
                                          config=cpb.Config(yaml="a: 1"))
                bad = dpb.CheckPushRequest(tenant="t", agent=cpb.Agent(id=""),
                                           config=cpb.Config(yaml="a: 1"))

                def refused() -> None:
                    with pytest.raises(grpc.RpcError) as info:
                        push(bad, timeout=30)
                    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert "agent.id" in (info.value.details() or "")

                push(ok, timeout=30)
                refused()  # warm-up: caches, first-call allocations
                return frames_left(refused, 20)

        left = await asyncio.to_thread(client)
    finally:
        await stop(running, 1.0)
    # With grpc's abort, each refused call left the stack's and the servicer's frames (and
    # what they held) in a cycle with the abort's exception.
    assert left == [], left
