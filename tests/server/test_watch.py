"""AuditService.Watch over gRPC: tenant filter, type filter, resume without gaps."""

from __future__ import annotations

import asyncio

import grpc

from pdp.client import PdpClient
from pdp.v1 import audit_pb2 as apb
from pdp.v1 import audit_pb2_grpc
from tests.support.pdpserver import PdpServer


async def _take(address: str, request: apb.WatchRequest, n: int) -> list[apb.AuditRecord]:
    async with grpc.aio.insecure_channel(address) as ch:
        call = audit_pb2_grpc.AuditServiceStub(ch).Watch(request, timeout=20)
        out: list[apb.AuditRecord] = []
        async for resp in call:
            out.append(resp.record)
            if len(out) == n:
                call.cancel()
                break
        return out


def test_watch_filters_by_tenant_and_resumes(pdp_server: PdpServer) -> None:
    with PdpClient(pdp_server.address) as client:
        ids = []
        for i in range(3):
            ids.append(client.check_push("acme", f"a{i}", config_yaml="a: 1").decision_id)
            client.check_push("other", f"b{i}", config_yaml="a: 1")
    first = asyncio.run(_take(pdp_server.address, apb.WatchRequest(
        tenant="acme", event_types=["Decision"], from_beginning=True), 2))
    assert [r.decision_id for r in first] == ids[:2]
    assert all(r.tenant == "acme" and r.type == "Decision" and r.hash for r in first)
    assert first[1].sequence > first[0].sequence
    rest = asyncio.run(_take(pdp_server.address, apb.WatchRequest(
        tenant="acme", event_types=["Decision"], from_sequence=first[1].sequence), 1))
    assert [r.decision_id for r in rest] == ids[2:]
    assert rest[0].data["allowed"] is True


def test_watch_goes_live(pdp_server: PdpServer) -> None:
    async def main() -> list[apb.AuditRecord]:
        task = asyncio.ensure_future(_take(pdp_server.address, apb.WatchRequest(
            tenant="acme", event_types=["Decision"]), 1))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(_push)
        return await task

    def _push() -> None:
        with PdpClient(pdp_server.address) as client:
            client.check_push("acme", "live-1", config_yaml="a: 1")

    [record] = asyncio.run(main())
    assert record.data["subject"]["agent_id"] == "live-1"


def test_watch_requires_a_valid_tenant(pdp_server: PdpServer) -> None:
    try:
        asyncio.run(_take(pdp_server.address, apb.WatchRequest(tenant=""), 1))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        raise AssertionError("expected INVALID_ARGUMENT")
