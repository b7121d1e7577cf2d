from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from tests.support.pdpserver import PdpServer

# Hypothesis keeps no example database and its caches in a temporary directory: the suite
# writes nothing into the checkout.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="pdp-hypothesis-"))
settings.register_profile("pdp", database=None)
settings.load_profile("pdp")


@pytest.fixture
def pdp_server(tmp_path: Path) -> Iterator[PdpServer]:
    """A real `pdp serve` on a free port with the example policies."""
    server = PdpServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
