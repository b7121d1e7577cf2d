"""Large requests' cyclic garbage is collected by the bytes let in (pdp/server/sweep.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from pdp.server.edges import safe_deserializer
from pdp.server.sweep import Sweeper
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb


class Payload:
    """Stands for what a refused call's frames keep alive (the request, its parse)."""


def cycle() -> weakref.ref[Payload]:
    """A reference cycle holding a payload, as a status exception's traceback and the
    handler's frames do; only the collector can free it."""
    p = Payload()
    box: list[object] = [p]
    box.append(box)
    return weakref.ref(p)


@pytest.fixture
def no_auto_gc() -> Iterator[None]:
    """Only the sweeper collects (as when the allocation count is far from its threshold)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_large_requests_bring_a_collection(no_auto_gc: None) -> None:
    s = Sweeper(every_bytes=1 << 20, large_bytes=64 << 10)
    ref = cycle()
    s.note(512 << 10)
    assert ref() is not None and s.sweeps == 0
    s.note(600 << 10)  # past 1 MiB of large requests: the young generations are collected
    assert ref() is None and s.sweeps == 1 and s.pending == 0


def test_small_requests_do_not_count(no_auto_gc: None) -> None:
    s = Sweeper(every_bytes=1 << 20, large_bytes=64 << 10)
    ref = cycle()
    for _ in range(100):
        s.note((64 << 10) - 1)  # 6.4 MiB in all, each below the large size
    assert ref() is not None and s.sweeps == 0 and s.pending == 0


def test_the_server_deserializer_tells_the_sweeper(no_auto_gc: None) -> None:
    """Every request the server decodes is counted, refused ones too (those leave the
    garbage: the refusal's status exception and the frames holding the request)."""
    s = Sweeper(every_bytes=256 << 10, large_bytes=64 << 10)
    decode = safe_deserializer(dpb.CheckPushRequest.FromString, None, s)
    assert decode is not None
    big = dpb.CheckPushRequest(tenant="t", config=cpb.Config(yaml="k: " + "v" * (100 << 10)))
    ref = cycle()
    for _ in range(2):
        decode(big.SerializeToString())
    assert ref() is not None and s.sweeps == 0
    decode(b"\xff" * (100 << 10))  # not a valid message: refused, still counted
    assert ref() is None and s.sweeps == 1
