"""An in-process engine for authoring tools: policies from files, in-memory counters on a
pinned clock, audit discarded. Nothing here touches a live server, counter store or audit file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

from pdp.api import convert
from pdp.audit.record import DecisionRecord
from pdp.authoring.lint import DEFAULT_MAX_COST
from pdp.cel import ProgramCache, pdp_environment
from pdp.client import request_message
from pdp.counters import ManualClock, MemoryCounterStore
from pdp.engine.context import ConfigCache
from pdp.engine.engine import Engine, EngineOptions
from pdp.engine.request import Caller, CheckRequest, InvalidRequest, Override
from pdp.engine.shadow import ShadowOptions
from pdp.policy.builtins import builtin_policies
from pdp.policy.compiled import CompiledPolicy, compile_or_broken, compile_policy
from pdp.policy.loader import load_directory, load_file
from pdp.policy.model import Checkpoint, Policy
from pdp.policy.policyset import PolicySet
from pdp.zones import parse_rfc3339

DEFAULT_BUDGET_S = 1.0  # generous: authoring tools must not deny on a slow CI machine


class NullAudit:
    """Audit sink that drops everything (authoring tools never write the audit trail)."""

    def emit(self, event: dict[str, Any]) -> None:
        pass

    async def log_decision(self, decision: DecisionRecord) -> None:
        pass

    refusing: str | None = None  # it keeps nothing, so it never has to refuse


def load_policies(path: Path) -> list[Policy]:
    """Policies of a directory (``*.test.yaml`` skipped) or of one file; PolicyError."""
    return load_directory(path) if path.is_dir() else load_file(path)


def compile_all(policies: Iterable[Policy], cache: ProgramCache | None = None, *,
                strict: bool = False) -> list[CompiledPolicy]:
    """``strict``: a policy the server would refuse (a compile error, an estimated worst
    case over the server's default cost limit) raises PolicyError naming file:line:column,
    as ``pdp serve`` and PutDraft refuse it; else it is kept as a deny-everything policy."""
    env, cache = pdp_environment(), cache or ProgramCache(1000)
    if strict:
        return [compile_policy(p, env, cache, max_cost=DEFAULT_MAX_COST) for p in policies]
    return [compile_or_broken(p, env, cache) for p in policies]


@dataclass
class Sandbox:
    """An engine on fresh in-memory counters whose clock the caller moves.

    Offline tools decide with exactly the policies they are given: drafts are evaluated
    within the decision (``shadow_inline``), and a tenant with no policy among them is
    denied UNKNOWN_TENANT, as a server does by default (decided by the built-ins alone,
    a request whose tenant is misspelt made every test expecting an allow pass)."""

    policies: PolicySet
    clock: ManualClock = field(default_factory=ManualClock)
    config_cache_size: int = 10_000
    engine: Engine = field(init=False)
    _now: datetime = field(default_factory=lambda: datetime.now(UTC), init=False)

    def __post_init__(self) -> None:
        self.engine = Engine(self.policies, MemoryCounterStore(self.clock), NullAudit(),
                             ConfigCache(self.config_cache_size, 64 << 20),
                             EngineOptions(counter_timeout_s=DEFAULT_BUDGET_S, shadow_inline=True,
                                           # drafts (and their explanations) get the same
                                           # generous budget as live policies here: a
                                           # server's 10 ms shadow slice made results
                                           # depend on how busy the machine was
                                           shadow=ShadowOptions(budget_s=DEFAULT_BUDGET_S),
                                           unknown_tenants="deny", now=lambda: self._now))
        self.set_time(self._now)

    @classmethod
    def of(cls, policies: Iterable[Policy], *, builtins: bool = True,
           config_cache_size: int = 10_000, tenants: Iterable[str] = ()) -> Sandbox:
        """``tenants``: known besides those of ``policies`` (decided by the built-ins)."""
        cache = ProgramCache(1000)
        compiled = compile_all(policies, cache, strict=True)
        b = compile_all(builtin_policies(), cache) if builtins else []
        return cls(PolicySet(compiled, b, known_tenants=frozenset(tenants)),
                   config_cache_size=config_cache_size)

    @property
    def now(self) -> datetime:
        """The time decisions are made at (what ``set_time`` set last)."""
        return self._now

    def set_time(self, now: datetime) -> None:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"{NEEDS_OFFSET}, got {now.isoformat()!r}")  # never taken as UTC
        self._now = now
        self.clock.set(now.timestamp())


# ---------------------------------------------------------------- requests from YAML

CONVERTERS: dict[str, Callable[[Any, Caller], CheckRequest]] = {
    "CheckPush": convert.check_push_request,
    "CheckDevice": convert.check_device_request,
    "CheckRollout": convert.check_rollout_request,
}


class RequestError(ValueError):
    """A request in a test or replay cannot be turned into a CheckRequest."""


def request_from_mapping(data: Mapping[str, Any], base: Path | None = None) -> CheckRequest:
    """The request-file shape (``pdp check``, examples/requests) to an engine request, through
    the same protobuf conversion the server uses. Extra keys for tests: ``caller``
    ({identity, roles}) and ``explain``."""
    data = dict(data)
    caller_raw = data.pop("caller", None) or {}
    if not isinstance(caller_raw, Mapping):
        raise RequestError("caller: expected {identity, roles}")
    caller = Caller(str(caller_raw.get("identity", "pdp-test")),
                    frozenset(caller_raw.get("roles") or ["checker"]))
    try:
        method, msg = request_message(data, base or Path.cwd())
        req: CheckRequest = CONVERTERS[method](msg, caller)
    except OSError as exc:
        raise RequestError(f"config file: {exc}") from None
    except (ValueError, InvalidRequest) as exc:
        raise RequestError(str(exc)) from None
    return req


def request_from_event(event: Mapping[str, Any]) -> CheckRequest:
    """Rebuild the engine request of an audited ``Decision`` event (see decision_event)."""
    raw = event.get("request")
    if not isinstance(raw, Mapping):
        raise RequestError("the event carries no request")
    try:
        checkpoint = Checkpoint(str(event.get("checkpoint", "")).lower())
    except ValueError:
        raise RequestError(f"unknown checkpoint {event.get('checkpoint')!r}") from None
    override = event.get("override")
    return CheckRequest(
        tenant=str(event.get("tenant", "")), checkpoint=checkpoint,
        change=dict(raw.get("change") or {}), agent=_opt_dict(raw.get("agent")),
        device=_opt_dict(raw.get("device")), rollout=_opt_dict(raw.get("rollout")),
        config_yaml=_opt_text(raw.get("config")),
        previous_config_yaml=_opt_text(raw.get("previous_config")),
        metrics=dict(raw.get("metrics") or {}),
        override=Override(str(override.get("actor", "")), str(override.get("justification", "")))
        if isinstance(override, Mapping) else None,
        caller=Caller(str(event.get("caller") or "anonymous"),
                      frozenset({"checker", "admin"}) if isinstance(override, Mapping)
                      and override.get("caller_is_admin") else frozenset({"checker"})),
        request_id=str(event.get("request_id") or ""))


def _opt_dict(v: Any) -> dict[str, Any] | None:
    return dict(v) if isinstance(v, Mapping) else None


def _opt_text(v: Any) -> str | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return v
    return yaml.safe_dump(v, sort_keys=False)  # a masked / structured value: keep its shape


#: The one rule for a time written in a test or on the command line (freeze windows apply
#: the same one, ``Params.timestamp``): it names its offset, or it is refused.
NEEDS_OFFSET = "a timestamp needs a UTC offset, e.g. 2026-06-15T10:00:00Z or +02:00"


def parse_time(value: Any) -> datetime:
    """An RFC 3339 time with a UTC offset (``Z`` or ``±HH:MM``, minutes 00-59), or an aware
    datetime. A time without one (or a bare date) is a ValueError, not silently UTC: the
    same text would mean another instant to a reader in another zone. YAML files read by
    the tools keep times as text (``TextTimesLoader``): YAML's own parser took ``+05:99``
    as +06:39."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):  # a date object: no time of day, no offset
        raise ValueError(f"{NEEDS_OFFSET}, got the date {value.isoformat()!r}")
    else:
        text = str(value).strip()
        try:
            dt = parse_rfc3339(text)
        except ValueError as exc:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}([Tt ][0-9:.]+)?", text):
                raise ValueError(f"{NEEDS_OFFSET}, got {_shown(value)!r}") from None
            raise ValueError(str(exc)) from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{NEEDS_OFFSET}, got {_shown(value)!r}")
    return dt


class TextTimesLoader(yaml.SafeLoader):
    """PyYAML's safe loader without its implicit timestamps: a time stays the text it was
    written as, for ``parse_time`` to read strictly."""


TextTimesLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _shown(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


__all__ = ["CompiledPolicy", "NullAudit", "RequestError", "Sandbox", "TextTimesLoader",
           "compile_all",
           "load_policies", "parse_time", "request_from_event", "request_from_mapping"]
