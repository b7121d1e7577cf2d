"""``pdp test DIR``: policy unit tests, in YAML beside the policies (``*.test.yaml``).

A test file holds a list of cases (or ``{tests: [...]}``)::

    - name: debug exporter is denied on production agents
      request:                      # the request-file shape of examples/requests
        kind: push                  # push | auto_apply | device | rollout
        tenant: acme
        agent: {id: a1, labels: {env: prod}}
        change: {subject: otel-collector}
        config: |                   # or config_file: relative to the test file
          exporters: {debug: {}}
      # request_file: ../requests/push-allow.yaml   (instead of request)
      now: 2025-01-06T10:00:00Z     # optional decision time (clock rules, counters)
      repeat: 1                     # optional: decide the request N times (counter rules);
                                    # the expectation is checked on the last decision
      expect:
        allowed: false
        reasons:                    # exactly these denies, in any order
          - {policy: no-debug-exporter-in-prod, code: POLICY_DENIED,
             message_contains: debug exporter}
        # reasons_include: [...]    # at least these
        # shadow_denies: [...]      # exactly these would-denies of drafts
        explanations:               # asks for explanations; each listed value must
          no-debug-exporter-in-prod:  # contain the given text
            'config.exporters["debug"]': verbosity

A case with ``steps`` decides several times on one engine state, moving the clock between
decisions (cooldowns, velocity windows, daily caps at midnight)::

    - name: a second push within the hour waits
      request: {kind: push, tenant: acme, agent: {id: a1}, config: {}}
      now: 2025-01-06T10:00:00Z     # where the clock starts (optional)
      steps:
        - expect: {allowed: true}
        - advance: 30m              # move the clock forward (CEL duration syntax), or
          expect: {allowed: false}  # now: <RFC 3339 time> to set it
        - advance: 31m
          request: {agent: {id: a2}}  # top-level keys replace the case's request's
          repeat: 2                 # as for a case
          expect: {allowed: true}

A step's ``expect`` is optional (a step without one only decides); a case with steps has no
``expect`` or ``repeat`` of its own, and at least one step expects something.

Every case runs on a fresh in-process engine state (in-memory counters, no server, no
audit) holding the directory's policies and the built-ins. Exit code: 0 all passed, 1 a case
failed, 2 the policies or a test file could not be read.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import yaml

from pdp.authoring.harness import (
    DEFAULT_BUDGET_S,
    RequestError,
    Sandbox,
    TextTimesLoader,
    load_policies,
    parse_time,
    request_from_mapping,
)
from pdp.cel.errors import CelError
from pdp.cel.stdlib import parse_duration
from pdp.engine.decision import Decision, Reason
from pdp.policy.model import Policy, PolicyError

REASON_KEYS = {"policy", "code", "message", "message_contains", "rule", "builtin", "version"}
CASE_KEYS = {"name", "request", "request_file", "now", "repeat", "expect", "description",
             "steps"}
STEP_KEYS = {"name", "now", "advance", "request", "repeat", "expect"}
EXPECT_KEYS = {"allowed", "reasons", "reasons_include", "shadow_denies", "explanations"}


class TestFileError(ValueError):
    """A test file is malformed (exit 2, not a failing case)."""


@dataclass
class Step:
    """One decision (``repeat`` times) of a case: the clock set or moved first, the case's
    request with ``request``'s top-level keys replaced, then ``expect`` (if any) checked."""
    name: str
    expect: dict[str, Any] | None = None
    now: Any = None
    advance: timedelta | None = None
    request: dict[str, Any] = field(default_factory=dict)
    repeat: int = 1


@dataclass
class Case:
    name: str
    source: str  # file:index
    request: dict[str, Any]
    base: Path
    expect: dict[str, Any]
    now: Any = None
    repeat: int = 1
    steps: list[Step] = field(default_factory=list)


@dataclass
class Outcome:
    case: Case
    failures: list[str] = field(default_factory=list)
    decision: Decision | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


# ---------------------------------------------------------------- reading test files


def find_test_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file()
                  and p.name.endswith((".test.yaml", ".test.yml")))


