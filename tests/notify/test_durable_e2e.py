"""Durable notifications through the real server: receivers that are down, hang, or come
back; the email slot across an SMTP outage and restarts (embedded default and Redis).

Short backoff settings keep the tests quick; they poll for what they wait for and never
assert durations."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
from aiosmtpd.controller import Controller

from pdp.client import push_request
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.notify.conftest import HttpReceiver, SmtpSink, hanging_receiver, serve_http
from tests.support.pdpserver import PdpServer
from tests.support.procs import free_port, redis_server

# A generous decision deadline: on a busy machine a decision past 50 ms is a deny without
# the policy's reason, which notifies nobody (these tests are about delivery, not time).
FAST = ["--notify-backoff-initial-s", "0.05", "--notify-backoff-max-s", "0.2",
        "--deadline-ms", "10000"]
DENY = "exporters: {debug: {}}"


def policy_dir(tmp_path: Path, notify: str) -> Path:
    d = tmp_path / "policies"
    d.mkdir(exist_ok=True)
    (d / "p.yaml").write_text(f"""\
tenant: acme
name: no-debug
notify:
{notify}
rule: {{cel: {{deny: '"debug" in config.exporters'}}}}
""")
    return d


def deny(server: PdpServer, agent: str) -> str:
    with grpc.insecure_channel(server.address) as ch:
        d = dgrpc.DecisionServiceStub(ch).CheckPush(
            push_request("acme", agent, config_yaml=DENY), timeout=5).decision
    assert d.outcome == cpb.OUTCOME_DENY
    assert [r.policy for r in d.reasons] == ["no-debug"], d.reasons  # what notifies
    return str(d.decision_id)


def wait_until(what: Callable[[], bool], timeout: float = 30.0) -> None:
    until = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < until, "gave up waiting"
        time.sleep(0.05)


def retries(server: PdpServer, channel: str) -> int:
    return sum('"notification retry"' in line and f'"channel": "{channel}"' in line
               for line in server.log().splitlines())


def test_webhook_down_longer_than_the_old_window_gets_everything_in_order(
        tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet
    hook = f"http://127.0.0.1:{port}/hook"
    policies = policy_dir(tmp_path, f'  - webhook: {{url: "{hook}", secret: s3cret}}')
    server = PdpServer(tmp_path, policy_dir=policies, args=FAST).start()
    try:
        ids = [deny(server, f"a{i}") for i in range(5)]
        # the old notifier gave up after 4 attempts; this one keeps trying
        wait_until(lambda: retries(server, "webhook") >= 8)
        assert '"notification failed"' not in server.log()
        with serve_http(port) as rec:
            got = rec.wait_for(5, "/hook", timeout=30)
            assert [r.json()["decision"]["decision_id"] for r in got] == ids
            assert server.terminate() == 0
    finally:
        server.stop()


def test_a_hanging_receiver_does_not_hold_up_other_channels(tmp_path: Path,
                                                            http_receiver: HttpReceiver) -> None:
    with hanging_receiver() as hang:
        policies = policy_dir(tmp_path, f'  - webhook: {{url: "{hang}", secret: s}}\n'
                                        f'  - webhook: {{url: "{http_receiver.url("/ok")}",'
                                        f' secret: s}}')
        server = PdpServer(tmp_path, policy_dir=policies,
                           args=[*FAST, "--notify-attempt-timeout-s", "0.5"]).start()
        try:
            ids = [deny(server, f"a{i}") for i in range(3)]
            got = http_receiver.wait_for(3, "/ok", timeout=30)
            assert [r.json()["decision"]["decision_id"] for r in got] == ids
            # and the hanging one is timed out, then retried (not waited for forever)
            wait_until(lambda: "gave no answer within 0.5 s" in server.log())
        finally:
            server.stop()


def test_smtp_down_at_first_deny_then_back_sends_one_mail_even_after_restart(
        tmp_path: Path) -> None:
    port = free_port()
    policies = policy_dir(tmp_path, "  - email: {to: [oncall@example.com]}")
    args = [*FAST, "--notify-smtp-port", str(port)]
    sink = SmtpSink(port=port)
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    server = PdpServer(tmp_path, policy_dir=policies, args=args).start()
    try:
        deny(server, "a1")
        wait_until(lambda: retries(server, "email") >= 5)  # SMTP is down
        ctl.start()
        deny(server, "a2")
        with sink.cond:
            assert sink.cond.wait_for(lambda: len(sink.messages) >= 1, 30)
        assert server.terminate() == 0
        server.stop()
        # a restart the same day (same state file beside the audit file): no second mail
        server = PdpServer(tmp_path, policy_dir=policies, args=args).start()
        deny(server, "a3")
        assert server.terminate() == 0  # a clean stop lets due deliveries finish
        assert "already sent today" in server.log()
        assert len(sink.messages) == 1
    finally:
        server.stop()
        ctl.stop()


def test_restart_on_the_same_day_sends_no_second_mail_with_redis(
        tmp_path: Path, smtp_sink: SmtpSink) -> None:
    policies = policy_dir(tmp_path, "  - email: {to: [oncall@example.com]}")
    with redis_server() as redis:
        args = [*FAST, "--redis-url", redis.url, "--notify-smtp-port", str(smtp_sink.port)]
        for name in ("first", "second"):  # no local state shared: only Redis
            (tmp_path / name).mkdir()
            server = PdpServer(tmp_path / name, policy_dir=policies, args=args).start()
            try:
                deny(server, "a1")
                assert server.terminate() == 0
            finally:
                server.stop()
            assert len(smtp_sink.messages) == 1
        assert "already sent today" in server.log()
