"""``pdp replay --policy FILE --since 7d``: what would a draft have denied last week?

Reads the ``Decision`` events of the audit history (the active file and its rotated
siblings), rebuilds each recorded request (as audit kept it: masked paths stay masked), and
decides it again with *only* the draft's policies, forced active, on an in-process engine:
fresh in-memory counters on a clock set to each decision's recorded time (so clock rules and
counter windows see the time of the original decision), no audit written, nothing live
touched. Decisions are replayed in file order (= time order). Configs are parsed once per
distinct text (the engine's content-hash cache).

Decision events name their configs by hash (``request.config_sha256`` /
``previous_config_sha256``) and the texts sit in ``Config.Seen`` events (as masked when
written); older events carry the texts inline (``request.config``). Both are read.

Counter rules replay only against the draft's own allows, not against what the live engine
counted then: treat their numbers as an estimate.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from pdp.audit.files import history_files, ledger_of
from pdp.authoring.harness import (
    DEFAULT_BUDGET_S,
    RequestError,
    Sandbox,
    load_policies,
    parse_time,
    request_from_event,
)
from pdp.engine.context import build_context
from pdp.engine.request import InvalidRequest
from pdp.policy.explain import explain_policy
from pdp.policy.model import Policy, PolicyError, Status

EXAMPLES_PER_GROUP = 3
MESSAGES_PER_GROUP = 5
_DECISION_MARK = b'"type":"Decision"'
_CONFIG_MARK = b'"type":"Config.Seen"'
_CONFIG_FIELDS = ("config", "previous_config")
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def audit_files(paths: Sequence[str | Path]) -> list[Path]:
    """The audit history to replay: a directory means every ledger in it."""
    return history_files(paths, every_ledger=True)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w``, ``90s`` (before now) or an ISO-8601 time."""
    now = now or datetime.now(UTC)
    m = _SINCE.match(text)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        return parse_time(text)
    except ValueError as exc:
        raise ValueError(f"--since: expected e.g. 7d, 12h, 30m or an ISO time with its UTC"
                         f" offset, got {text!r} ({exc})") from None


@dataclass
class Example:
    decision_id: str
    time: str
    subject: str
    message: str
    was_allowed: bool
    values: dict[str, str] = field(default_factory=dict)


@dataclass
class Group:
    policy: str
    code: str
    count: int = 0
    newly_denied: int = 0  # allowed at the time, denied by the draft
    messages: Counter[str] = field(default_factory=Counter)
    examples: list[Example] = field(default_factory=list)


@dataclass
class ReplayReport:
    policies: list[str]
    since: datetime
    files: list[str]
    records: int = 0        # Decision events read (all tenants, all times)
    considered: int = 0     # of the draft's tenant(s), in the window
    replayed: int = 0
    would_deny: int = 0
    newly_denied: int = 0
    skipped: int = 0        # unreadable lines or requests that could not be rebuilt
    skip_reasons: Counter[str] = field(default_factory=Counter)
    groups: dict[tuple[str, str], Group] = field(default_factory=dict)
    first: str = ""
    last: str = ""
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "policies": self.policies, "since": self.since.isoformat(), "files": self.files,
            "records": self.records, "considered": self.considered, "replayed": self.replayed,
            "would_deny": self.would_deny, "newly_denied": self.newly_denied,
            "skipped": self.skipped, "skip_reasons": dict(self.skip_reasons),
            "first": self.first, "last": self.last, "elapsed_s": round(self.elapsed_s, 3),
            "groups": [{
                "policy": g.policy, "code": g.code, "count": g.count,
                "newly_denied": g.newly_denied,
                "messages": [{"message": m, "count": c}
                             for m, c in g.messages.most_common(MESSAGES_PER_GROUP)],
                "examples": [e.__dict__ for e in g.examples],
            } for g in self.sorted_groups()],
        }

    def sorted_groups(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-g.count, g.policy, g.code))


def _events(files: Iterable[Path], marks: tuple[bytes, ...], type_: str,
            report: ReplayReport | None) -> Iterator[dict[str, Any]]:
    for path in files:
        with open(path, "rb") as f:
            for line in f:
                if not any(m in line for m in marks):
                    continue
                try:
                    rec = json.loads(line)
                    event = rec["event"]
                except (ValueError, KeyError, TypeError):
                    if report is not None:
                        report.skipped += 1
                        report.skip_reasons["unreadable audit line"] += 1
                    continue
                if isinstance(event, dict) and event.get("type") == type_:
                    yield event


