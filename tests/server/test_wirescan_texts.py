"""The texts of a map entry refused from the wire say which part is too long and its limit
(never "values None characters" for a map of numbers)."""

from __future__ import annotations

from pdp.server.ceilings import Ceilings
from pdp.server.wirescan import WireScanner
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb

SCANNER = WireScanner(Ceilings(byte_limits={"pdp.v1.Config.yaml": 1 << 20}))


def problem(msg: object) -> tuple[str, str]:
    over = SCANNER.scan(msg.SerializeToString(), msg.DESCRIPTOR)  # type: ignore[attr-defined]
    assert over is not None
    return over.path, over.problem


def test_a_metric_key_too_long() -> None:
    for req in (dpb.CheckRolloutRequest(tenant="acme", metrics={"k" * 100_000: 1.0}),
                dpb.EvaluateHealthRequest(tenant="acme", metrics={"k" * 100_000: 1.0})):
        assert problem(req) == ("metrics", (
            "an entry of 100013 bytes is longer than the limits allow: its key of 100000"
            " bytes is longer than the limit of 256 characters (at most 1024 bytes);"
            " not decoded"))


def test_a_label_key_or_value_too_long() -> None:
    req = dpb.CheckDeviceRequest(tenant="acme", device=cpb.Device(
        id="d", labels={"k" * 50_000: "v"}))
    assert problem(req) == ("device.labels", (
        "an entry of 50007 bytes is longer than the limits allow: its key of 50000 bytes"
        " is longer than the limit of 256 characters (at most 1024 bytes); not decoded"))
    req = dpb.CheckDeviceRequest(tenant="acme", device=cpb.Device(
        id="d", labels={"k": "v" * 50_000}))
    assert problem(req) == ("device.labels", (
        "an entry of 50007 bytes is longer than the limits allow: its value of 50000 bytes"
        " is longer than the limit of 1024 characters (at most 4096 bytes); not decoded"))


def test_an_entry_of_unknown_fields_gets_the_limits_without_none() -> None:
    # a metrics entry whose key and value are fine, padded with an unknown field 3
    pad = b"\x1a" + b"\xa0\x9c\x01" + b"x" * 20_000  # field 3, 20 000 bytes
    entry = b"\x0a\x01k" + b"\x11" + b"\x00" * 8 + pad
    number = dpb.CheckRolloutRequest.DESCRIPTOR.fields_by_name["metrics"].number
    data = (dpb.CheckRolloutRequest(tenant="acme").SerializeToString()
            + _varint(number << 3 | 2) + _varint(len(entry)) + entry)
    over = SCANNER.scan(data, dpb.CheckRolloutRequest.DESCRIPTOR)
    assert over is not None and over.path == "metrics"
    assert over.problem == (f"an entry of {len(entry)} bytes is longer than the limits allow"
                            " (keys 256 characters, 4 bytes each at most); not decoded")
    assert "None" not in over.problem


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)
