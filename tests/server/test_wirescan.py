"""A large request with a field over its limit is refused from the wire, before it is decoded;
the walk is bounded and gives the decoder the last word on anything it cannot read."""

from __future__ import annotations

import gc
from pathlib import Path

import grpc
import pytest

from pdp.server import wirescan
from pdp.server.ceilings import Ceilings
from pdp.server.edges import Refused, safe_deserializer
from pdp.server.wirescan import WireScanner
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.server.test_input_limits import error_of
from tests.support.pdpserver import PdpServer

SETTINGS = Ceilings(items={"pdp.v1.CheckPushBatchRequest.agents": 5000},
                    byte_limits={"pdp.v1.Config.yaml": 1 << 20})


def _decode(message: type, data: bytes) -> object:
    decode = safe_deserializer(message.FromString, SETTINGS)  # type: ignore[attr-defined]
    assert decode is not None
    return decode(data)


def _device(**kw: object) -> dpb.CheckDeviceRequest:
    return dpb.CheckDeviceRequest(tenant="acme", device=cpb.Device(id="d1", **kw),  # type: ignore[arg-type]
                                  config=cpb.Config(yaml="a: 1\n"))


@pytest.mark.parametrize(("request_", "field", "says"), [
    (_device(groups=[f"g{i}" for i in range(100_000)]), "device.groups",
     "more than 256 entries (the limit); not decoded"),
    (_device(labels={f"k{i}": "v" for i in range(10_000)}), "device.labels",
     "more than 256 entries (the limit); not decoded"),
    (_device(labels={"k": "v" * 100_000}), "device.labels",
     "an entry of 100007 bytes is longer than the limits allow"),
    (dpb.CheckDeviceRequest(tenant="a" * 50_000), "tenant",
     "50000 bytes is longer than the limit of 256 characters (at most 1024 bytes)"),
    (dpb.CheckPushRequest(tenant="acme", config=cpb.Config(yaml="x" * (2 << 20))),
     "config.yaml", f"{2 << 20} bytes is larger than the limit of {1 << 20} bytes"),
], ids=["repeated-strings", "map-entries", "map-entry-bytes", "string-bytes", "nested-bytes"])
def test_a_field_over_its_limit_is_refused_from_the_wire(
        request_: dpb.CheckDeviceRequest, field: str, says: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[bytes] = []
    real = type(request_).FromString

    def counting(data: bytes) -> object:
        decoded.append(data)
        return real(data)

    counting.__self__ = type(request_)  # type: ignore[attr-defined]  # as a bound FromString
    decode = safe_deserializer(counting, SETTINGS)
    assert decode is not None
    out = decode(request_.SerializeToString())
    assert isinstance(out, Refused), out
    assert out.field == field
    assert says in out.problem
    assert decoded == []  # never decoded


def test_a_refusal_leaves_nothing_for_the_collector() -> None:
    """The refusal keeps no traceback: the walk's frames hold the request's bytes, and the
    caller's frame (which keeps the refusal) closed a cycle with them, so every refused
    request stayed in memory until a collection."""
    data = _device(groups=[f"g{i}" for i in range(100_000)]).SerializeToString()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            assert isinstance(_decode(dpb.CheckDeviceRequest, data), Refused)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage
                if isinstance(o, memoryview | wirescan.Overrun)]
        assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_a_small_request_is_decoded_and_checked_as_before() -> None:
    """Below WALK_MIN the decoder is cheap: the limits are checked on the decoded message,
    with its exact count."""
    data = _device(groups=[f"g{i}" for i in range(300)]).SerializeToString()
    assert len(data) < wirescan.WALK_MIN
    out = _decode(dpb.CheckDeviceRequest, data)
    assert isinstance(out, Refused)
    assert (out.field, out.problem) == ("device.groups", "300 entries is more than the limit"
                                                         " of 256")


def test_a_valid_large_request_passes_the_walk() -> None:
    yaml = "items:\n" + "".join(f"  - item{i}\n" for i in range(20_000))
    req = dpb.CheckPushRequest(tenant="acme", agent=cpb.Agent(
        id="a1", labels={f"k{i}": "v" * 1000 for i in range(256)}),
        config=cpb.Config(yaml=yaml))
    data = req.SerializeToString()
    assert len(data) > wirescan.WALK_MIN
    assert WireScanner(SETTINGS).scan(data, dpb.CheckPushRequest.DESCRIPTOR) is None
    out = _decode(dpb.CheckPushRequest, data)
    assert not isinstance(out, Refused)
    assert out == req


def test_the_walk_is_bounded_and_leaves_what_it_cannot_finish_to_the_decoder() -> None:
    """Unknown fields cost the walk a step each; past MAX_STEPS it stops and the request is
    decoded as before (the decoder skips unknown fields)."""
    unknown = b"".join(b"\xf8\x07\x01" for _ in range(wirescan.MAX_STEPS * 2))  # field 127
    data = unknown + dpb.CheckDeviceRequest(tenant="acme").SerializeToString()
    scanner = WireScanner(SETTINGS)
    assert scanner.scan(data, dpb.CheckDeviceRequest.DESCRIPTOR) is None
    out = _decode(dpb.CheckDeviceRequest, data)
    assert not isinstance(out, Refused) and out.tenant == "acme"


def test_bytes_that_are_not_protobuf_get_the_decoders_answer() -> None:
    good = _device(groups=[f"g{i}" for i in range(200)],
                   labels={"k": "v" * 20_000}).SerializeToString()
    truncated = good[:-10]
    assert WireScanner(SETTINGS).scan(truncated, dpb.CheckDeviceRequest.DESCRIPTOR) is None
    out = _decode(dpb.CheckDeviceRequest, truncated)
    assert isinstance(out, Refused) and "could not be decoded" in out.problem


def test_a_batch_is_not_walked() -> None:
    """Counting a valid 5 000-agent step on the wire would cost more than decoding it; the
    agents are counted after the decode (test_ceilings.py)."""
    plan = WireScanner(SETTINGS).plan(dpb.CheckPushBatchRequest.DESCRIPTOR)
    assert not plan.walkable
    batch = dpb.CheckPushBatchRequest(tenant="acme", agents=[
        cpb.Agent(id=f"agent-{i}") for i in range(4000)])
    out = _decode(dpb.CheckPushBatchRequest, batch.SerializeToString())
    assert not isinstance(out, Refused) and len(out.agents) == 4000


def test_over_the_wire(tmp_path: Path) -> None:
    s = PdpServer(tmp_path).start()
    try:
        with s.channel() as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            err = error_of(stub.CheckDevice, _device(groups=[f"g{i}" for i in range(100_000)]),
                           timeout=30)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.details() == ("device.groups: more than 256 entries (the limit); not"
                                     " decoded")
            ok = stub.CheckDevice(_device(groups=["g1"]), timeout=30)
            assert ok.decision.decision_id
    finally:
        s.stop()
