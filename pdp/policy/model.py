"""The one validated policy model between YAML (humans) and protobuf (the wire).

A policy is tenant-scoped, applies to some checkpoints, matches requests by filters, and holds
exactly one rule: a CEL deny expression or one typed rule (see ``pdp.policy.rules``).
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NAME_RE = re.compile(r"\A[a-zA-Z0-9_-]+\Z")  # \Z: "$" would let a final "\n" in
NAME_MAX = 250


class Checkpoint(enum.StrEnum):
    ROLLOUT_PRECONDITION = "rollout_precondition"
    PUSH = "push"
    AUTO_APPLY = "auto_apply"
    DEVICE = "device"


class Status(enum.StrEnum):
    DRAFT = "draft"
    APPROVED = "approved"
    ACTIVE = "active"
    RETIRED = "retired"


class PolicyError(ValueError):
    """A policy is invalid. ``str()`` reads ``file:line:column: field.path: problem``."""

    def __init__(self, problem: str, *, field_path: str = "", source: str = "",
                 line: int = 0, column: int = 0) -> None:
        self.problem = problem
        self.field_path = field_path
        self.source = source
        self.line = line
        self.column = column
        where = source
        if line:
            where += f":{line}:{column}" if column else f":{line}"
        parts = [p for p in (where, field_path) if p]
        super().__init__(": ".join([*parts, problem]))


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: str  # in | not_in | exists | does_not_exist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "does_not_exist":
            return self.key not in labels
        if self.operator == "in":
            return labels.get(self.key) in self.values
        # not_in: absent keys match, as in Kubernetes
        return labels.get(self.key) not in self.values


@dataclass(frozen=True)
class LabelSelector:
    """Kubernetes-style selector; empty selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions)


@dataclass(frozen=True)
class MatchFilter:
    """Which requests a policy applies to; every empty field matches all values."""

    subjects: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    agent_selector: LabelSelector = field(default_factory=LabelSelector)
    device_selector: LabelSelector = field(default_factory=LabelSelector)

    def matches(self, change: Mapping[str, str], agent_labels: Mapping[str, str] | None,
                device_labels: Mapping[str, str] | None) -> bool:
        if self.subjects and change.get("subject", "") not in self.subjects:
            return False
        if self.sources and change.get("source", "") not in self.sources:
            return False
        if self.types and change.get("type", "") not in self.types:
            return False
        if not self.agent_selector.empty and (
            agent_labels is None or not self.agent_selector.matches(agent_labels)
        ):
            return False
        return self.device_selector.empty or (
            device_labels is not None and self.device_selector.matches(device_labels))


@dataclass(frozen=True)
class CelRule:
    """Deny when ``deny`` evaluates to true; ``message`` (CEL, optional) explains why. Or
    ``violations`` instead of both: a list of strings, one reason each (empty: allow), so a
    policy names every offending element without repeating its condition in a message.

    ``variables`` are named expressions, evaluated once per decision in order and read as
    ``variables.NAME`` by the later ones, ``deny``, ``message`` and ``violations``.
    ``locations``: where each expression is in its YAML file (by field path, e.g.
    ``rule.cel.deny``), so a compile error names the file line and column in it."""

    deny: str
    message: str | None = None
    kind: str = "cel"
    variables: tuple[tuple[str, str], ...] = ()
    violations: str | None = None
    locations: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def expressions(self) -> list[tuple[str, str]]:
        """(field path, source) of every expression, in evaluation order."""
        out = [(f"rule.cel.variables.{n}", src) for n, src in self.variables]
        if self.violations is not None:
            out.append(("rule.cel.violations", self.violations))
        else:
            out.append(("rule.cel.deny", self.deny))
        if self.message:
            out.append(("rule.cel.message", self.message))
        return out


@dataclass(frozen=True)
class Policy:
    tenant: str
    name: str
    rule: Any  # CelRule or a typed rule from pdp.policy.rules
    description: str = ""
    checkpoints: frozenset[Checkpoint] = frozenset()  # empty = all
    match: MatchFilter = field(default_factory=MatchFilter)
    enabled: bool = True
    status: Status = Status.ACTIVE
    version: int = 1
    builtin: bool = False
    author: str = ""
    approver: str = ""
    source: str = ""  # file:line it was loaded from, for messages
    notify: tuple[Any, ...] = ()  # pdp.notify channels told when this policy denies
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical policy content (what activation records)."""
        return content_hash(self.spec)

    def applies_to(self, checkpoint: Checkpoint) -> bool:
        return not self.checkpoints or checkpoint in self.checkpoints


@dataclass(frozen=True)
class PolicyRef:
    """A policy version that took part in a decision (as audited and answered)."""

    name: str
    version: int
    content_hash: str
    status: str
    builtin: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version,
                "content_hash": self.content_hash, "status": self.status,
                "builtin": self.builtin}


def content_hash(spec: Mapping[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def same_person(a: str, b: str) -> bool:
    """Whether two actor names are one person for four eyes: case, blanks, compatibility
    forms (full-width letters) and invisible characters (a zero-width space) do not
    make another person; they look the same in every list an approver is checked in."""
    return person_key(a) == person_key(b)


def person_key(name: str) -> str:
    """``name`` as four eyes compares it (see same_person)."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(c for c in folded if not c.isspace()
                   and unicodedata.category(c) not in ("Cf", "Cc", "Mn", "Me"))


def four_eyes_problem(author: str, approver: str) -> str | None:
    """The problem with a version claimed approved by ``approver`` and written by
    ``author`` (both as given; empty = not given), or None."""
    if author and approver and same_person(author, approver):
        return f"must differ from author {author!r} (four-eyes)"
    return None


def validate_name(name: Any) -> str | None:
    """The problem with a policy name, or None if it is fine."""
    if not isinstance(name, str) or not name:
        return "required: a non-empty string"
    if len(name) > NAME_MAX:
        return f"at most {NAME_MAX} characters, got {len(name)}"
    if not NAME_RE.match(name):
        return "may contain only letters, digits, '_' and '-'"
    return None
