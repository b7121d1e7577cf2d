"""Adversarial requests (issue 16) and the configs the policy cases evaluate against.

Requests are built in Python because some need raw protobuf bytes (invalid UTF-8 in a
``string`` field cannot be expressed through the generated classes). Every input is sent to
tenant ``INPUT_TENANT``, which holds ordinary policies (``INPUT_POLICIES``) that allow the
benign request ``benign_push()``: a good server refuses each input by its own limits
(INVALID_ARGUMENT naming the field, or a DENY such as INVALID_CONFIG), not by luck.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pdp.client import push_request
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb

CHECK_PUSH = "/pdp.v1.DecisionService/CheckPush"
CHECK_PUSH_BATCH = "/pdp.v1.DecisionService/CheckPushBatch"
CHECK_ROLLOUT = "/pdp.v1.DecisionService/CheckRollout"
CHECK_DEVICE = "/pdp.v1.DecisionService/CheckDevice"

RESPONSES: dict[str, Any] = {
    CHECK_PUSH: dpb.CheckPushResponse, CHECK_PUSH_BATCH: dpb.CheckPushBatchResponse,
    CHECK_ROLLOUT: dpb.CheckRolloutResponse, CHECK_DEVICE: dpb.CheckDeviceResponse,
}

MIB = 1024 * 1024

# -- configs the policy cases name (``config: [items-100k, s-1000]``: merged maps) ----------

CONFIG_PARTS: dict[str, Callable[[], dict[str, Any]]] = {
    "default": lambda: {"s": "abc", "items": [1, 2, 3], "exporters": {"otlp": {}}},
    "s-1000": lambda: {"s": "a" * 1000},
    # the longest scalar a config may hold (configparse.MAX_SCALAR_CHARS: 64 Ki characters);
    # 100 000 characters made every case using it an INVALID_CONFIG that never reached CEL
    "s-100k": lambda: {"s": "a" * (64 * 1024 - 1) + "!"},
    "s-1m": lambda: {"s": "a" * MIB},
    "items-1k": lambda: {"items": list(range(1000))},
    "items-100k": lambda: {"items": list(range(100_000))},
    "strs-10k": lambda: {"strs": [f"a{i}" for i in range(10_000)]},
    "strs-100k": lambda: {"strs": [f"a{i}" for i in range(100_000)]},
    "map-10k": lambda: {"m": {f"k{i}": i for i in range(10_000)}},
    "pattern": lambda: {"p": "(x+x+)+y"},
    "dur-64k": lambda: {"d": "1s" * 32_000},
    "durs-100k": lambda: {"ds": ["1s"] * 100_000},
    "vers-100k": lambda: {"vs": ["1"] * 100_000},
}


def config_yaml(parts: list[str] | None) -> str:
    """The config text for a case: the named parts merged into one map, as JSON (YAML)."""
    doc: dict[str, Any] = CONFIG_PARTS["default"]()
    for name in parts or []:
        doc.update(CONFIG_PARTS[name]())
    return json.dumps(doc, separators=(",", ":"))


AGENT_LABELS = {"env": "prod", "region": "eu"}
ROLLOUT = {"id": "rollout-adv", "step": 1, "stepPercent": 10}
CHANGE = {"subject": "otel-collector", "source": "ui", "type": "config"}


def push(tenant: str, config: str, agent_id: str = "agent-1", **kw: Any) -> dpb.CheckPushRequest:
    return push_request(tenant, agent_id, config_yaml=config, agent_labels=AGENT_LABELS,
                        agent_group="eu-prod", rollout=ROLLOUT, change=CHANGE, **kw)


# -- the adversarial inputs ------------------------------------------------------------------

INPUT_TENANT = "adv-inputs"

#: Ordinary policies of the inputs tenant: they read the config, the agent and the rollout,
#: and allow ``benign_push()``. No type guards: a config that is not a map makes the first
#: one fail, which must deny (fail-closed).
INPUT_POLICIES = f"""\
tenant: {INPUT_TENANT}
name: no-debug-exporter
checkpoints: [push, auto_apply, device]
rule:
  cel:
    deny: '"debug" in config.exporters'
    message: '"debug exporter on " + agent.id'
---
tenant: {INPUT_TENANT}
name: staging-only-label
checkpoints: [push]
rule:
  cel:
    deny: '"env" in agent.labels && agent.labels.env == "staging" && rollout.step > 3'
---
tenant: {INPUT_TENANT}
name: small-steps
checkpoints: [push, rollout_precondition]
rule:
  max_step_percent:
    max_percent: 25
---
tenant: {INPUT_TENANT}
name: accuracy-gate
checkpoints: [rollout_precondition]
rule:
  quality_gate:
    min_accuracy: 0.5
