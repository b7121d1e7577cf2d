"""``pdp policy lint DIR|FILE``: problems a policy author can fix before admission.

* errors: YAML / schema problems and CEL compile errors (``file:line:column`` inside the
  expression, as ``pdp serve`` reports them), duplicate names, a cost estimate above the
  server's limit (the server would keep such a policy as broken: it denies everything).
* warnings: a cost estimate above the warning threshold; match filters that can never match
  at the policy's checkpoints (an agent selector on a device-only policy, a device selector
  without the device checkpoint, contradictory label requirements); typed rules whose input
  the policy's checkpoints never carry (empty intersection), or only some of them carry
  (device rules, quality gates: they do not apply at the others); CEL reading a variable
  that requests at the policy's checkpoints do not carry.

Exit code: 0 clean (warnings allowed unless ``--strict``), 1 problems, 2 nothing to lint.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pdp.cel import (
    CelCompileError,
    Environment,
    Program,
    ProgramCache,
    pdp_environment,
    read_roots,
)
from pdp.cel import ast as A
from pdp.policy.compiled import compile_policy
from pdp.policy.loader import parse_document
from pdp.policy.model import CelRule, Checkpoint, LabelSelector, Policy, PolicyError
from pdp.policy.rules import CounterSpec, StatelessRule
from pdp.policy.yamlpos import Located, load_documents

DEFAULT_MAX_COST = 100_000_000   # settings.cel_max_cost_estimate
DEFAULT_WARN_COST = 1_000_000    # the engine's default per-decision cost budget

ALL = frozenset(Checkpoint)
# What each checkpoint's request carries (see pdp.api.convert).
CARRIES: dict[Checkpoint, frozenset[str]] = {
    Checkpoint.PUSH: frozenset({"agent", "rollout", "config", "previous_config", "change"}),
    Checkpoint.AUTO_APPLY: frozenset({"agent", "rollout", "config", "previous_config",
                                      "change"}),
    Checkpoint.DEVICE: frozenset({"device", "rollout", "config", "change"}),
    Checkpoint.ROLLOUT_PRECONDITION: frozenset({"rollout", "config", "previous_config",
                                                "metrics", "change"}),
}
REQUEST_VARS = ("agent", "device", "rollout", "config", "previous_config", "metrics")


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning
    file: str
    line: int
    column: int
    policy: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        who = f"policy {self.policy}: " if self.policy else ""
        return f"{where}: {self.severity}: {who}{self.message}"


def policy_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                  and not p.name.endswith((".test.yaml", ".test.yml")))


def lint_paths(paths: Iterable[Path], *, max_cost: int = DEFAULT_MAX_COST,
               warn_cost: int = DEFAULT_WARN_COST,
               env: Environment | None = None) -> list[Finding]:
    env = env or pdp_environment()
    findings: list[Finding] = []
    seen: dict[tuple[str, str], str] = {}
    done: set[Path] = set()
    for path in paths:
        for f in policy_files(path):
            if f.resolve() in done:  # one file named twice (a dir and a file in it) is one
                continue
            done.add(f.resolve())
            findings.extend(lint_file(f, env, seen, max_cost=max_cost, warn_cost=warn_cost))
    return findings


def lint_file(path: Path, env: Environment, seen: dict[tuple[str, str], str] | None = None,
              *, max_cost: int = DEFAULT_MAX_COST,
              warn_cost: int = DEFAULT_WARN_COST) -> list[Finding]:
    seen = {} if seen is None else seen
    src = str(path)
    try:
        docs = load_documents(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return [Finding("error", src, 0, 0, "", f"cannot read: {exc}")]
    except Exception as exc:  # yaml.YAMLError
        mark = getattr(exc, "problem_mark", None)
        return [Finding("error", src, mark.line + 1 if mark else 0,
                        mark.column + 1 if mark else 0, "",
                        f"invalid YAML: {getattr(exc, 'problem', None) or exc}")]
    out: list[Finding] = []
    for doc in docs:
        if doc.value is None:
            continue
        try:
            policy = parse_document(doc, src)
        except PolicyError as exc:
            out.append(Finding("error", src, exc.line, exc.column, _name_of(doc),
                               f"{exc.field_path + ': ' if exc.field_path else ''}{exc.problem}"))
            continue
        key = (policy.tenant, policy.name)
        if key in seen:
            line, col = doc.where(("name",))
            out.append(Finding("error", src, line, col, policy.name,
                               f"already defined at {seen[key]}"))
        seen[key] = policy.source
        out.extend(lint_policy(policy, doc, src, env, max_cost=max_cost, warn_cost=warn_cost))
    return out


def _name_of(doc: Located) -> str:
    v = doc.value
    return str(v.get("name", "")) if isinstance(v, dict) else ""


def lint_policy(policy: Policy, doc: Located, src: str, env: Environment, *,
                max_cost: int = DEFAULT_MAX_COST,
                warn_cost: int = DEFAULT_WARN_COST) -> list[Finding]:
    out: list[Finding] = []

    def add(severity: str, path: tuple[Any, ...], message: str) -> None:
        line, col = doc.where(path)
        out.append(Finding(severity, src, line, col, policy.name, message))

    checkpoints = policy.checkpoints or ALL
    carried = frozenset().union(*(CARRIES[c] for c in checkpoints))
    rule: Any = policy.rule
    # -- CEL: compile errors, cost ---------------------------------------------------------
    expressions: list[tuple[tuple[Any, ...], str, Program | None]] = []
    if isinstance(rule, CelRule | CounterSpec):
        # compiled as the server compiles it (variables first, typed; its cost limit), so
        # errors and their file line and column inside the expression are the server's
        try:
            compiled = compile_policy(policy, env, ProgramCache(64), max_cost=max_cost)
        except PolicyError as exc:
            out.append(Finding("error", src, exc.line, exc.column, policy.name,
                               f"{exc.field_path}: {exc.problem}" if exc.field_path
                               else exc.problem))
            return out
    if isinstance(rule, CelRule):
        programs: dict[str, Program | None] = {
            f"rule.cel.variables.{n}": p for n, p in compiled.variables}
        programs.update({"rule.cel.deny": compiled.deny, "rule.cel.message": compiled.message,
                         "rule.cel.violations": compiled.violations})
        for field_path, source in rule.expressions():
            parts = field_path.split(".", 3)
            path = tuple(parts[:3]) + (tuple(parts[3:]) if len(parts) > 3 else ())
            expressions.append((path, source, programs.get(field_path)))
    elif isinstance(rule, CounterSpec) and rule.scope_expression is not None:
        expressions.append((("rule", rule.kind, "scope", "expression"), rule.scope_expression,
                            compiled.scope_program))
    for path, source, compiled_program in expressions:
        field = ".".join(map(str, path))
        if compiled_program is not None:
            program: Program = compiled_program
        else:
            try:
                program = env.compile(source)
            except CelCompileError as exc:
                where = f" (expression {exc.line}:{exc.column})" if exc.offset >= 0 else ""
                add("error", path, f"{field}{where}: {exc.message}")
                continue
        if program.cost_estimate > max_cost:
            add("error", path, f"{field}: estimated worst-case cost {program.cost_estimate}"
                               f" exceeds the server limit {max_cost}; the server refuses"
                               " the policy (at start-up and PutDraft)")
        elif program.cost_estimate > warn_cost:
            add("warning", path, f"{field}: estimated worst-case cost {program.cost_estimate}"
                                 f" is above {warn_cost} (the per-decision cost budget); nested"
                                 " comprehensions over large maps may run out of budget and deny")
        used = _variables(env.parse(source)) & set(REQUEST_VARS)
        for var in sorted(used - carried):
            add("warning", path, f"{field} reads `{var}`, which requests at checkpoints "
                                 f"{_cps(checkpoints)} do not carry (it is always empty there)")
    # -- match filters ---------------------------------------------------------------------
    m = policy.match
    if not m.agent_selector.empty and "agent" not in carried:
        add("warning", ("match", "agent_selector"),
            f"agent_selector never matches: requests at {_cps(checkpoints)} carry no agent, so"
            " the policy never applies")
    elif not m.agent_selector.empty and not checkpoints <= {Checkpoint.PUSH,
                                                            Checkpoint.AUTO_APPLY}:
        missing = sorted(c.value for c in checkpoints if "agent" not in CARRIES[c])
        add("warning", ("match", "agent_selector"),
            f"agent_selector excludes every request at {', '.join(missing)} (no agent there)")
    if not m.device_selector.empty and "device" not in carried:
        add("warning", ("match", "device_selector"),
            f"device_selector never matches: requests at {_cps(checkpoints)} carry no device,"
            " so the policy never applies")
    for label, sel in (("agent_selector", m.agent_selector),
                       ("device_selector", m.device_selector)):
        problem = _contradiction(sel)
        if problem:
            add("warning", ("match", label), f"{label} can never match: {problem}")
    # -- typed rules: input the checkpoints carry ------------------------------------------
    # What each typed rule reads and needs comes from its own declaration (reads,
    # needs_facts): a new rule type is linted without an entry here.
    inputs = (sorted(read_roots(type(rule).reads) & set(REQUEST_VARS))
              if isinstance(rule, StatelessRule) else [])
    missing = [v for v in inputs if v not in carried]
    facts = getattr(rule, "needs_facts", None)
    if missing:
        add("warning", ("rule",),
            f"rule {rule.kind} reads `{missing[0]}`, which requests at {_cps(checkpoints)} do"
            " not carry: the checkpoints and the rule have an empty intersection")
    elif facts is not None:
        carried_at = frozenset(cp for cp, vs in CARRIES.items() if facts in vs)
        without = checkpoints - carried_at
        if without:
            listed = "" if policy.checkpoints else " (no checkpoints listed means all)"
            add("warning", ("checkpoints",) if policy.checkpoints else ("rule",),
                f"rule {rule.kind} reads `{facts}` facts, which requests at {_cps(without)}"
                f" do not carry{listed}: it does not apply there, only at"
                f" {_cps(carried_at)}; list `checkpoints: [{_cps(carried_at & checkpoints)}]`"
                " to say so")
    if isinstance(rule, CounterSpec) and rule.scope in ("agent", "device", "group"):
        src_var = "agent" if rule.scope == "group" else rule.scope
        if src_var not in carried and not (rule.scope == "group" and "device" in carried):
            add("warning", ("rule",),
                f"counter scope {rule.scope} needs `{src_var}`, which requests at"
                f" {_cps(checkpoints)} do not carry (every request would be denied"
                " INVALID_INPUT)")
    if not policy.enabled:
        add("warning", ("enabled",), "the policy is disabled: it is never evaluated")
    return out


def _cps(checkpoints: Iterable[Checkpoint]) -> str:
    return ", ".join(sorted(c.value for c in checkpoints))


def _variables(e: A.Expr, bound: frozenset[str] = frozenset()) -> set[str]:
    """Free variables of ``e`` (comprehension variables excluded)."""
    if isinstance(e, A.Ident):
        return set() if e.name in bound else {e.name}
    if isinstance(e, A.Comprehension):
        inner = bound | {e.var} | ({e.var2} if e.var2 else set())
        out = _variables(e.range, bound)
        for a in e.args:
            out |= _variables(a, inner)
        return out
    found: set[str] = set()
    for c in A.children(e):
        found |= _variables(c, bound)
    return found


def _contradiction(sel: LabelSelector) -> str | None:
    fixed = dict(sel.match_labels)
    for r in sel.match_expressions:
        if r.key in fixed:
            v = fixed[r.key]
            if r.operator == "does_not_exist":
                return f"match_labels sets {r.key}={v} but an expression requires {r.key}" \
                       " not to exist"
            if r.operator == "in" and v not in r.values:
                return f"match_labels sets {r.key}={v}, not in {sorted(r.values)}"
            if r.operator == "not_in" and v in r.values:
                return f"match_labels sets {r.key}={v}, which an expression excludes"
    keys_exist = {r.key for r in sel.match_expressions if r.operator in ("exists", "in")}
    for r in sel.match_expressions:
        if r.operator == "does_not_exist" and r.key in keys_exist:
            return f"{r.key} must both exist and not exist"
    return None


def main(paths: Iterable[str], *, strict: bool = False, max_cost: int = DEFAULT_MAX_COST,
         warn_cost: int = DEFAULT_WARN_COST, out: TextIO | None = None) -> int:
    # errors (exit 2) to stderr, as pdp check and eval do; a caller's ``out`` gets all
    err = out or sys.stderr
    out = out or sys.stdout
    targets = [Path(p) for p in paths]
    missing = [str(p) for p in targets if not p.exists()]
    if missing:
        print(f"pdp policy lint: no such file or directory: {', '.join(missing)}", file=err)
        return 2
    if not any(policy_files(p) for p in targets):
        print("pdp policy lint: no policy files found", file=err)
        return 2
    findings = lint_paths(targets, max_cost=max_cost, warn_cost=warn_cost)
    for f in findings:
        print(f, file=out)
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    print(f"{errors} error(s), {warnings} warning(s)", file=out)
    return 1 if errors or (strict and warnings) else 0