class ConfigTexts:
    """The config texts of the ``Config.Seen`` events, by (tenant, field, sha256)."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str, str], Any] = {}
        self.by_hash: dict[str, Any] = {}

    @classmethod
    def read(cls, files: Iterable[Path]) -> ConfigTexts:
        out = cls()
        for ev in _events(files, (_CONFIG_MARK, b'"type": "Config.Seen"'), "Config.Seen", None):
            out.add(ev)
        return out

    def add(self, ev: dict[str, Any]) -> None:
        sha, field_ = ev.get("config_sha256"), ev.get("field")
        req = ev.get("request")
        if not isinstance(sha, str) or field_ not in _CONFIG_FIELDS or not isinstance(req,
                                                                                     dict):
            return
        text = req.get(field_)  # masked: a (re-dumped) text, a digest, or gone (None)
        self.by_key[(str(ev.get("tenant", "")), field_, sha)] = text
        self.by_hash.setdefault(sha, text)

    def resolve(self, event: dict[str, Any]) -> str | None:
        """Put the texts a hash-form Decision names back inline (``request.config``...);
        returns what is missing, or None."""
        req = event.get("request")
        if not isinstance(req, dict):
            return None
        tenant = str(event.get("tenant", ""))
        for field_ in _CONFIG_FIELDS:
            sha = req.get(f"{field_}_sha256")
            if not sha or req.get(field_) is not None:
                continue
            key = (tenant, field_, sha)
            if key in self.by_key:
                text = self.by_key[key]
            elif sha in self.by_hash:
                text = self.by_hash[sha]
            else:
                return f"{field_} not in the audit history (no Config.Seen event for its hash)"
            event["request"] = req = {**req, field_: text}
        return None


def iter_decisions(files: Iterable[Path], report: ReplayReport) -> Iterator[dict[str, Any]]:
    """Decision events, in file order; unreadable lines are counted as skipped."""
    for event in _events(files, (_DECISION_MARK, b'"type": "Decision"'), "Decision", report):
        report.records += 1
        yield event


_NO_TIME = datetime.min.replace(tzinfo=UTC)


def _time_key(event: dict[str, Any]) -> datetime:
    try:
        return parse_time(event.get("time", ""))
    except ValueError:
        return _NO_TIME  # skipped as "bad time" by the caller; first, so it is not held back


def merged_decisions(files: Sequence[Path], report: ReplayReport) -> Iterator[dict[str, Any]]:
    """Decision events in time order across ledgers (``--workers N`` writes one per worker;
    each is in time order already, so they are merged, not sorted in memory)."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(str(ledger_of(f)), []).append(f)
    if len(groups) == 1:
        yield from iter_decisions(files, report)
        return
    yield from heapq.merge(*(iter_decisions(g, report) for g in groups.values()),
                           key=_time_key)


def as_drafts_activated(policies: Iterable[Policy]) -> list[Policy]:
    """The draft(s) as if active: replay asks what they *would* deny, not what they'd shadow."""
    return [replace(p, status=Status.ACTIVE, enabled=True) for p in policies]


