"""examples/policies on the real engine: every example request decides as its comment says,
and each common tenant policy denies naming the offending element."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pdp.api import convert
from pdp.cel import ProgramCache, pdp_environment
from pdp.client import request_from_file
from pdp.counters import MemoryCounterStore
from pdp.engine.context import ConfigCache
from pdp.engine.decision import Decision
from pdp.engine.engine import Engine, EngineOptions
from pdp.engine.request import Caller, CheckRequest
from pdp.policy.builtins import builtin_policies
from pdp.policy.compiled import compile_or_broken
from pdp.policy.loader import load_directory
from pdp.policy.model import Checkpoint
from pdp.policy.policyset import PolicySet

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = ROOT / "examples" / "requests"


class _Audit:
    def emit(self, event: dict[str, Any]) -> None:
        pass

    async def log_decision(self, decision: Any) -> None:
        pass

    refusing: str | None = None


def _engine() -> Engine:
    env, cache = pdp_environment(), ProgramCache(100)
    compiled = [compile_or_broken(p, env, cache)
                for p in load_directory(ROOT / "examples" / "policies")]
    assert not [p.name for p in compiled if p.broken], "an example policy does not compile"
    builtins = [compile_or_broken(p, env, cache) for p in builtin_policies()]
    return Engine(PolicySet(compiled, builtins, {}), MemoryCounterStore(), _Audit(),
                  ConfigCache(10, 8 << 20), EngineOptions())


async def _decide(req: CheckRequest) -> Decision:
    return await _engine().check(req, 1.0)


@pytest.mark.parametrize(("name", "policy", "element"), [
    ("push-allow.yaml", None, None),
    ("push-deny-tls-insecure.yaml", "default-deny-tls-insecure-on-non-localhost", "otlp/backend"),
    ("push-deny-debug-exporter-in-prod.yaml", "no-debug-exporter-in-prod", "agent-us-7"),
    ("push-deny-step-too-large.yaml", "small-steps", "50%"),
    ("push-deny-non-eu-endpoint.yaml", "eu-endpoints-only", "otlp/us"),
    ("push-deny-no-tail-sampling.yaml", "traces-through-tail-sampling", "traces"),
    ("push-deny-hostmetrics-interval.yaml", "hostmetrics-interval-at-least-60s", "hostmetrics"),
    ("push-deny-debug-exporter-production-group.yaml", "no-debug-exporter-in-production-group",
     "debug"),
])
async def test_example_requests(name: str, policy: str | None, element: str | None) -> None:
    method, msg = request_from_file(REQUESTS / name)
    assert method == "CheckPush"
    d = await _decide(convert.check_push_request(msg, Caller("test")))
    if policy is None:
        assert d.allowed, d.reasons
        assert not d.shadow_denies
        return
    assert not d.allowed
    # each deny example denies for its named reason only
    assert [r.policy for r in d.reasons] == [policy], d.reasons
    assert element is not None and element in d.reasons[0].message


def _push(config: str, labels: dict[str, str] | None = None) -> CheckRequest:
    return CheckRequest(tenant="acme", checkpoint=Checkpoint.PUSH,
                        agent={"id": "agent-1", "labels": labels or {}},
                        change={"subject": "otel-collector", "source": "ui", "type": "config"},
                        config_yaml=config)


def _exporter(name: str, endpoint: str) -> str:
    return f"exporters:\n  {name}: {{endpoint: '{endpoint}'}}\n"


@pytest.mark.parametrize(("config", "denied"), [
    (_exporter("otlp/a", "traces.eu.example.com:4317"), None),
    (_exporter("otlp/a", "https://otel.acme.eu/v1/traces"), None),
    (_exporter("otlp/a", "collector.europe-west1.example.net:443"), None),
    (_exporter("otlp/a", "localhost:4317"), None),
    (_exporter("otlp/a", "127.0.0.1:4317"), None),
    (_exporter("otlp/a", "traces.example.com:4317"), "otlp/a"),
    (_exporter("otlp/a", "https://eu.example.com.attacker.io"), "otlp/a"),  # suffix, not substring
    (_exporter("otlp/b", "https://otel.acme.eu.evil.com:443"), "otlp/b"),
    ("exporters:\n  debug: {}\n", None),  # no endpoint: nothing to send abroad
])
async def test_eu_endpoints_only(config: str, denied: str | None) -> None:
    d = await _decide(_push(config, {"region": "eu"}))
    _assert(d, "eu-endpoints-only", denied)
    # outside the EU the policy does not apply
    assert (await _decide(_push(config, {"region": "us"}))).allowed or denied is None


def _pipelines(**pipelines: list[str]) -> str:
    body = "".join(f"    {p}: {{receivers: [otlp], processors: [{', '.join(procs)}],"
                   " exporters: [otlp]}\n" for p, procs in pipelines.items())
    return "exporters:\n  otlp: {endpoint: localhost:4317}\nservice:\n  pipelines:\n" + body


@pytest.mark.parametrize(("config", "denied"), [
    (_pipelines(traces=["tail_sampling", "batch"]), None),
    (_pipelines(**{"traces": ["tail_sampling", "batch"], "traces/2": ["tail_sampling", "batch"]}),
     None),
    (_pipelines(metrics=["batch"]), None),  # only traces pipelines need it
    (_pipelines(traces=["batch"]), "traces"),
    (_pipelines(**{"traces": ["tail_sampling", "batch"], "traces/raw": ["batch"]}), "traces/raw"),
    (_pipelines(traces=[]), "traces"),
])
async def test_traces_through_tail_sampling(config: str, denied: str | None) -> None:
    _assert(await _decide(_push(config, {"env": "prod"})), "traces-through-tail-sampling", denied)


def _hostmetrics(name: str, interval: str | None) -> str:
    body = "{}" if interval is None else f"{{collection_interval: {interval}}}"
    return f"receivers:\n  {name}: {body}\n"


@pytest.mark.parametrize(("config", "denied"), [
    (_hostmetrics("hostmetrics", "60s"), None),
    (_hostmetrics("hostmetrics", "1m"), None),
    (_hostmetrics("hostmetrics", "2m30s"), None),
    (_hostmetrics("hostmetrics", None), None),  # collector default is 1 minute
    (_hostmetrics("hostmetrics", "30s"), "hostmetrics"),
    (_hostmetrics("hostmetrics", "59.5s"), "hostmetrics"),
    (_hostmetrics("hostmetrics/disk", "500ms"), "hostmetrics/disk"),
    (_hostmetrics("otlp", "1s"), None),
])
async def test_hostmetrics_interval(config: str, denied: str | None) -> None:
    _assert(await _decide(_push(config)), "hostmetrics-interval-at-least-60s", denied)


async def test_hostmetrics_unreadable_interval_fails_closed() -> None:
    d = await _decide(_push(_hostmetrics("hostmetrics", "soon")))
    assert not d.allowed and d.reasons[0].policy == "hostmetrics-interval-at-least-60s"


@pytest.mark.parametrize(("config", "labels", "denied"), [
    ("exporters:\n  debug: {}\n", {"group": "production"}, "debug"),
    ("exporters:\n  debug/verbose: {}\n", {"group": "production"}, "debug/verbose"),
    ("exporters:\n  debug: {}\n", {"group": "staging"}, None),
    ("exporters:\n  debug: {}\n", {}, None),
    ("exporters:\n  otlp: {endpoint: localhost:4317}\n", {"group": "production"}, None),
])
async def test_no_debug_exporter_in_production_group(config: str, labels: dict[str, str],
                                                     denied: str | None) -> None:
    _assert(await _decide(_push(config, labels)), "no-debug-exporter-in-production-group",
            denied)


def _assert(d: Decision, policy: str, element: str | None) -> None:
    mine = [r for r in d.reasons if r.policy == policy]
    if element is None:
        assert not mine, mine
        return
    assert len(mine) == 1, d.reasons
    assert repr(element) not in mine[0].message  # CEL message: bare name
    assert f" {element} " in mine[0].message, mine[0].message
