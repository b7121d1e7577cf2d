"""`pdp serve --workers N`: several processes on one port, clean shutdown of all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pdp.client import PdpClient
from tests.support.pdpserver import PdpServer
from tests.support.procs import redis_server


def test_two_workers_share_the_port_and_stop_cleanly(tmp_path: Path) -> None:
    with redis_server() as redis:
        # a generous Redis timeout: on a busy CI machine 20 ms is sometimes not enough, and
        # this test is about the workers sharing the port, not about Redis latency
        server = PdpServer(tmp_path, args=["--workers", "2", "--redis-url", redis.url,
                                           "--redis-timeout-ms", "5000"]).start()
        try:
            for i in range(60):  # a new connection each time: the kernel spreads them
                with PdpClient(server.address) as client:
                    assert client.check_push("acme", f"a{i}", config_yaml="a: 1").allowed
            code = server.terminate(timeout=30)
            assert code == 0, server.log()[-4000:]  # which worker exited how, and why
        finally:
            server.stop()
    per_worker = {}
    for f in sorted(server.audit_file.parent.glob("audit-w*.jsonl")):
        per_worker[f.name] = sum(json.loads(line)["event"]["type"] == "Decision"
                                 for line in f.read_text().splitlines())
    assert sum(per_worker.values()) == 60
    assert len([n for n in per_worker.values() if n]) == 2, per_worker  # both answered
    # `pdp audit show` given the directory finds a decision in either worker's ledger, with
    # the config text and policy list it names resolved from that ledger's Seen events.
    for f in sorted(server.audit_file.parent.glob("audit-w*.jsonl")):
        last = [e for e in (json.loads(line)["event"] for line in f.read_text().splitlines())
                if e["type"] == "Decision"][-1]
        out = subprocess.run([sys.executable, "-m", "pdp.cli", "audit", "show",
                              last["decision_id"], str(server.audit_file.parent)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        view = json.loads(out.stdout)
        assert view["record"]["file"] == str(f) and view["unresolved"] == []
        assert view["decision"]["request"]["config"] == "a: 1" and view["decision"]["policies"]


def test_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    out = subprocess.run([sys.executable, "-m", "pdp.cli", "serve", "--workers", "2"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2
    assert "--workers: more than one worker needs --redis-url (shared counters)" in out.stderr
