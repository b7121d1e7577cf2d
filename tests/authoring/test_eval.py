"""``pdp eval``: a request file decided offline gives the decision the server's engine gives."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from pdp.api import convert
from pdp.authoring import eval as pdp_eval
from pdp.cel import ProgramCache, pdp_environment
from pdp.cli import main as cli_main
from pdp.client import request_from_file
from pdp.counters import MemoryCounterStore
from pdp.engine.context import ConfigCache
from pdp.engine.engine import Engine, EngineOptions
from pdp.engine.request import Caller
from pdp.policy.builtins import builtin_policies
from pdp.policy.compiled import compile_or_broken
from pdp.policy.loader import load_directory
from pdp.policy.policyset import PolicySet

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "examples" / "policies"
REQUESTS = sorted((ROOT / "examples" / "requests").glob("*.yaml"))


class _Audit:
    def emit(self, event: dict[str, object]) -> None:
        pass

    async def log_decision(self, decision: object) -> None:
        pass

    refusing: str | None = None


def _server_engine() -> Engine:
    """The engine as the server builds it from the same directory (drafts in shadow)."""
    env, cache = pdp_environment(), ProgramCache(100)
    compiled = [compile_or_broken(p, env, cache) for p in load_directory(POLICIES)]
    builtins = [compile_or_broken(p, env, cache) for p in builtin_policies()]
    return Engine(PolicySet(compiled, builtins, {}), MemoryCounterStore(), _Audit(),
                  ConfigCache(10, 8 << 20), EngineOptions())


@pytest.mark.parametrize("request_file", REQUESTS, ids=[p.name for p in REQUESTS])
def test_eval_decides_every_example_as_the_server_engine(request_file: Path) -> None:
    method, msg = request_from_file(request_file)
    req = getattr(convert, {"CheckPush": "check_push_request",
                            "CheckDevice": "check_device_request",
                            "CheckRollout": "check_rollout_request"}[method])(
        msg, Caller("test"))
    server = asyncio.run(_server_engine().check(req, 1.0))
    result = pdp_eval.evaluate(POLICIES, request_file)
    assert result["allowed"] is server.allowed
    assert [(r["policy"], r["code"], r["message"]) for r in result["reasons"]] == [
        (r.policy or "system", str(r.code), r.message) for r in server.reasons]
    # the file name says the decision
    assert result["allowed"] is request_file.name.startswith("push-allow")
    out = io.StringIO()
    code = pdp_eval.main(POLICIES, request_file, out=out)
    assert code == (0 if server.allowed else 1)
    assert out.getvalue().startswith("ALLOW" if server.allowed else "DENY")


def test_eval_prints_each_policy_verdict_and_explains() -> None:
    out = io.StringIO()
    code = pdp_eval.main(POLICIES, ROOT / "examples/requests/push-deny-non-eu-endpoint.yaml",
                         explain=True, out=out)
    text = out.getvalue()
    assert code == 1
    assert "deny: [eu-endpoints-only v1] POLICY_DENIED: exporter otlp/us sends to a non-EU" \
        in text
    assert "  eu-endpoints-only " in text and " deny\n" in text
    assert "not applicable" in text  # no-debug-exporter-in-prod: agent is not env=prod
    assert "explanation of eu-endpoints-only:" in text
    assert "violations = " in text


def test_eval_exit_code_2_on_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenant: t\nname: x\nrule:\n  cel:\n    deny: 'agent.lables.x == \"\"'\n")
    req = ROOT / "examples/requests/push-allow.yaml"
    assert pdp_eval.main(bad, req, out=io.StringIO()) == 2
    assert pdp_eval.main(POLICIES, tmp_path / "missing.yaml", out=io.StringIO()) == 2


def test_pdp_eval_command(capsys: pytest.CaptureFixture[str]) -> None:
    req = ROOT / "examples/requests/push-deny-hostmetrics-interval.yaml"
    assert cli_main(["eval", str(POLICIES), str(req), "--json"]) == 1
    assert '"allowed": false' in capsys.readouterr().out


def test_now_pins_the_instant_decided_at(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Clock rules and daily-cap days depend on the time: --now decides as at an instant
    (with its offset; a naive or impossible one is refused, exit 2)."""
    pol = tmp_path / "p.yaml"
    pol.write_text("tenant: acme\nname: office-hours\n"
                   "rule: {allowed_hours: {start_hour: 9, end_hour: 17,"
                   " timezone: Europe/Berlin}}\n")
    req = tmp_path / "r.yaml"
    req.write_text("kind: push\ntenant: acme\nagent: {id: a1}\nconfig: {yaml: 'receivers: {}'}\n")
    assert cli_main(["eval", str(pol), str(req), "--now", "2026-06-15T10:00:00Z"]) == 0
    assert cli_main(["eval", str(pol), str(req), "--now", "2026-06-15T18:00:00+02:00"]) == 1
    capsys.readouterr()
    for bad in ("2026-06-15T10:00:00", "2026-06-15T10:00:00+05:99"):
        assert cli_main(["eval", str(pol), str(req), "--now", bad]) == 2
        assert "--now:" in capsys.readouterr().err
