"""Fixtures shared by the server tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.procs import RedisServer


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A throwaway ``redis-server`` of the test's own (free port, torn down after)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()
