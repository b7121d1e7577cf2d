"""Policies from YAML: parse, validate, and say exactly where a problem is.

One file may hold several policies (``---``), up to ``MAX_DOCUMENTS`` documents and
``MAX_TOTAL_VALUES`` values in all (``pdp/policy/yamlpos.py``). Errors name the file, line,
column and field path, because the people reading them are editing YAML by hand.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pdp.cel.lexer import RESERVED
from pdp.notify import ChannelConfigError, parse_channels
from pdp.policy.model import (
    CelRule,
    Checkpoint,
    LabelRequirement,
    LabelSelector,
    MatchFilter,
    Policy,
    PolicyError,
    Status,
    four_eyes_problem,
    validate_name,
)
from pdp.policy.params import Params
from pdp.policy.rules import TYPED_KINDS, CounterSpec, parse_typed
from pdp.policy.yamlpos import (
    MAX_DOCUMENTS,
    Located,
    Path_,
    PolicyYAMLLimit,
    format_path,
    load_documents,
)

TOP_KEYS = {"tenant", "name", "description", "checkpoints", "match", "enabled", "status",
            "rule", "version", "author", "approver", "apiVersion", "kind", "notify"}
OPERATORS = {"in", "not_in", "notin", "exists", "does_not_exist", "doesnotexist"}
VARIABLE_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


def load_text(text: str, source: str = "<policy>", *,
              default_status: Status = Status.ACTIVE, max_documents: int = MAX_DOCUMENTS,
              one_policy: bool = False) -> list[Policy]:
    """Parse every policy document in ``text``; raises PolicyError on the first problem.

    At most ``max_documents`` documents (empty ones count); ``one_policy``: a second non-empty
    document is refused where it starts, before it is read (the admin API's texts)."""
    try:
        docs = load_documents(text, max_documents=max_documents, one_policy=one_policy)
    except PolicyYAMLLimit as exc:  # well-formed, but over a limit (a YAML bomb): where
        mark = exc.problem_mark
        problem = f"{exc.label}: {exc.problem}" if exc.label else str(exc.problem)
        raise PolicyError(problem, source=source,
                          field_path=format_path(exc.path),
                          line=mark.line + 1 if mark else 0,
                          column=mark.column + 1 if mark else 0) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"invalid YAML: {problem}", source=source,
                          line=mark.line + 1 if mark else 0,
                          column=mark.column + 1 if mark else 0) from None
    return [parse_document(d, source, default_status=default_status)
            for d in docs if d.value is not None]


def load_file(path: Path, *, default_status: Status = Status.ACTIVE) -> list[Policy]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read: {exc}", source=str(path)) from None
    return load_text(text, str(path), default_status=default_status)


def load_directory(directory: Path) -> list[Policy]:
    """Every ``*.yaml`` / ``*.yml`` below ``directory``, sorted for a stable order."""
    files = sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and
                   p.is_file() and not p.name.endswith((".test.yaml", ".test.yml")))
    policies: list[Policy] = []
    seen: dict[tuple[str, str], str] = {}
    for f in files:
        for p in load_file(f):
            key = (p.tenant, p.name)
            if key in seen:
                raise PolicyError(f"policy {p.name!r} of tenant {p.tenant!r} is already defined"
                                  f" at {seen[key]}", source=p.source, field_path="name")
            seen[key] = p.source
            policies.append(p)
    return policies


def parse_document(doc: Located, source: str, *,
                   default_status: Status = Status.ACTIVE) -> Policy:
    def fail(path: Path_, problem: str) -> PolicyError:
        line, col = doc.where(path)
        return PolicyError(problem, field_path=format_path(path), source=source,
                           line=line, column=col)

    data = doc.value
    if not isinstance(data, Mapping):
        raise fail((), "a policy must be a mapping")
    for key in data:
        if key not in TOP_KEYS:
            raise fail((str(key),), "unknown field")
    top = Params(data, fail)
    tenant = top.string("tenant")
    if (problem := validate_name(tenant)) is not None:
        raise fail(("tenant",), problem)
    name = top.string("name")
    if (problem := validate_name(name)) is not None:
        raise fail(("name",), problem)
    checkpoints = set()
    for i, cp in enumerate(top.strings("checkpoints")):
        try:
            checkpoints.add(Checkpoint(cp.lower()))
        except ValueError:
            raise fail(("checkpoints", i), f"unknown checkpoint {cp!r}; expected one of "
                       + ", ".join(c.value for c in Checkpoint)) from None
    status_raw = top.string("status", default_status.value)
    try:
        status = Status(status_raw.lower())
    except ValueError:
        raise fail(("status",), f"unknown status {status_raw!r}") from None
    rule = _parse_rule(top.mapping("rule"), doc, source)
    try:
        channels = tuple(parse_channels(data.get("notify"), path="notify", tenant=tenant))
    except ChannelConfigError as exc:
        raise fail(("notify",), str(exc)) from None
    top.seen.add("notify")
    author, approver = top.string("author", ""), top.string("approver", "")
    if (problem := four_eyes_problem(author, approver)) is not None:
        raise fail(("approver",), problem)  # seeding would record an approval never given
    spec = {k: v for k, v in data.items() if k not in ("status", "version", "author", "approver")}
    return Policy(
        tenant=tenant, name=name, rule=rule,
        description=top.string("description", ""),
        checkpoints=frozenset(checkpoints),
        match=_parse_match(top.mapping("match")),
        enabled=top.boolean("enabled", True),
        status=status,
        version=top.integer("version", 1, minimum=1),
        author=author,
        approver=approver,
        source=f"{source}:{doc.start_line}",
        notify=channels,
        spec=spec,
    )


