"""What the suite asks the server: generated policy directories and request messages.

Every tenant gets the same *kinds* of policies (CEL over the config and the agent, typed
request/clock rules, counter rules) so that cost differences come from counts, not content.
Constants vary per policy, so each CEL expression is its own compiled program (no cache
sharing that would flatter the memory figure).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIG_YAML = (ROOT / "examples" / "configs" / "collector.yaml").read_text()

# One tenant's "10 policies (CEL, typed, counters)": every one applies to a push of a prod EU
# agent and allows it, so the whole decision path (including the counter call) is exercised.
_CEL = [
    ("no-debug-exporter", """
      type(config) == map && "exporters" in config && type(config.exporters) == map
      && config.exporters.exists(n, n == "debug{i}" || n.startsWith("debug{i}/"))"""),
    ("eu-endpoints-only", """
      type(config) == map && "exporters" in config && type(config.exporters) == map
      && config.exporters.exists(n, type(config.exporters[n]) == map
           && "endpoint" in config.exporters[n]
           && !config.exporters[n].endpoint.isLocalhost()
           && !(config.exporters[n].endpoint.endpointHost().endsWith(".eu.example.com")
                || config.exporters[n].endpoint.endpointHost() == "otel{i}.acme.eu"))"""),
    ("traces-tail-sampling", """
      type(config) == map && "service" in config && type(config.service) == map
      && "pipelines" in config.service && type(config.service.pipelines) == map
      && config.service.pipelines.exists(p, (p == "traces" || p.startsWith("traces/"))
           && !(type(config.service.pipelines[p]) == map
                && "processors" in config.service.pipelines[p]
                && "tail_sampling" in config.service.pipelines[p].processors))
      && agent.id != "never-{i}\""""),
    ("hostmetrics-interval", """
      type(config) == map && "receivers" in config && type(config.receivers) == map
      && config.receivers.exists(r, (r == "hostmetrics" || r.startsWith("hostmetrics/"))
           && type(config.receivers[r]) == map && "collection_interval" in config.receivers[r]
           && duration(config.receivers[r].collection_interval) < duration("{s}s"))"""),
    ("label-guard", """
      "env" in agent.labels && agent.labels.env == "staging{i}" && rollout.step > 1000"""),
]

_TYPED = [
    ("small-steps", "max_step_percent:\n    max_percent: {pct}"),
    ("past-freeze", "freeze_windows:\n    windows:\n      - start: \"2001-01-01T00:00:00Z\"\n"
                    "        end: \"2001-01-0{d}T00:00:00Z\"\n        reason: old freeze {i}"),
]

_COUNTERS = [
    ("daily-cap", "daily_cap:\n    max_count: {big}\n    timezone: Europe/Berlin\n"
                  "    scope: tenant"),
    ("velocity", "velocity:\n    max_count: {big}\n    window_minutes: 60\n    scope: tenant"),
    ("agent-cooldown", "cooldown:\n    minutes: 1\n    scope: agent"),
]


def tenant_policies(tenant: str, count: int, *, counters: bool = True,
                    agent_cooldown: bool = False) -> str:
    """``count`` policies for ``tenant`` as one multi-document YAML text.

    The first ten are the mix above (5 CEL, 2 typed, 3 counters); more policies cycle through
    the stateless kinds with new constants. ``agent_cooldown`` keeps the per-agent cooldown
    (a push to the same agent within a minute is then denied: use fresh agent ids).
    """
    kinds: list[tuple[str, str, str]] = []  # (name, kind, body)
    for name, expr in _CEL:
        kinds.append((name, "cel", expr))
    for name, body in _TYPED:
        kinds.append((name, "typed", body))
    counter_kinds = [c for c in _COUNTERS if agent_cooldown or c[0] != "agent-cooldown"]
    if not agent_cooldown:
        counter_kinds.append(("rollout-velocity", "velocity:\n    max_count: {big}\n"
                                                  "    window_minutes: 60\n    scope: rollout"))
    stateless = list(kinds)
    if counters:
        kinds += [(n, "typed", b) for n, b in counter_kinds]
    docs = []
    for i in range(count):
        name, kind, body = kinds[i] if i < len(kinds) else stateless[i % len(stateless)]
        fmt = {"i": i, "s": 60 - (i % 50), "pct": 50 + i % 50, "big": 10**9 - i, "d": 2 + i % 7}
        if kind == "cel":
            rule = "  cel:\n    deny: >\n" + "\n".join(
                "      " + line.strip() for line in expr_fmt(body, fmt).strip().splitlines())
        else:
            rule = "  " + body.format(**fmt)
        docs.append(f"tenant: {tenant}\nname: {name}-{i}\ncheckpoints: [push, auto_apply]\n"
                    f"rule:\n{rule}\n")
    return "---\n".join(docs)


