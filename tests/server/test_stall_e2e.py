"""A call that arrives while the server's event loop is held counts its budget from when
the hold began (pdp/server/arrival.py): it is denied, not allowed long after its deadline.

The hold is made for real: the server process is stopped (SIGSTOP) while a call is sent,
then continued. No duration is asserted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pdp.client import PdpClient
from pdp.server.arrival import AFTER_S, STALL_S, TICK_S, StallWatch
from tests.support.pdpserver import PdpServer
from tests.support.wait import wait_until

ALLOW = "tenant: t\nname: p\nrule:\n  cel:\n    deny: 'false'\n"


def test_a_call_read_after_a_stall_is_denied_not_answered_late(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(ALLOW)
    (tmp_path / "srv").mkdir()
    server = PdpServer(tmp_path / "srv", policy_dir=policies).start()
    try:
        client = PdpClient(server.address, timeout=60)
        assert client.check_push("t", "a0", config_yaml="a: 1\n").allowed  # warm
        assert server.proc is not None
        answers: list[object] = []
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            t = threading.Thread(target=lambda: answers.append(
                client.check_push("t", "a1", config_yaml="a: 1\n")))
            t.start()
            time.sleep(0.3)  # not-a-wait: the stall itself, longer than the 50 ms deadline
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        t.join()
        [d] = answers
        assert not d.allowed  # type: ignore[attr-defined]
        [r] = d.reasons  # type: ignore[attr-defined]
        assert r.code == "DEADLINE_EXCEEDED" and "before the decision started" in r.message
        # And then as before (calls read just after a stall count from its start too).
        wait_until(lambda: client.check_push("t", "a2", config_yaml="a: 1\n").allowed,
                   "a call after the stall allowed")
    finally:
        server.stop()


def test_the_watch_takes_a_stalls_start_as_the_arrival() -> None:
    w = StallWatch()
    assert w.arrival(100.0) == 100.0  # not running: now
    w.last = 100.0
    assert w.arrival(100.0 + STALL_S / 2) == 100.0 + STALL_S / 2  # ordinary queueing
    assert w.arrival(101.0) == pytest.approx(100.0 + TICK_S)  # held for a second
    w.stall = (100.0 + TICK_S, 101.0)  # the tick that saw it end
    w.last = 101.0
    assert w.arrival(101.0 + AFTER_S / 2) == pytest.approx(100.0 + TICK_S)  # read just after
    assert w.arrival(101.0 + 2 * AFTER_S) == 101.0 + 2 * AFTER_S  # later: a fresh call
