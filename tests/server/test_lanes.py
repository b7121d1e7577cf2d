"""The bulk lane (pdp/server/lanes.py): large requests take turns, small ones do not wait for
them, a wait is bounded, and a decision's budget and elapsed time count from the call's
arrival (pdp/server/arrival.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pdp.server import arrival
from pdp.server.lanes import LARGE_BYTES, BulkLane
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.procs import free_port
from tests.support.wait import eventually

# -- the lane itself ----------------------------------------------------------------------


async def test_one_at_a_time_first_come_first_served() -> None:
    lane = BulkLane(max_wait_s=30)
    assert await lane.enter() is True
    order: list[int] = []

    async def later(i: int) -> None:
        assert await lane.enter() is True
        order.append(i)
        lane.leave()

    tasks = [asyncio.create_task(later(i)) for i in range(3)]
    await eventually(lambda: lane.waiting == 3, "three requests waiting")
    assert order == []  # nobody gets in while the turn is held
    lane.leave()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert (lane.waited, lane.timed_out) == (3, 0)
    assert await lane.enter() is True  # free again


async def test_a_wait_is_bounded_and_then_goes_on_without_the_turn() -> None:
    lane = BulkLane(max_wait_s=0.01)
    assert await lane.enter() is True
    assert await lane.enter() is False  # the holder never leaves: the wait ends anyway
    assert await lane.enter(limit_s=0.0) is False  # the caller's own deadline, when shorter
    assert (lane.waited, lane.timed_out) == (2, 2)
    lane.leave()
    assert await lane.enter() is True  # the ones that went on never held the turn


async def test_a_cancelled_waiter_neither_keeps_nor_loses_the_turn() -> None:
    lane = BulkLane(max_wait_s=30)
    assert await lane.enter() is True
    gave_up = asyncio.create_task(lane.enter())
    await eventually(lambda: lane.waiting == 1, "a request waiting")
    gave_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gave_up
    lane.leave()
    assert await lane.enter() is True  # the turn was not handed to the cancelled one


async def test_a_turn_handed_to_a_cancelled_call_is_passed_on() -> None:
    lane = BulkLane(max_wait_s=30)
    assert await lane.enter() is True
    first = asyncio.create_task(lane.enter())
    second = asyncio.create_task(lane.enter())
    await eventually(lambda: lane.waiting == 2, "two requests waiting")
    lane.leave()  # the turn goes to `first` ...
    first.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second is True


def test_a_decision_counts_from_the_arrival_marked_for_its_call() -> None:
    token = arrival.mark(123.0)
    try:
        assert arrival.arrived_at() == 123.0
    finally:
        arrival.unmark(token)
    before = time.monotonic()
    assert arrival.arrived_at() >= before  # unmarked: now


# -- through a real server ------------------------------------------------------------------

POLICY = """\
tenant: t
name: no-friday-pushes
rule:
  cel:
    deny: 'false'
"""


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[str, Any]]:
    from pdp.logging import configure_logging
    from pdp.server.app import start, stop
    from pdp.settings import Settings

    configure_logging("warning", "json")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICY)
    address = f"127.0.0.1:{free_port()}"
    running = await start(Settings(listen=address, policy_dir=str(policies),
                                   policy_store=f"sqlite:{tmp_path / 'p.sqlite3'}",
                                   audit_file=str(tmp_path / "audit.jsonl"),
                                   http_listen="", reflection=False, **settings))
    try:
        yield address, running
    finally:
        await stop(running, 1.0)


def push(agent: str, config_bytes: int) -> dpb.CheckPushRequest:
    """A push allowed by POLICY whose config is about ``config_bytes`` long."""
    items = "".join(f"  - item-{i:08d}\n" for i in range(max(0, config_bytes // 16)))
    return dpb.CheckPushRequest(tenant="t", checkpoint=cpb.CHECKPOINT_PUSH,
                                agent=cpb.Agent(id=agent),
                                config=cpb.Config(yaml=f"receivers: {{}}\nitems:\n{items}"))


async def test_a_small_call_does_not_wait_behind_a_large_one(tmp_path: Path) -> None:
    async with serving(tmp_path, deadline_ms=60_000) as (address, running):
        lane: BulkLane = running.edges.lane
        lane.max_wait_s = 60.0
        with grpc.insecure_channel(address) as ch:
            call = dgrpc.DecisionServiceStub(ch).CheckPush
            large = push("big", 2 * LARGE_BYTES)
            assert large.ByteSize() >= LARGE_BYTES
            warm = await asyncio.to_thread(call, large, timeout=30)
            assert warm.decision.outcome == cpb.OUTCOME_ALLOW
            assert await lane.enter() is True  # the test holds the turn
            waiting = asyncio.ensure_future(asyncio.to_thread(call, large, timeout=60))
            await eventually(lambda: lane.waiting == 1, "the large request waiting its turn")
            seen_waiting = time.monotonic()  # it arrived before this
            small = await asyncio.to_thread(call, push("small", 100), timeout=30)
            # answered while the large one still waits
            assert small.decision.outcome == cpb.OUTCOME_ALLOW
            assert not waiting.done() and lane.waiting == 1
            lane.leave()  # (a failed assert above leaves the lane to its 60 s bound)
            released_at = time.monotonic()
            answer = await waiting
        assert answer.decision.outcome == cpb.OUTCOME_ALLOW
        assert (lane.waited, lane.timed_out) == (1, 0)
        # Its elapsed time counts from its arrival (before the test saw it waiting), not
        # from when it had its turn (after the test let go).
        elapsed = answer.decision.elapsed.ToTimedelta().total_seconds()
        assert elapsed >= released_at - seen_waiting


async def test_a_large_request_that_cannot_get_its_turn_goes_on(tmp_path: Path) -> None:
    async with serving(tmp_path, deadline_ms=60_000) as (address, running):
        lane: BulkLane = running.edges.lane
        lane.max_wait_s = 0.05
        assert await lane.enter() is True  # held for good
        with grpc.insecure_channel(address) as ch:
            call = dgrpc.DecisionServiceStub(ch).CheckPush
            answer = await asyncio.to_thread(call, push("big", 2 * LARGE_BYTES), timeout=30)
        assert answer.decision.outcome == cpb.OUTCOME_ALLOW
        assert (lane.waited, lane.timed_out) == (1, 1)


async def test_a_request_that_waited_its_whole_budget_is_denied_saying_so(
        tmp_path: Path) -> None:
    async with serving(tmp_path, deadline_ms=20) as (address, running):
        lane: BulkLane = running.edges.lane
        lane.max_wait_s = 0.5  # longer than the decision's budget
        assert await lane.enter() is True
        with grpc.insecure_channel(address) as ch:
            call = dgrpc.DecisionServiceStub(ch).CheckPush
            answer = await asyncio.to_thread(call, push("big", 2 * LARGE_BYTES), timeout=30)
    assert answer.decision.outcome == cpb.OUTCOME_DENY
    [reason] = answer.decision.reasons
    assert reason.code == cpb.REASON_CODE_DEADLINE_EXCEEDED
    assert "before the decision started" in reason.message


async def test_a_large_request_over_a_limit_is_still_refused_naming_the_field(
        tmp_path: Path) -> None:
    async with serving(tmp_path) as (address, _):
        bad = push("big", 2 * LARGE_BYTES)
        bad.agent.id = "a" * 5000
        with grpc.insecure_channel(address) as ch:
            call = dgrpc.DecisionServiceStub(ch).CheckPush
            with pytest.raises(grpc.RpcError) as info:
                await asyncio.to_thread(call, bad, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "agent.id" in (info.value.details() or "")