def expr_fmt(text: str, values: dict[str, object]) -> str:
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    return text


def write_policy_dir(directory: Path, tenants: dict[str, int], **kw: bool) -> int:
    """One YAML file per tenant; returns the number of policies written."""
    directory.mkdir(parents=True, exist_ok=True)
    total = 0
    for tenant, count in tenants.items():
        if count:
            (directory / f"{tenant}.yaml").write_text(tenant_policies(tenant, count, **kw))
            total += count
    return total


def push_bytes(tenant: str, agent_id: str = "agent-eu-1") -> bytes:
    """A serialized CheckPushRequest for a prod EU agent in a 10% rollout step."""
    from pdp.client import push_request

    return push_request(
        tenant, agent_id, config_yaml=CONFIG_YAML,
        agent_labels={"env": "prod", "region": "eu"}, agent_group="eu-prod",
        rollout={"id": "rollout-42", "step": 1, "stepPercent": 10},
        change={"subject": "otel-collector", "source": "ui", "type": "config"},
    ).SerializeToString()


def batch_request(tenant: str, agent_ids: list[str]) -> object:
    from google.protobuf import json_format

    from pdp.client import push_request
    from pdp.v1 import common_pb2 as cpb
    from pdp.v1 import decision_pb2 as dpb

    one = push_request(tenant, "x", config_yaml=CONFIG_YAML,
                       rollout={"id": "rollout-42", "step": 1, "stepPercent": 10},
                       change={"subject": "otel-collector", "source": "ui", "type": "config"})
    req = dpb.CheckPushBatchRequest(tenant=tenant, checkpoint=cpb.CHECKPOINT_PUSH,
                                    rollout=one.rollout, change=one.change, config=one.config)
    for a in agent_ids:
        req.agents.add(id=a, labels={"env": "prod", "region": "eu"}, group="eu-prod")
    del json_format
    return req


# -- the realistic workload: the examples as a user writes them --------------------------------

EXAMPLES = ROOT / "examples"
REALISTIC_REQUEST = EXAMPLES / "requests" / "push-allow.yaml"


def write_realistic_policy_dir(directory: Path) -> int:
    """examples/policies (not their unit tests) with the daily cap raised, so that a benchmark
    measures the allow path (the cap of 5 000 would deny after the first seconds of load).
    Returns the number of files written."""
    import re

    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for src in sorted((EXAMPLES / "policies").glob("*.yaml")):
        if src.name.endswith(".test.yaml"):
            continue
        text = re.sub(r"max_count: \d+", "max_count: 1000000000", src.read_text())
        (directory / src.name).write_text(text)
        n += 1
    return n


def realistic_push_bytes(agent_id: str | None = None) -> bytes:
    """examples/requests/push-allow.yaml (its real collector config), serialized; with
    ``agent_id`` the agent's id replaced (the rest of the request unchanged)."""
    from pdp.client import request_from_file

    method, msg = request_from_file(REALISTIC_REQUEST)
    assert method == "CheckPush", method
    if agent_id is not None:
        msg.agent.id = agent_id
    return bytes(msg.SerializeToString())
