"""A request longer than any valid request of its type is refused before it is decoded; a
settings-bounded list is counted before its elements are checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from pdp.server import limits
from pdp.server.ceilings import Ceilings
from pdp.server.edges import Refused, safe_deserializer
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.server.test_input_limits import REQUESTS
from tests.support.pdpserver import PdpServer

WIDE = "\U0001F600"  # four bytes of UTF-8: the longest a character gets
HUGE = {"PutDraftRequest", "ValidatePolicyRequest"}  # a policy holds many expressions
SETTINGS = Ceilings(items={"pdp.v1.CheckPushBatchRequest.agents": 2},
                    byte_limits={"pdp.v1.Config.yaml": 3000})


def _fill(msg: Any, ceilings: Ceilings, depth: int = 0) -> None:
    """Every field of ``msg`` at its limit: the longest strings of the widest characters,
    the most entries, the largest numbers."""
    for f in msg.DESCRIPTOR.fields:
        lim = limits.limit_of(f)
        items = ceilings.items.get(f.full_name, lim.items)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            target = getattr(msg, f.name)
            value = f.message_type.fields_by_name["value"]
            for i in range(items or 0):
                key = f"{i:04d}" + WIDE * ((lim.key_chars or 8) - 4)
                if value.type == FieldDescriptor.TYPE_STRING:
                    target[key] = WIDE * (lim.chars or 8)
                else:
                    target[key] = -1.5e308
            continue
        n = (items or 0) if f.is_repeated else 1
        for _ in range(n):
            if f.message_type is not None:
                if depth > 6:
                    continue
                sub = getattr(msg, f.name).add() if f.is_repeated else getattr(msg, f.name)
                _fill(sub, ceilings, depth + 1)
                if not f.is_repeated:
                    sub.SetInParent()
                continue
            value: Any
            if f.type == FieldDescriptor.TYPE_STRING:
                chars = ceilings.byte_limits.get(f.full_name)
                value = "x" * chars if chars is not None else WIDE * (lim.chars or 0)
            elif f.type == FieldDescriptor.TYPE_BYTES:
                value = b"x" * (lim.chars or 0)
            elif f.type == FieldDescriptor.TYPE_BOOL:
                value = True
            elif f.type == FieldDescriptor.TYPE_ENUM:
                value = max(v.number for v in f.enum_type.values)
            elif f.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE or \
                    f.cpp_type == FieldDescriptor.CPPTYPE_FLOAT:
                value = -1.5e30
            elif f.cpp_type in (FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64):
                value = (1 << (32 if f.cpp_type == FieldDescriptor.CPPTYPE_UINT32 else 64)) - 1
            else:
                value = -(1 << (31 if f.cpp_type == FieldDescriptor.CPPTYPE_INT32 else 63))
            if f.is_repeated:
                getattr(msg, f.name).append(value)
            else:
                setattr(msg, f.name, value)


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: m.DESCRIPTOR.name)
def test_the_ceiling_is_above_every_valid_request(message: Any) -> None:
    """No valid request is refused by its length: one with every field at its limit fits."""
    ceiling = SETTINGS.of(message.DESCRIPTOR)
    if ceiling is None or ceiling > 64 << 20:
        # Too large to build here; these are decoded and checked field by field as before.
        assert message.DESCRIPTOR.name in HUGE
        return
    msg = message()
    _fill(msg, SETTINGS)
    data = msg.SerializeToString()
    assert len(data) <= ceiling
    decoded = safe_deserializer(message.FromString, SETTINGS)(data)  # type: ignore[misc]
    assert not isinstance(decoded, Refused) or "larger than any valid" not in decoded.problem
    # nor by the walk of its fields on the wire (wirescan.py): every field is at its limit
    assert not isinstance(decoded, Refused) or "not decoded" not in decoded.problem


def test_the_ceiling_follows_the_limits_and_settings() -> None:
    small = Ceilings(byte_limits={"pdp.v1.Config.yaml": 1000})
    large = Ceilings(byte_limits={"pdp.v1.Config.yaml": 100_000})
    desc = dpb.CheckPushRequest.DESCRIPTOR
    a, b = small.of(desc), large.of(desc)
    assert a is not None and b is not None and b - a == 2 * 99_000  # config, previous config
    assert Ceilings().of(desc) is None  # the config bounded elsewhere: no ceiling
    assert Ceilings().of(dpb.EvaluateHealthRequest.DESCRIPTOR) is not None


def test_a_request_over_its_ceiling_is_refused_undecoded() -> None:
    health = dpb.EvaluateHealthRequest(tenant="acme", metrics={
        f"m{i}": float(i) for i in range(100_000)})
    data = health.SerializeToString()
    decode = safe_deserializer(dpb.EvaluateHealthRequest.FromString, SETTINGS)
    assert decode is not None
    out = decode(data)
    assert isinstance(out, Refused) and out.field == ""
    assert out.problem.startswith(f"request of {len(data)} bytes is larger than any valid"
                                  " EvaluateHealthRequest")


def test_a_batch_is_counted_before_its_agents_are_checked() -> None:
    decode = safe_deserializer(dpb.CheckPushBatchRequest.FromString, SETTINGS)
    assert decode is not None
    over = dpb.CheckPushBatchRequest(tenant="acme", agents=[
        cpb.Agent(id="x" * 300), cpb.Agent(id="b"), cpb.Agent(id="c")])
    out = decode(over.SerializeToString())
    assert isinstance(out, Refused)
    assert (out.field, out.problem) == ("agents", "3 entries is more than the limit of 2")
    fits = dpb.CheckPushBatchRequest(tenant="acme", agents=[cpb.Agent(id="x" * 300)])
    out = decode(fits.SerializeToString())
    assert isinstance(out, Refused) and out.field == "agents[0].id"


def test_over_the_wire(tmp_path: Path) -> None:
    s = PdpServer(tmp_path, args=["--max-batch-agents", "3"]).start()
    try:
        with s.channel() as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                stub.EvaluateHealth(dpb.EvaluateHealthRequest(tenant="acme", metrics={
                    f"m{i}": float(i) for i in range(50_000)}), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "larger than any valid EvaluateHealthRequest" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                stub.CheckPushBatch(dpb.CheckPushBatchRequest(tenant="acme", agents=[
                    cpb.Agent(id=f"a{i}") for i in range(4)]), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith("agents: 4 entries is more than the limit"
                                                   " of 3")
            ok = stub.EvaluateHealth(dpb.EvaluateHealthRequest(
                tenant="acme", metrics={"error_rate": 0.0}), timeout=30)
            assert ok.decision_id
    finally:
        s.stop()