---
tenant: {INPUT_TENANT}
name: device-memory
checkpoints: [device]
rule:
  device_constraints:
    min_memory: 1024
"""

BENIGN_CONFIG = json.dumps({"exporters": {"otlp": {"endpoint": "otel.eu.example.com:4317"}},
                            "service": {"pipelines": {"traces": {"exporters": ["otlp"]}}}})


def benign_push(agent_id: str = "agent-1") -> dpb.CheckPushRequest:
    return push(INPUT_TENANT, BENIGN_CONFIG, agent_id)


@dataclass(frozen=True)
class Input:
    id: str
    why: str
    method: str
    build: Callable[[], bytes]  # the serialized request (raw bytes for the malformed ones)
    expect: str  # "invalid_argument" or "deny": what a good server answers


def _ser(msg: Any) -> Callable[[], bytes]:
    return lambda: bytes(msg().SerializeToString())


def _push_with(config: str = BENIGN_CONFIG, agent_id: str = "agent-1",
               mutate: Callable[[dpb.CheckPushRequest], None] | None = None
               ) -> Callable[[], bytes]:
    def build() -> bytes:
        req = push(INPUT_TENANT, config, agent_id)
        if mutate is not None:
            mutate(req)
        return bytes(req.SerializeToString())
    return build


def _billion_laughs() -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append("exporters: {otlp: {}}")
    lines.append("boom: *a9")
    return "\n".join(lines) + "\n"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _raw_push(tenant: bytes, agent_id: bytes, config: bytes) -> bytes:
    """A CheckPushRequest written by hand: tenant=1, agent=3 {id=1}, config=6 {yaml=1}."""
    return (_field(1, tenant) + _field(3, _field(1, agent_id))
            + _field(6, _field(1, config)))


def _labels(n: int, value: str = "v") -> Callable[[dpb.CheckPushRequest], None]:
    def mutate(req: dpb.CheckPushRequest) -> None:
        for i in range(n):
            req.agent.labels[f"k{i}"] = value
    return mutate


def _batch(n: int, id_len: int) -> bytes:
    one = benign_push()
    req = dpb.CheckPushBatchRequest(tenant=INPUT_TENANT, checkpoint=cpb.CHECKPOINT_PUSH,
                                    rollout=one.rollout, change=one.change, config=one.config)
    for i in range(n):
        req.agents.add(id=f"{i:06d}".ljust(id_len, "x"), labels=AGENT_LABELS, group="eu-prod")
    return bytes(req.SerializeToString())


def _rollout(metrics: dict[str, float], step_percent: float = 10) -> bytes:
    req = dpb.CheckRolloutRequest(tenant=INPUT_TENANT)
    req.rollout.id = "rollout-adv"
    req.rollout.step = 1
    req.rollout.step_percent = step_percent
    req.change.subject = "otel-collector"
    req.config.yaml = BENIGN_CONFIG
    for k, v in metrics.items():
        req.metrics[k] = v
    return bytes(req.SerializeToString())


def _step_percent(v: float) -> Callable[[dpb.CheckPushRequest], None]:
    def mutate(req: dpb.CheckPushRequest) -> None:
        req.rollout.step_percent = v
    return mutate


def _device(groups: int) -> bytes:
    req = dpb.CheckDeviceRequest(tenant=INPUT_TENANT)
    req.device.id = "device-1"
    req.device.platform = "linux"
    req.device.os_version = "1.0"
    req.device.memory_bytes = 4096
    req.device.groups.extend(f"g{i}" for i in range(groups))
    req.config.yaml = BENIGN_CONFIG
    return bytes(req.SerializeToString())


def _previous(text: str) -> Callable[[dpb.CheckPushRequest], None]:
    def mutate(req: dpb.CheckPushRequest) -> None:
        req.previous_config.yaml = text
    return mutate


def _list_config(n_bytes: int) -> str:
    return "exporters: {otlp: {}}\nitems:\n" + "- 1\n" * ((n_bytes - 30) // 4)


INPUTS: list[Input] = [
    Input("config-4mb-list", "a 4 MB YAML block list (1 M items) just under max-config-bytes",
          CHECK_PUSH, _push_with(_list_config(4 * MIB - 1024)), "deny"),
    Input("config-over-limit", "a 5 MB config, over the default max-config-bytes (4 MiB)",
          CHECK_PUSH, _push_with(_list_config(5 * MIB)), "deny"),
    Input("config-100k-flow-list", "a 210 KB config holding a 100 000-item flow list",
          CHECK_PUSH, _push_with('{"exporters":{"otlp":{}},"items":[' + ",".join(["1"] * 100_000)
                                 + "]}"), "deny"),
    Input("config-billion-laughs", "YAML aliases expanding to 10^10 strings",
          CHECK_PUSH, _push_with(_billion_laughs()), "deny"),
    Input("config-deep-100", "a config nested 100 levels deep",
          CHECK_PUSH, _push_with("exporters: {otlp: {}}\nx: " + "[" * 100 + "]" * 100), "deny"),
    Input("config-deep-10000", "a config nested 10 000 levels deep (parser recursion)",
          CHECK_PUSH, _push_with("exporters: {otlp: {}}\nx: " + "[" * 10_000 + "]" * 10_000),
          "deny"),
    Input("config-int-5000-digits", "a 5 000-digit integer (over Python's int parsing limit)",
          CHECK_PUSH, _push_with("exporters: {otlp: {}}\nx: " + "9" * 5000), "deny"),
    Input("config-python-tag", "a !!python/object tag (unsafe YAML loaders run code)",
          CHECK_PUSH, _push_with("exporters: {otlp: {}}\nx: !!python/object/apply:os.getcwd []"),
          "deny"),
    Input("config-100k-keys", "a config map with 100 000 keys",
          CHECK_PUSH, _push_with(json.dumps({"exporters": {"otlp": {}},
                                             **{f"k{i}": i for i in range(100_000)}})), "deny"),
    Input("config-long-scalar", "one 4 MB string scalar",
          CHECK_PUSH, _push_with('{"exporters":{"otlp":{}},"s":"' + "a" * (4 * MIB - 1024) + '"}'),
          "deny"),
    Input("config-empty", "an empty config", CHECK_PUSH, _push_with(""), "invalid_argument"),
    Input("config-plain-string", "a config that is a YAML string, not a map",
          CHECK_PUSH, _push_with("just a string"), "deny"),
    Input("config-bad-utf8", "invalid UTF-8 bytes in config.yaml (hand-built protobuf)",
          CHECK_PUSH, lambda: _raw_push(INPUT_TENANT.encode(), b"agent-1",
                                        b"exporters: {otlp: {}}\nx: \"\xff\xfe\xc3\x28\"\n"),
          "invalid_argument"),
    Input("agent-id-bad-utf8", "invalid UTF-8 bytes in agent.id (hand-built protobuf)",
          CHECK_PUSH, lambda: _raw_push(INPUT_TENANT.encode(), b"agent-\xff\xfe",
                                        BENIGN_CONFIG.encode()), "invalid_argument"),
    Input("agent-id-1mb", "a 1 MiB agent id", CHECK_PUSH,
          _push_with(agent_id="a" * MIB), "invalid_argument"),
    Input("label-value-1mb", "a 1 MiB label value", CHECK_PUSH,
          _push_with(mutate=_labels(1, "v" * MIB)), "invalid_argument"),
    Input("labels-10000", "10 000 agent labels", CHECK_PUSH,
          _push_with(mutate=_labels(10_000)), "invalid_argument"),
    Input("tenant-huge", "a 1 MiB tenant name", CHECK_PUSH,
          _ser(lambda: push("t" * MIB, BENIGN_CONFIG)), "invalid_argument"),
    Input("previous-config-huge", "a 4 MB previous_config beside a small config", CHECK_PUSH,
          _push_with(mutate=_previous(_list_config(4 * MIB - 1024))), "deny"),
    Input("request-id-1mb", "a 1 MiB request id (echoed into the audit record)", CHECK_PUSH,
          _push_with(mutate=lambda r: setattr(r, "request_id", "r" * MIB)), "invalid_argument"),
    Input("step-percent-nan", "rollout.step_percent = NaN (NaN > 25 is false)", CHECK_PUSH,
          _push_with(mutate=_step_percent(float("nan"))), "invalid_argument"),
    Input("step-percent-inf", "rollout.step_percent = -inf", CHECK_PUSH,
          _push_with(mutate=_step_percent(float("-inf"))), "invalid_argument"),
    Input("batch-1000-long-ids", "a 1 000-agent step whose agent ids are 8 KiB each (8 MB)",
          CHECK_PUSH_BATCH, lambda: _batch(1000, 8192), "invalid_argument"),
    Input("batch-over-max-agents", "5 001 agents, over max-batch-agents", CHECK_PUSH_BATCH,
          lambda: _batch(5001, 8), "invalid_argument"),
    Input("rollout-100k-metrics", "CheckRollout with 100 000 metrics", CHECK_ROLLOUT,
          lambda: _rollout({f"m{i}": 0.9 for i in range(100_000)} | {"accuracy": 0.9}),
          "invalid_argument"),
    Input("rollout-nan-metric", "CheckRollout with accuracy = NaN", CHECK_ROLLOUT,
          lambda: _rollout({"accuracy": float("nan")}), "invalid_argument"),
    Input("device-100k-groups", "CheckDevice with 100 000 groups", CHECK_DEVICE,
          lambda: _device(100_000), "invalid_argument"),
]