def read_cases(path: Path) -> list[Case]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=TextTimesLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise TestFileError(f"{path}: cannot read: {exc}") from None
    if isinstance(data, Mapping):
        data = data.get("tests")
    if not isinstance(data, list):
        raise TestFileError(f"{path}: expected a list of test cases (or tests: [...])")
    cases = []
    for i, raw in enumerate(data):
        where = f"{path}#{i + 1}"
        if not isinstance(raw, Mapping):
            raise TestFileError(f"{where}: a test case must be a mapping")
        unknown = set(raw) - CASE_KEYS
        if unknown:
            raise TestFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        base = path.parent
        if "request_file" in raw:
            rpath = base / str(raw["request_file"])
            try:
                request = yaml.safe_load(rpath.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                raise TestFileError(f"{where}: request_file: {exc}") from None
            base = rpath.parent
        else:
            request = raw.get("request")
        if not isinstance(request, Mapping):
            raise TestFileError(f"{where}: request (a mapping) or request_file is required")
        steps = _read_steps(raw, where)
        if steps:
            expect: Mapping[str, Any] = {}
        else:
            expect = _read_expect(raw.get("expect"), where)
        cases.append(Case(str(raw.get("name") or f"case {i + 1}"), where, dict(request), base,
                          dict(expect), raw.get("now"), _read_repeat(raw, where), steps))
    return cases


def _read_repeat(raw: Mapping[str, Any], where: str) -> int:
    repeat = raw.get("repeat", 1)
    if type(repeat) is not int or repeat < 1:  # (a bool is an int to Python)
        raise TestFileError(f"{where}: repeat must be a positive integer")
    return repeat


def _read_expect(expect: Any, where: str) -> dict[str, Any]:
    if not isinstance(expect, Mapping) or "allowed" not in expect:
        raise TestFileError(f"{where}: expect with at least `allowed` is required")
    unknown = set(expect) - EXPECT_KEYS
    if unknown:
        raise TestFileError(f"{where}: expect: unknown field(s) {', '.join(sorted(unknown))}")
    if type(expect["allowed"]) is not bool:  # "false" (a string) would read as true
        raise TestFileError(f"{where}: expect.allowed must be true or false, got"
                            f" {expect['allowed']!r}")
    explanations = expect.get("explanations")
    if explanations is not None and not (
            isinstance(explanations, Mapping)
            and all(isinstance(v, Mapping) for v in explanations.values())):
        raise TestFileError(f"{where}: expect.explanations must map each policy name to"
                            " a mapping of expected values, e.g. {no-debug: {n: debug}}")
    for key in ("reasons", "reasons_include", "shadow_denies"):
        for r in expect.get(key) or []:
            if not isinstance(r, Mapping) or set(r) - REASON_KEYS:
                raise TestFileError(f"{where}: expect.{key}: each reason is a mapping of "
                                    + ", ".join(sorted(REASON_KEYS)))
    return dict(expect)


def _read_steps(raw: Mapping[str, Any], where: str) -> list[Step]:
    """A case's ``steps`` (none: a one-decision case)."""
    if "steps" not in raw:
        return []
    steps = raw["steps"]
    if not isinstance(steps, list) or not steps:
        raise TestFileError(f"{where}: steps must be a non-empty list of steps")
    for key in ("expect", "repeat"):
        if key in raw:
            raise TestFileError(f"{where}: a case with steps has no {key} of its own (each"
                                f" step has its {key})")
    out = []
    for j, step in enumerate(steps):
        at = f"{where} step {j + 1}"
        if not isinstance(step, Mapping):
            raise TestFileError(f"{at}: a step must be a mapping")
        unknown = set(step) - STEP_KEYS
        if unknown:
            raise TestFileError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
        if "now" in step and "advance" in step:
            raise TestFileError(f"{at}: now or advance, not both")
        advance = None
        if "advance" in step:
            try:
                advance = parse_duration(str(step["advance"])).to_timedelta()
            except CelError as exc:
                raise TestFileError(f"{at}: advance: {exc} (e.g. 90s, 30m, 1h30m)") from None
            if advance < timedelta(0):
                raise TestFileError(f"{at}: advance must not be negative; set now to go back")
        request = step.get("request", {})
        if not isinstance(request, Mapping):
            raise TestFileError(f"{at}: request must be a mapping (keys replace the case's)")
        expect = _read_expect(step["expect"], at) if "expect" in step else None
        out.append(Step(str(step.get("name") or f"step {j + 1}"), expect, step.get("now"),
                        advance, dict(request), _read_repeat(step, at)))
    if all(st.expect is None for st in out):
        raise TestFileError(f"{where}: no step has an expect: the case would check nothing")
    return out


# ---------------------------------------------------------------- checking


def _reason_matches(want: Mapping[str, Any], got: Reason) -> bool:
    for key, value in want.items():
        if key == "message_contains":
            if str(value).lower() not in got.message.lower():
                return False
        elif key == "policy":
            if (got.policy or "system") != str(value) and got.policy != str(value):
                return False
        elif key == "code":
            if got.code != str(value).upper().removeprefix("REASON_CODE_"):
                return False
        elif getattr(got, key) != value:
            return False
    return True


def _fmt(r: Reason) -> str:
    return f"[{r.policy or 'system'}] {r.code}: {r.message}"


def _match_reasons(label: str, wanted: Sequence[Mapping[str, Any]], got: Sequence[Reason],
                   exact: bool) -> list[str]:
    failures = []
    left = list(got)
    for w in wanted:
        hit = next((r for r in left if _reason_matches(w, r)), None)
        if hit is None:
            failures.append(f"{label}: expected {dict(w)}, not found")
        else:
            left.remove(hit)
    if exact and left:
        failures.extend(f"{label}: unexpected {_fmt(r)}" for r in left)
    if failures and got:
        failures.append(f"{label} were: " + "; ".join(_fmt(r) for r in got))
    return failures


def check_decision(expect: Mapping[str, Any], d: Decision) -> list[str]:
    failures = []
    if bool(expect["allowed"]) != d.allowed:
        failures.append(f"expected {'ALLOW' if expect['allowed'] else 'DENY'}, got "
                        f"{'ALLOW' if d.allowed else 'DENY'}"
                        + "".join(f"\n      deny: {_fmt(r)}" for r in d.reasons))
    if "reasons" in expect:
        failures += _match_reasons("reasons", expect["reasons"] or [], d.reasons, True)
    if "reasons_include" in expect:
        failures += _match_reasons("reasons", expect["reasons_include"] or [], d.reasons,
                                   False)
    if "shadow_denies" in expect:
        failures += _match_reasons("shadow denies", expect["shadow_denies"] or [],
                                   d.shadow_denies, True)
    for policy, values in (expect.get("explanations") or {}).items():
        found = [x for x in d.explanations if x.policy == policy]
        if not found:
            failures.append(f"explanations: none for policy {policy!r} (have "
                            f"{[x.policy for x in d.explanations]})")
            continue
        got = found[0].values
        for key, want in (values or {}).items():
            if key not in got:
                failures.append(f"explanations[{policy}]: no value for {key!r}; have "
                                f"{sorted(got)}")
            elif str(want).lower() not in got[key].lower():
                failures.append(f"explanations[{policy}][{key!r}] = {got[key]!r}, expected it"
                                f" to contain {str(want)!r}")
    return failures


async def run_case(policies: Sequence[Policy], case: Case) -> Outcome:
    outcome = Outcome(case)
    sandbox = Sandbox.of(policies)
    if case.now is not None:
        try:
            sandbox.set_time(parse_time(case.now))
        except ValueError as exc:
            outcome.failures.append(f"now: {exc}")
            return outcome
    steps = case.steps or [Step("", case.expect, repeat=case.repeat)]
    for step in steps:
        label = f"{step.name}: " if case.steps else ""
        try:
            req = request_from_mapping({**case.request, **step.request}, case.base)
        except RequestError as exc:
            outcome.failures.append(f"{label}invalid request: {exc}")
            return outcome
        req.explain = bool((step.expect or {}).get("explanations"))
        try:
            _move_clock(sandbox, step)
        except ValueError as exc:
            outcome.failures.append(f"{label}now: {exc}")
            return outcome
        decision = None
        for _ in range(step.repeat):
            decision = await sandbox.engine.check(req, DEFAULT_BUDGET_S)
        assert decision is not None
        outcome.decision = decision
        if step.expect is not None:
            outcome.failures += [label + f for f in check_decision(step.expect, decision)]
    return outcome


def _move_clock(sandbox: Sandbox, step: Step) -> None:
    if step.now is not None:
        sandbox.set_time(parse_time(step.now))
    elif step.advance is not None:
        sandbox.set_time(sandbox.now + step.advance)


async def run_all(policy_path: Path, test_path: Path | None = None) -> list[Outcome]:
    policies = load_policies(policy_path)
    Sandbox.of(policies)  # PolicyError now, as the server would refuse them, not per case
    # one policy file: the tests beside it (the file itself is a policy, not tests)
    files = find_test_files(test_path or (policy_path if policy_path.is_dir()
                                          else policy_path.parent))
    outcomes = []
    for f in files:
        for case in read_cases(f):
            outcomes.append(await run_case(policies, case))
    return outcomes


def main(policy_path: str, tests: str | None = None, *, verbose: bool = False,
         out: TextIO | None = None) -> int:
    # errors (exit 2) to stderr, as pdp check and eval do; a caller's ``out`` gets all
    err = out or sys.stderr
    out = out or sys.stdout
    ppath = Path(policy_path)
    if not ppath.exists():
        print(f"pdp test: {ppath} does not exist", file=err)
        return 2
    try:
        outcomes = asyncio.run(run_all(ppath, Path(tests) if tests else None))
    except PolicyError as exc:
        print(f"pdp test: policies: {exc}", file=err)
        return 2
    except TestFileError as exc:
        print(f"pdp test: {exc}", file=err)
        return 2
    if not outcomes:
        print(f"pdp test: no *.test.yaml files under {tests or ppath}", file=err)
        return 2
    failed = [o for o in outcomes if not o.passed]
    for o in outcomes:
        if o.passed and not verbose:
            continue
        print(f"{'PASS' if o.passed else 'FAIL'} {o.case.source} {o.case.name}", file=out)
        for f in o.failures:
            print(f"    {f}", file=out)
    print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed"
          f" ({len(outcomes)} cases)", file=out)
    return 1 if failed else 0
