"""Explanations through the real server: CheckPush with explain=true returns them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pdp.client import PdpClient, push_request
from tests.support.pdpserver import PdpServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdpServer]:
    root = tmp_path_factory.mktemp("explain")
    policy_dir = root / "policies"
    policy_dir.mkdir()
    # Tenant t1 exists (it has a policy); the built-in is what denies below.
    (policy_dir / "t1.yaml").write_text(
        "tenant: t1\nname: quiet\nrule: {cel: {deny: 'false'}}\n")
    # The explanation shares the decision's budget: a generous one, so load cannot cut it.
    srv = PdpServer(root, policy_dir=policy_dir, env={"PYTHONPATH": str(ROOT)},
                    args=["--deadline-ms", "30000"]).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_check_push_explain(server: PdpServer) -> None:
    cfg = "exporters:\n  otlp/x: {endpoint: 'x.example.com:4317', tls: {insecure: true}}\n"
    with PdpClient(server.address, timeout=10) as client:
        req = push_request("t1", "a1", config_yaml=cfg)
        plain = client.check_push_request(req)
        req.explain = True
        explained = client.check_push_request(req)
    assert not plain.allowed and not plain.raw.explanations
    [x] = explained.raw.explanations
    assert x.policy == "default-deny-tls-insecure-on-non-localhost"
    assert dict(x.values)["exporter"] == "otlp/x"
    assert dict(x.values)["tls.insecure"] == "true"
