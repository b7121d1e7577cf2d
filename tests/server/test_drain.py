"""SIGTERM drains: calls being handled get their real answer, calls that come after are
refused at once with UNAVAILABLE, open streams end, and the process exits 0 without waiting
out the grace period."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp.client import push_request
from pdp.server.edges import SHUTTING_DOWN
from pdp.v1 import audit_pb2 as apb
from pdp.v1 import audit_pb2_grpc
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.server.test_server_e2e import decision_events
from tests.support.pdpserver import PdpServer

PATIENCE_S = 60.0  # generous: only a hang (or waiting out the grace period) reaches it


async def until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not await predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        await asyncio.sleep(0.02)


def big_config(i: int) -> str:
    """A config whose parse (off the event loop) keeps its call in flight for a while."""
    return "items:\n" + "".join(f"  - {{name: item-{i}-{j}, value: {j}}}\n"
                                for j in range(20_000))


def test_sigterm_answers_calls_in_flight_and_refuses_later_ones(tmp_path: Path) -> None:
    # A grace period far longer than the test's patience: if anything waited for it, the
    # test would fail instead of passing slowly.
    server = PdpServer(tmp_path, args=["--max-config-bytes", str(32 * 1024 * 1024),
                                      "--shutdown-grace-s", "600",
                                      "--deadline-ms", "60000",
                                      # Watch needs the auditor's role
                                      "--auth-anonymous-roles", "*:checker,*:auditor"]).start()
    try:
        async def main() -> None:
            async with grpc.aio.insecure_channel(
                    server.address,
                    options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as ch:
                stub = dgrpc.DecisionServiceStub(ch)
                calls = [asyncio.ensure_future(stub.CheckPush(
                    push_request("acme", f"agent-{i}", config_yaml=big_config(i)),
                    timeout=PATIENCE_S)) for i in range(3)]
                watch = audit_pb2_grpc.AuditServiceStub(ch).Watch(
                    apb.WatchRequest(tenant="acme"), timeout=PATIENCE_S)

                async def all_received() -> bool:
                    started = [line for line in server.log().splitlines()
                               if "call_started" in line]
                    return (sum("CheckPush" in line for line in started) == 3
                            and any("Watch" in line for line in started))
                await until(all_received, "the server to receive every call")
                assert server.proc is not None
                server.proc.send_signal(15)
                pending_at_sigterm = sum(not c.done() for c in calls)

                health = health_pb2_grpc.HealthStub(ch)

                async def not_serving() -> bool:
                    r = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                    return bool(r.status == health_pb2.HealthCheckResponse.NOT_SERVING)
                await until(not_serving, "the server to report NOT_SERVING")

                # a call after SIGTERM: refused at once (not left to hang)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.CheckPush(push_request("acme", "late", config_yaml="a: 1"),
                                         timeout=PATIENCE_S)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "shutting down" in (refused.value.details() or "")

                # the open watch ends with UNAVAILABLE instead of holding the shutdown up
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    async for _ in watch:
                        pass
                assert ended.value.code() == grpc.StatusCode.UNAVAILABLE

                # the calls in flight get their real answers
                responses = await asyncio.gather(*calls)
                decisions = [r.decision for r in responses]
                assert all(d.decision_id for d in decisions)
                assert {d.outcome for d in decisions} <= {cpb.OUTCOME_ALLOW, cpb.OUTCOME_DENY}
                assert pending_at_sigterm >= 1, "no call was still in flight at SIGTERM"
                ids = {d.decision_id for d in decisions}
                assert server.proc.wait(timeout=PATIENCE_S) == 0
                assert ids <= {e["decision_id"] for e in decision_events(server.audit_file)}

        asyncio.run(main())
        assert '"stopped"' in server.log()
        assert "drain_timeout" not in server.log()
    finally:
        server.stop()


def _received_bytes(port: int) -> int:
    """Bytes waiting in the server's side of its TCP connections on ``port`` (Linux's
    /proc: gRPC's sockets are dual-stack, so they are listed under tcp6)."""
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED
                waiting += int(fields[4].split(":")[1], 16)
    return waiting


def test_calls_queued_at_sigterm_are_refused_not_reset(tmp_path: Path) -> None:
    """Calls the server has received but not yet handed to a handler when SIGTERM comes (a
    backlog: here the process is stopped while they arrive) are refused UNAVAILABLE, "retry
    on another instance", each at once. Before, stopping the gRPC server reset them all:
    299 of 300 ended CANCELLED, which callers do not retry elsewhere."""
    server = PdpServer(tmp_path, args=["--shutdown-grace-s", "600"]).start()
    assert server.proc is not None
    try:
        async def main() -> list[object]:
            assert server.proc is not None
            async with grpc.aio.insecure_channel(server.address) as ch:
                stub = dgrpc.DecisionServiceStub(ch)
                await stub.CheckPush(push_request("acme", "first", config_yaml="a: 1"),
                                     timeout=PATIENCE_S)  # the connection is up
                os.kill(server.proc.pid, signal.SIGSTOP)
                try:
                    calls = [asyncio.ensure_future(stub.CheckPush(
                        push_request("acme", f"agent-{i}", config_yaml="a: 1"),
                        timeout=PATIENCE_S)) for i in range(300)]

                    async def on_the_server() -> bool:
                        return _received_bytes(server.port) > 0
                    await until(on_the_server, "the calls to reach the server's socket")
                    server.proc.send_signal(signal.SIGTERM)
                finally:
                    os.kill(server.proc.pid, signal.SIGCONT)
                return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(main())
        assert server.proc.wait(timeout=PATIENCE_S) == 0
        ends = Counter("answered" if not isinstance(o, grpc.aio.AioRpcError)
                       else f"{o.code().name}: {o.details()}" for o in outcomes)
        assert set(ends) <= {"answered", f"UNAVAILABLE: {SHUTTING_DOWN}"}, ends
    finally:
        server.stop()
