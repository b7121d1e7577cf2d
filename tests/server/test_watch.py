"""AuditService.Watch over gRPC: tenant filter, type filter, resume without gaps; watching
needs the auditor role on the tenant (on ``*`` to watch every tenant)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from pdp.client import PdpClient
from pdp.server.auth import hash_token
from pdp.v1 import audit_pb2 as apb
from pdp.v1 import audit_pb2_grpc
from tests.support.pdpserver import PdpServer

#: token -> (identity, roles); decisions are made by anonymous callers (the default checker).
TOKENS = {"tok-acme": ("acme-auditor", {"acme": ["auditor"]}),
          "tok-all": ("auditor", {"*": ["auditor"]}),
          "tok-reader": ("reader", {"*": ["reader"]})}


@pytest.fixture
def pdp_server(tmp_path: Path) -> Iterator[PdpServer]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [
        {"sha256": hash_token(t), "identity": who, "roles": roles}
        for t, (who, roles) in TOKENS.items()]}))
    server = PdpServer(tmp_path, args=["--auth-tokens-file", str(tokens),
                                       "--auth-required", "false",
                                       "--unknown-tenants", "builtins"]).start()
    try:
        yield server
    finally:
        server.stop()


async def _take(address: str, request: apb.WatchRequest, n: int,
                token: str = "tok-acme") -> list[apb.AuditRecord]:
    async with grpc.aio.insecure_channel(address) as ch:
        call = audit_pb2_grpc.AuditServiceStub(ch).Watch(
            request, timeout=20, metadata=(("authorization", f"Bearer {token}"),))
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
    """A watch without a starting point sees what is decided after it started, not before.
    When the stream is set up is not observable from here, so decisions keep coming until
    one arrives (never a fixed wait)."""
    with PdpClient(pdp_server.address) as client:
        client.check_push("acme", "before-1", config_yaml="a: 1")

    async def main() -> list[apb.AuditRecord]:
        task = asyncio.ensure_future(_take(pdp_server.address, apb.WatchRequest(
            tenant="acme", event_types=["Decision"]), 1))
        with PdpClient(pdp_server.address) as client:
            i = 0
            while not task.done():
                await asyncio.to_thread(client.check_push, "acme", f"live-{i}",
                                        config_yaml="a: 1")
                i += 1
                await asyncio.wait([task], timeout=0.05)
        return await task

    [record] = asyncio.run(main())
    assert record.data["subject"]["agent_id"].startswith("live-")


def _code(request: apb.WatchRequest, address: str, token: str) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        asyncio.run(_take(address, request, 1, token))
    return exc.value.code()


def test_watch_needs_the_auditor_role_on_the_tenant(pdp_server: PdpServer) -> None:
    a = pdp_server.address
    acme = apb.WatchRequest(tenant="acme", from_beginning=True)
    assert _code(acme, a, "tok-reader") == grpc.StatusCode.PERMISSION_DENIED  # reads policies
    assert _code(apb.WatchRequest(tenant="other", from_beginning=True), a, "tok-acme") == \
        grpc.StatusCode.PERMISSION_DENIED
    assert _code(apb.WatchRequest(tenant="bad tenant!"), a, "tok-all") == \
        grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc, grpc.insecure_channel(a) as ch:
        # anonymous callers decide, nothing else
        next(iter(audit_pb2_grpc.AuditServiceStub(ch).Watch(acme, timeout=5)))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_watch_of_every_tenant_needs_auditor_on_star(pdp_server: PdpServer) -> None:
    with PdpClient(pdp_server.address) as client:
        client.check_push("acme", "a1", config_yaml="a: 1")
        client.check_push("other", "b1", config_yaml="a: 1")
    every = apb.WatchRequest(event_types=["Decision"], from_beginning=True)
    assert _code(every, pdp_server.address, "tok-acme") == grpc.StatusCode.PERMISSION_DENIED
    records = asyncio.run(_take(pdp_server.address, every, 2, "tok-all"))
    assert {r.tenant for r in records} == {"acme", "other"}


def test_watch_from_a_sequence_past_the_newest_record_is_out_of_range(
        pdp_server: PdpServer) -> None:
    """Waiting for it would skip every record up to it without a word: refused at once."""
    with PdpClient(pdp_server.address) as client:
        client.check_push("acme", "a1", config_yaml="a: 1")
    for start in (10**6, 2**63, 2**64 - 1):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            asyncio.run(_take(pdp_server.address, apb.WatchRequest(from_sequence=start), 1,
                              token="tok-all"))
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "past the newest audit record" in (err.value.details() or "")