def _parse_rule(p: Params, doc: Located | None = None, source: str = "") -> Any:
    kinds = [str(k) for k in p.data]
    if len(kinds) != 1:
        raise p.fail(p.path, "exactly one rule is required: cel or one of "
                     + ", ".join(TYPED_KINDS) + (f"; got {', '.join(kinds)}" if kinds else ""))
    kind = kinds[0]
    if kind == "cel":
        return _parse_cel(p.mapping("cel"), doc, source)
    if kind not in TYPED_KINDS:
        raise p.error(kind, "unknown rule kind; expected cel or one of " + ", ".join(TYPED_KINDS))
    params = p.mapping(kind)
    rule = parse_typed(kind, params)
    if isinstance(rule, CounterSpec) and rule.scope_expression is not None and doc is not None:
        # where the scope expression is, for its compile errors (as _parse_cel's locations)
        loc = doc.location((*params.path, "scope", "expression"), source)
        if loc is not None:
            rule = dataclasses.replace(rule, locations={
                format_path((*params.path, "scope", "expression")): loc})
    return rule


def _parse_cel(c: Params, doc: Located | None, source: str) -> CelRule:
    """``deny`` (+ ``message``) or ``violations``, with optional ``variables``; each
    expression's place in the file is kept for compile errors (see ExprLocation)."""
    for key in ("deny", "message", "violations"):
        if c.data.get(key) is not None and not isinstance(c.data[key], str):
            raise c.error(key, "expected a CEL expression string")
    has_deny, has_violations = "deny" in c.data, "violations" in c.data
    if has_deny == has_violations:
        raise c.fail(c.path, "exactly one of deny (with an optional message) or violations"
                     " (a list of messages) is required")
    if has_violations and "message" in c.data:
        raise c.error("message", "violations are their own messages; message goes with deny")
    deny = c.string("deny") if has_deny else ""
    violations = c.string("violations") if has_violations else None
    message = c.data.get("message")
    c.seen.add("message")
    variables = _parse_variables(c)
    c.reject_unknown()
    locations: dict[str, Any] = {}
    if doc is not None:
        paths: list[tuple[str, ...]] = [("deny",), ("message",), ("violations",)]
        paths += [("variables", name) for name, _ in variables]
        for sub in paths:
            full = (*c.path, *sub)
            raw_path = full if sub[0] != "variables" else _variable_path(doc, c.path, sub[1])
            loc = doc.location(raw_path, source)
            if loc is not None:
                locations[format_path(full)] = loc
    return CelRule(deny=deny, message=message, variables=variables, violations=violations,
                   locations=locations)


def _parse_variables(c: Params) -> tuple[tuple[str, str], ...]:
    """``variables:`` as a mapping ``name: expression`` (in order) or, as Kubernetes writes
    them, a list of ``{name, expression}``."""
    raw = c.data.get("variables")
    c.seen.add("variables")
    if raw is None:
        return ()
    pairs: list[tuple[str, Any, tuple[str | int, ...]]] = []
    if isinstance(raw, Mapping):
        pairs = [(str(k), v, ("variables", str(k))) for k, v in raw.items()]
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or set(item) != {"name", "expression"}:
                raise c.error("variables", f"item {i}: expected {{name, expression}}")
            pairs.append((str(item["name"]), item["expression"], ("variables", i, "expression")))
    else:
        raise c.error("variables", "expected a mapping of name: CEL expression")
    out: list[tuple[str, str]] = []
    for name, expr, path in pairs:
        if not VARIABLE_NAME.match(name) or name in RESERVED:
            raise c.fail((*c.path, *path[:2]), f"variable name {name!r}: expected letters,"
                         " digits and '_', not starting with a digit, not a reserved word")
        if name in dict(out):
            raise c.fail((*c.path, *path[:2]), f"variable {name!r} is defined twice")
        if not isinstance(expr, str) or not expr.strip():
            raise c.fail((*c.path, *path), "expected a CEL expression string")
        out.append((name, expr))
    return tuple(out)


def _variable_path(doc: Located, rule_path: tuple[str | int, ...], name: str
                   ) -> tuple[str | int, ...]:
    """The document path of variable ``name``'s expression (mapping or list form)."""
    raw: Any = doc.value
    for part in (*rule_path, "variables"):
        raw = raw[part]
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            if str(item.get("name")) == name:
                return (*rule_path, "variables", i, "expression")
    return (*rule_path, "variables", name)


def _parse_selector(p: Params) -> LabelSelector:
    labels = p.mapping("match_labels")
    pairs = tuple(sorted((str(k), labels.string(str(k))) for k in labels.data))
    reqs = []
    for r in p.items("match_expressions"):
        op = r.string("operator").lower()
        if op not in OPERATORS:
            raise r.error("operator", "expected In, NotIn, Exists or DoesNotExist")
        op = {"notin": "not_in", "doesnotexist": "does_not_exist"}.get(op, op)
        values = r.strings("values")
        if op in ("in", "not_in") and not values:
            raise r.error("values", f"required for operator {op}")
        reqs.append(LabelRequirement(r.string("key"), op, frozenset(values)))
        r.reject_unknown()
    p.reject_unknown()
    return LabelSelector(pairs, tuple(reqs))


def _parse_match(p: Params) -> MatchFilter:
    m = MatchFilter(
        subjects=frozenset(p.strings("subjects")),
        sources=frozenset(p.strings("sources")),
        types=frozenset(p.strings("types")),
        agent_selector=_parse_selector(p.mapping("agent_selector")),
        device_selector=_parse_selector(p.mapping("device_selector")),
    )
    p.reject_unknown()
    return m