async def replay(policies: Sequence[Policy], files: Sequence[Path], since: datetime, *,
                 examples: int = EXAMPLES_PER_GROUP) -> ReplayReport:
    import time as _time

    started = _time.perf_counter()
    drafts = as_drafts_activated(policies)
    report = ReplayReport([f"{p.tenant}/{p.name}" for p in drafts], since,
                          [str(f) for f in files])
    sandbox = Sandbox.of(drafts, builtins=False, config_cache_size=100_000)
    by_name = {p.name: p for p in sandbox.policies.policies}
    tenants = {p.tenant for p in drafts}
    since_utc = since.astimezone(UTC)
    configs = ConfigTexts.read(files)  # a first pass: they may follow a decision (sync mode)
    for event in merged_decisions(files, report):
        if event.get("tenant") not in tenants:
            continue
        try:
            when = parse_time(event.get("time", ""))
        except ValueError:
            report.skipped += 1
            report.skip_reasons["bad time"] += 1
            continue
        if when < since_utc:
            continue
        report.considered += 1
        missing = configs.resolve(event)
        if missing is not None:
            report.skipped += 1
            report.skip_reasons[missing] += 1
            continue
        try:
            req = request_from_event(event)
        except RequestError as exc:
            report.skipped += 1
            report.skip_reasons[str(exc)] += 1
            continue
        sandbox.set_time(when)
        try:
            decision = await sandbox.engine.check(req, DEFAULT_BUDGET_S)
        except InvalidRequest as exc:
            report.skipped += 1
            report.skip_reasons[f"invalid request: {exc.field}"] += 1
            continue
        report.replayed += 1
        stamp = str(event.get("time", ""))
        report.first = report.first or stamp
        report.last = stamp
        if decision.allowed or not decision.reasons:
            continue
        was_allowed = bool(event.get("allowed"))
        report.would_deny += 1
        report.newly_denied += was_allowed
        for r in decision.reasons:
            key = (r.policy or "system", r.code)
            g = report.groups.get(key)
            if g is None:
                g = report.groups[key] = Group(*key)
            g.count += 1
            g.newly_denied += was_allowed
            g.messages[r.message] += 1
            if len(g.examples) < examples:
                values: dict[str, str] = {}
                p = by_name.get(r.policy)
                if p is not None:  # explain only the few examples shown
                    ctx = await build_context(req, sandbox.engine.configs, when)
                    values = explain_policy(p, ctx, r.code)
                subject = (req.agent or {}).get("id") or (req.device or {}).get("id") or \
                    (req.rollout or {}).get("id") or ""
                g.examples.append(Example(str(event.get("decision_id", "")), stamp,
                                          str(subject), r.message, was_allowed, values))
    report.elapsed_s = _time.perf_counter() - started
    return report


def format_report(report: ReplayReport) -> str:
    lines = [f"replayed {', '.join(report.policies)} since {report.since.isoformat()}",
             f"  audit files: {len(report.files)}; Decision records read: {report.records};"
             f" of the policy's tenant in the window: {report.considered}"]
    if report.first:
        lines.append(f"  window replayed: {report.first} .. {report.last}")
    lines.append(f"  replayed {report.replayed}, would deny {report.would_deny}"
                 f" ({report.newly_denied} of them were allowed at the time),"
                 f" skipped {report.skipped} in {report.elapsed_s:.2f}s")
    for reason, n in report.skip_reasons.most_common(5):
        lines.append(f"    skipped {n}: {reason}")
    for g in report.sorted_groups():
        lines.append(f"\n  {g.count:>7}  {g.policy}  {g.code}"
                     f"  ({g.newly_denied} newly denied)")
        for msg, n in g.messages.most_common(MESSAGES_PER_GROUP):
            lines.append(f"           {n:>6} x {msg}")
        for e in g.examples:
            lines.append(f"           e.g. {e.time} decision {e.decision_id} {e.subject}"
                         f" (was {'allowed' if e.was_allowed else 'denied'})")
            for k, v in e.values.items():
                lines.append(f"                {k} = {v}")
    if not report.groups:
        lines.append("\n  the draft would have denied nothing")
    return "\n".join(lines)


def main(policy: str, since: str, audit: Sequence[str], *, as_json: bool = False,
         out: TextIO | None = None) -> int:
    """0: report printed (whatever it says); 2: the policy, window or audit files are bad."""
    # errors (exit 2) to stderr, as pdp check and eval do; a caller's ``out`` gets all
    err = out or sys.stderr
    out = out or sys.stdout
    try:
        start = parse_since(since)
        policies = load_policies(Path(policy))
    except (ValueError, PolicyError) as exc:  # PolicyError is a ValueError
        print(f"pdp replay: {exc}", file=err)
        return 2
    if not policies:
        print(f"pdp replay: no policy in {policy}", file=err)
        return 2
    files = audit_files(audit)
    if not files:
        print(f"pdp replay: no audit files at {', '.join(map(str, audit))}", file=err)
        return 2
    try:
        report = asyncio.run(replay(policies, files, start))
    except PolicyError as exc:  # a draft the server would refuse: nothing to replay
        print(f"pdp replay: {exc}", file=err)
        return 2
    if as_json:
        print(json.dumps(report.to_json(), indent=2), file=out)
    else:
        print(format_report(report), file=out)
    return 0
