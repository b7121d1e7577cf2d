from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pdpserver import PdpServer


@pytest.fixture
def pdp_server(tmp_path: Path) -> Iterator[PdpServer]:
    """A real `pdp serve` on a free port with the example policies."""
    server = PdpServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
