"""HTTP probes and metrics through the real server: /healthz, /readyz (its checks, draining
on SIGTERM, the counter store), /metrics (process, per-RPC, decision metrics; the same
registry on prometheus_port), and the settings that do nothing alone."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdp.client import push_request
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer
from tests.support.procs import RedisServer, free_port
from tests.support.wait import DEADLINE_S, wait_until


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=DEADLINE_S) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples]


def handled(text: str, method: str, code: str) -> float:
    return sum(v for name, labels, v in samples(text)
               if name == "grpc_server_handled_total" and labels.get("grpc_method") == method
               and labels.get("grpc_code") == code)


def test_healthz_readyz_and_metrics(tmp_path: Path) -> None:
    prom = free_port()
    server = PdpServer(tmp_path, args=["--telemetry-enabled", "--prometheus-port",
                                      str(prom)]).start()
    try:
        assert get(f"{server.http_url}/healthz") == (200, "ok event_loop: running\n")
        status, body = get(f"{server.http_url}/readyz")
        assert status == 200, body
        assert body.splitlines() == ["ok policies: " + body.split("ok policies: ")[1]
                                     .splitlines()[0], "ok draining: no",
                                     "ok policy_store: reachable", "ok audit: writing",
                                     "ready"]
        assert get(f"{server.http_url}/nope")[0] == 404

        stub = dgrpc.DecisionServiceStub(grpc.insecure_channel(server.address))
        decision = stub.CheckPush(push_request("acme", "agent-1", config_yaml="a: 1"),
                                  timeout=DEADLINE_S).decision
        assert decision.outcome == cpb.OUTCOME_ALLOW
        with pytest.raises(grpc.RpcError) as err:  # no tenant: refused
            stub.CheckPush(push_request("", "agent-1", config_yaml="a: 1"), timeout=DEADLINE_S)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        def metrics() -> str:
            status, text = get(f"{server.http_url}/metrics")
            assert status == 200
            return text

        # the call is counted before its answer leaves; decision metrics may come after
        wait_until(lambda: any(n == "pdp_decisions_total" for n, _, _ in samples(metrics())),
                   "the decision metrics on /metrics")
        # a refused call is counted in the server's finally, which may follow its answer
        wait_until(lambda: handled(metrics(), "CheckPush", "INVALID_ARGUMENT") >= 1,
                   "the refused call counted")
        text = metrics()
        assert handled(text, "CheckPush", "OK") == 1
        assert handled(text, "CheckPush", "INVALID_ARGUMENT") == 1
        names = {n for n, _, _ in samples(text)}
        assert {"grpc_server_started_total", "grpc_server_handling_seconds_count",
                "process_resident_memory_bytes", "process_cpu_seconds_total",
                "python_info"} <= names
        [service] = {labels["grpc_service"] for n, labels, _ in samples(text)
                     if n == "grpc_server_handled_total" and labels["grpc_method"] == "CheckPush"}
        assert service == "pdp.v1.DecisionService"
        # prometheus_port serves the same registry
        status, other = get(f"http://127.0.0.1:{prom}/metrics")
        assert status == 200 and handled(other, "CheckPush", "OK") == 1
        assert any(n == "pdp_decisions_total" for n, _, _ in samples(other))
    finally:
        server.stop()


def test_decisions_for_unknown_tenants_are_not_labelled_by_the_name_sent(
        tmp_path: Path) -> None:
    """Made-up tenant names would grow the metrics without bound and list themselves to
    anyone reading /metrics: decisions for tenants pdp does not know count under one
    label, ``(unknown)``; known tenants keep theirs."""
    server = PdpServer(tmp_path, args=["--telemetry-enabled"]).start()
    try:
        stub = dgrpc.DecisionServiceStub(grpc.insecure_channel(server.address))
        for tenant in ("acme", "made-up-1", "made-up-2"):
            stub.CheckPush(push_request(tenant, "agent-1", config_yaml="a: 1"),
                           timeout=DEADLINE_S)

        def decisions() -> dict[str, float]:
            status, text = get(f"{server.http_url}/metrics")
            assert status == 200
            return {labels["tenant"]: v for n, labels, v in samples(text)
                    if n == "pdp_decisions_total"}
        wait_until(lambda: sum(decisions().values()) == 3, "three decisions counted")
        assert decisions() == {"acme": 1, "(unknown)": 2}
        assert "made-up" not in get(f"{server.http_url}/metrics")[1]
    finally:
        server.stop()


def test_metrics_without_telemetry_and_the_warning(tmp_path: Path) -> None:
    server = PdpServer(tmp_path, args=["--prometheus-port", str(free_port())]).start()
    try:
        stub = dgrpc.DecisionServiceStub(grpc.insecure_channel(server.address))
        stub.CheckPush(push_request("acme", "agent-1", config_yaml="a: 1"), timeout=DEADLINE_S)
        status, text = get(f"{server.http_url}/metrics")
        assert status == 200 and handled(text, "CheckPush", "OK") == 1
        assert not any(n.startswith("pdp_") for n, _, _ in samples(text))  # telemetry off
        assert "SETTING_WITHOUT_EFFECT" in server.log() and "prometheus_port" in server.log()
    finally:
        server.stop()


COUNTER_POLICY = """\
tenant: acme
name: cap
rule: {daily_cap: {max_count: 1000, timezone: UTC}}
"""


def test_readyz_follows_the_counter_store_and_draining(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "cap.yaml").write_text(COUNTER_POLICY)
    redis = RedisServer().start()
    # Long budgets: a decision waiting on a frozen Redis stays in flight until the test ends
    # it, so the server is still draining while /readyz is asked.
    server = PdpServer(tmp_path, policy_dir=policies, args=[
        "--redis-url", redis.url, "--redis-timeout-ms", "600000", "--deadline-ms", "600000",
        "--shutdown-grace-s", "600"]).start()
    try:
        assert get(f"{server.http_url}/readyz")[0] == 200
        redis.kill()
        wait_until(lambda: get(f"{server.http_url}/readyz") == (
            503, "ok policies: 1 loaded\nok draining: no\nok policy_store: reachable\n"
                 "ok audit: writing\nfail counter_store: unreachable\nnot ready\n"),
            "not ready without the counter store")
        assert get(f"{server.http_url}/healthz")[0] == 200  # alive all the same
        redis.start()
        wait_until(lambda: get(f"{server.http_url}/readyz")[0] == 200,
                   "ready again once the counter store is back")

        assert redis.proc is not None
        os.kill(redis.proc.pid, signal.SIGSTOP)  # accepts, never answers

        async def in_flight() -> None:
            async with grpc.aio.insecure_channel(server.address) as ch:
                call = dgrpc.DecisionServiceStub(ch).CheckPush(
                    push_request("acme", "agent-1", config_yaml="a: 1"), timeout=DEADLINE_S)
                task = asyncio.ensure_future(call)

                def started() -> bool:
                    return any("call_started" in line and "CheckPush" in line
                               for line in server.log().splitlines())
                while not started():
                    await asyncio.sleep(0.02)
                assert server.proc is not None
                server.proc.send_signal(signal.SIGTERM)
                while "fail draining: yes" not in (await asyncio.to_thread(
                        get, f"{server.http_url}/readyz"))[1]:
                    await asyncio.sleep(0.05)
                status, _ = await asyncio.to_thread(get, f"{server.http_url}/readyz")
                assert status == 503
                # draining, not dead: liveness holds
                assert (await asyncio.to_thread(get, f"{server.http_url}/healthz"))[0] == 200
                assert not task.done()
                task.cancel()

        asyncio.run(asyncio.wait_for(in_flight(), DEADLINE_S * 2))
    finally:
        if redis.proc is not None:
            os.kill(redis.proc.pid, signal.SIGCONT)
        server.stop()
        redis.close()


def test_probe_port_taken_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = PdpServer(tmp_path / "one").start()
    second = PdpServer(tmp_path / "two", args=["--http-listen",
                                               f"127.0.0.1:{first.http_port}"])
    try:
        second.start(wait=False)
        assert second.proc is not None
        assert second.proc.wait(timeout=DEADLINE_S * 2) == 2
        assert "http_listen: cannot bind" in second.log()
    finally:
        first.stop()
        second.stop()


# ---------------------------------------------------------------------- the Dockerfile
# No Docker daemon in CI: the Dockerfile is checked statically, and its HEALTHCHECK command
# is run here, as the container would run it, against a real server.

ROOT = Path(__file__).resolve().parents[2]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + (" " if line.rstrip().endswith("\\")
                                                      else "")
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def healthcheck_command() -> str:
    [args] = [a for word, a in dockerfile() if word == "HEALTHCHECK"]
    cmd = args[args.index("CMD ") + 4:].strip()
    assert not cmd.startswith("["), "exec form: no shell to map the exit code"
    return cmd


def env_of_image() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in dockerfile():
        if word == "ENV":
            for pair in args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_dockerfile_healthcheck_maps_failures_to_1_and_demo_policies_stay_out() -> None:
    assert healthcheck_command().endswith("|| exit 1")  # Docker reserves exit code 2
    env = env_of_image()
    policy_dir = env["PDP_POLICY_DIR"]
    assert env["PDP_HTTP_LISTEN"].startswith("0.0.0.0:")  # reachable from outside
    assert env["PDP_LISTEN"].startswith("0.0.0.0:")
    for word, args in dockerfile():
        if word == "COPY":
            dest = args.split()[-1].rstrip("/")
            assert dest != policy_dir and not dest.startswith(policy_dir + "/"), args
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore or ".git" in ignore


def test_dockerfile_healthcheck_follows_the_configured_port(tmp_path: Path) -> None:
    import subprocess

    server = PdpServer(tmp_path).start()
    env = {**os.environ, "PDP_HTTP_LISTEN": f"0.0.0.0:{server.http_port}"}
    try:
        up = subprocess.run(["sh", "-c", healthcheck_command()], env=env,
                            capture_output=True, timeout=DEADLINE_S)
        assert up.returncode == 0, up.stderr
    finally:
        server.stop()
    down = subprocess.run(["sh", "-c", healthcheck_command()], env=env, capture_output=True,
                          timeout=DEADLINE_S)
    assert down.returncode == 1
