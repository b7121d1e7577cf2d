"""Waiting for a condition in a test: poll it with a generous deadline, never sleep a guess.

A fixed sleep is either too short on a loaded machine (the test fails at random) or longer
than needed everywhere else; polling returns as soon as the condition holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEADLINE_S = 30.0  # generous: CI shares 2 cores with other work


def wait_until(condition: Callable[[], object], what: str = "the condition",
               timeout: float = DEADLINE_S, interval: float = 0.02) -> None:
    """Return once ``condition()`` is true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not true after {timeout:g} s")
        time.sleep(interval)


async def eventually(condition: Callable[[], object], what: str = "the condition",
                     timeout: float = DEADLINE_S, interval: float = 0.005) -> None:
    """:func:`wait_until` for the event loop: other tasks run between the checks."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not true after {timeout:g} s")
        await asyncio.sleep(interval)


async def runs_meanwhile(work: Awaitable[Any]) -> tuple[Any, int]:
    """``work``'s result and how many times another task ran before it finished."""
    ran = 0
    finished = False

    async def witness() -> None:
        nonlocal ran
        while not finished:
            ran += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(witness())
    await asyncio.sleep(0)
    ran = 0  # only what runs while ``work`` is in progress counts
    try:
        result = await work
    finally:
        finished = True
        await task
    return result, ran
