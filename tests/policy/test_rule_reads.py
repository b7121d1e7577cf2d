"""Every typed rule reads only what it declares (``StatelessRule.reads``).

The engine shares a verdict between the agents of a step only when they agree on what the
policy reads; for typed rules that is the rule's declaration. This test runs every typed rule
and built-in over requests that exercise its branches, with a context that records what is
looked at, and fails when a rule reads anything it did not declare: a new rule, or a changed
one, cannot share a verdict it should not.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from pdp.policy.builtins import builtin_policies
from pdp.policy.loader import load_text
from pdp.policy.model import Checkpoint
from pdp.policy.rules import STATELESS, StatelessRule

RULES = {
    "blocked_days": "{days: [saturday, sunday], timezone: Europe/Berlin}",
    "allowed_hours": "{start_hour: 9, end_hour: 17, timezone: America/Sao_Paulo}",
    "freeze_windows": "{windows: [{start: '2026-01-01T00:00:00Z', end: '2026-01-02T00:00:00Z',"
                      " reason: audit}]}",
    "max_step_percent": "{max_percent: 10}",
    "require_approval": "{per_step: true, min_approvals: 2}",
    "device_constraints": "{min_os_version: {android: '10'}, min_memory: 4GB,"
                          " allowed_groups: [beta]}",
    "quality_gate": "{min_accuracy: 0.9, max_quality_drop: 0.05}",
    "auto_rollback": "{max_error_rate: 0.05, max_crash_rate: 0.01, max_p95_latency_ms: 500}",
}

CONFIG = {"exporters": {"otlp": {"endpoint": "collector.example.com:4317",
                                 "tls": {"insecure": True}}},
          "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp"]}}}}
PREVIOUS = {"exporters": {"otlp": {}, "old": {}},
            "service": {"pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["old"]}}}}


class Seen(dict):  # type: ignore[type-arg]
    """A dict (rules check ``isinstance(x, dict)``) that records the paths read through it."""

    def __init__(self, path: str, data: dict[str, Any], seen: set[str]) -> None:
        super().__init__(data)
        self.path, self.seen = path, seen

    def _wrap(self, key: str, value: Any) -> Any:
        return Seen(f"{self.path}.{key}", value, self.seen) if isinstance(value, dict) else value

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(f"{self.path}.{key}")
        return self._wrap(key, super().get(key, default))

    def __getitem__(self, key: str) -> Any:
        self.seen.add(f"{self.path}.{key}")
        return self._wrap(key, super().__getitem__(key))

    def __contains__(self, key: object) -> bool:
        self.seen.add(f"{self.path}.{key}")
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self.seen.add(self.path)
        return super().__iter__()

    def __len__(self) -> int:
        self.seen.add(self.path)
        return super().__len__()

    def keys(self) -> Any:
        self.seen.add(self.path)
        return super().keys()

    def items(self) -> Any:
        self.seen.add(self.path)
        return super().items()

    def values(self) -> Any:
        self.seen.add(self.path)
        return super().values()


class RecordingContext:
    """What a rule sees of a request (as EvalContext), recording every read."""

    def __init__(self, checkpoint: Checkpoint, activation: dict[str, Any]) -> None:
        self.seen: set[str] = set()
        self.tenant = "t"
        self.checkpoint = checkpoint
        self._now = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # a DST night in Europe
        self._activation = activation

    @property
    def now(self) -> datetime:
        self.seen.add("now")
        return self._now

    @property
    def activation(self) -> Any:
        return _Top(self._activation, self.seen)

    def section(self, name: str) -> Any:
        value = self._activation.get(name)
        if not isinstance(value, dict):
            self.seen.add(name)
            return {}
        return Seen(name, value, self.seen)


class _Top:
    """``ctx.activation``: a variable taken from it counts as read whole."""

    def __init__(self, data: dict[str, Any], seen: set[str]) -> None:
        self.data, self.seen = data, seen

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.seen.add(key)
        return self.data[key]


def _requests() -> list[tuple[Checkpoint, dict[str, Any]]]:
    full = {
        "agent": {"id": "a1", "labels": {"env": "prod"}, "group": "g",
                  "active_exporters": ["old"]},
        "device": {"id": "d1", "platform": "android", "os_version": "9", "groups": ["alpha"],
                   "memory_bytes": 1 << 30, "labels": {}},
        "rollout": {"id": "r1", "step": 2, "step_percent": 50.0,
                    "previous_step_percent": 10.0, "approvals": ["x"]},
        "metrics": {"accuracy": 0.5, "baseline/accuracy": 0.9, "error_rate": 0.5,
                    "crash_rate": 0.5, "p95_latency_ms": 900.0},
        "config": CONFIG, "previous_config": PREVIOUS,
        "change": {}, "request": {},
    }
    empty = {k: ({} if isinstance(v, dict) else v) for k, v in full.items()}
    return [(cp, act) for cp in Checkpoint for act in (full, empty)]


def _rules() -> list[tuple[str, StatelessRule]]:
    out = []
    for kind, params in RULES.items():
        [p] = load_text(f"tenant: t\nname: x\nrule:\n  {kind}: {params}\n")
        out.append((kind, p.rule))
    out += [(p.name, p.rule) for p in builtin_policies()]
    return out


def _covered(path: str, declared: frozenset[str]) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:i]) in declared for i in range(1, len(parts) + 1))


def test_every_typed_rule_kind_is_covered_here() -> None:
    assert set(STATELESS) <= set(RULES)


@pytest.mark.parametrize(("name", "rule"), _rules(), ids=lambda x: x if isinstance(x, str)
                         else "")
def test_a_typed_rule_reads_only_what_it_declares(name: str, rule: StatelessRule) -> None:
    declared = type(rule).reads
    read: set[str] = set()
    for checkpoint, activation in _requests():
        ctx: Any = RecordingContext(checkpoint, activation)
        rule.evaluate(ctx)
        breaches = getattr(rule, "breaches", None)
        if breaches is not None:
            breaches(ctx)
        read |= ctx.seen
    undeclared = {p for p in read if not _covered(p, declared)}
    assert not undeclared, f"{name} reads {sorted(undeclared)} but declares {sorted(declared)}"
    assert read, f"{name} read nothing at all: the recording context missed its reads"
