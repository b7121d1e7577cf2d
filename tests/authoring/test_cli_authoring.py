"""pdp test and pdp policy lint on real fixtures (examples/) and on broken ones."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from pdp.authoring import lint, unit_tests
from pdp.cli import main as cli_main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_pass_and_cover_every_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["test", str(EXAMPLES / "policies"), "-v"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "FAIL" not in out
    # every example policy has at least one allow and one deny (or would-deny) case
    from pdp.authoring.harness import load_policies

    names = {p.name for p in load_policies(EXAMPLES / "policies")}
    names |= {"default-deny-exporter-removal", "default-deny-tls-insecure-on-non-localhost"}
    import asyncio

    outcomes = asyncio.run(unit_tests.run_all(EXAMPLES / "policies"))
    denied = {r.policy for o in outcomes if o.decision for r in
              [*o.decision.reasons, *o.decision.shadow_denies]}
    assert names <= denied
    assert sum(1 for o in outcomes if o.decision and o.decision.allowed) >= 8


def _copy(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(EXAMPLES / "policies", d)
    shutil.copytree(EXAMPLES / "requests", tmp_path / "requests")
    shutil.copytree(EXAMPLES / "configs", tmp_path / "configs")
    return d


def test_failing_cases_exit_1_with_details(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    (d / "wrong.test.yaml").write_text("""
- name: expects allow but is denied
  request_file: ../requests/push-deny-tls-insecure.yaml
  expect: {allowed: true}
- name: wrong reason and explanation
  request_file: ../requests/push-deny-non-eu-endpoint.yaml
  expect:
    allowed: false
    reasons: [{policy: eu-endpoints-only, message_contains: nope}]
    explanations: {eu-endpoints-only: {n: otlp/eu}}
""")
    out = io.StringIO()
    assert unit_tests.main(str(d), out=out) == 1
    text = out.getvalue()
    assert "FAIL" in text and "expects allow but is denied" in text
    assert "expected ALLOW, got DENY" in text and "default-deny-tls-insecure" in text
    assert "message_contains': 'nope'" in text
    assert "explanations[eu-endpoints-only]['n'] = 'otlp/us'" in text
    assert "2 failed" in text


@pytest.mark.parametrize(("content", "error"), [
    ("- {name: x}", "request (a mapping) or request_file is required"),
    ("- {request: {kind: push}, expect: {}}", "expect with at least `allowed`"),
    ("- {request: {}, expect: {allowed: true, bogus: 1}}", "unknown field(s) bogus"),
    ("tests: 3", "expected a list"),
])
def test_malformed_test_files_exit_2(tmp_path: Path, content: str, error: str) -> None:
    d = _copy(tmp_path)
    (d / "bad.test.yaml").write_text(content)
    out = io.StringIO()
    assert unit_tests.main(str(d), out=out) == 2
    assert error in out.getvalue()


def test_invalid_request_is_a_failing_case(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    (d / "x.test.yaml").write_text("- {request: {kind: push, tenant: acme},"
                                   " expect: {allowed: false}}\n")
    out = io.StringIO()
    assert unit_tests.main(str(d), str(d / "x.test.yaml"), out=out) == 1
    assert "invalid request: agent.id: required" in out.getvalue()


def test_lint_examples_clean() -> None:
    out = io.StringIO()
    assert lint.main([str(EXAMPLES / "policies")], out=out) == 0
    assert "0 error(s), 0 warning(s)" in out.getvalue()


BAD = """\
tenant: t
name: syntax
rule:
  cel:
    deny: config.x == (1
---
tenant: t
name: costly
rule:
  cel:
    deny: config.a.exists(x, config.b.exists(y, config.c.exists(z, x == y && y == z)))
---
tenant: t
name: agent-on-device
checkpoints: [device]
match:
  agent_selector: {match_labels: {env: prod}}
rule:
  cel: {deny: 'agent.id == "x"'}
---
tenant: t
name: device-on-push
checkpoints: [push]
match:
  device_selector:
    match_labels: {tier: a}
    match_expressions: [{key: tier, operator: NotIn, values: [a]}]
rule:
  device_constraints: {min_memory: 1GB}
---
tenant: t
name: syntax
rule:
  max_step_percent: {max_percent: 10}
---
tenant: t
name: bad-field
rule:
  max_step_percent: {max_percent: 1000}
"""


def test_lint_findings(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    out = io.StringIO()
    assert lint.main([str(f)], warn_cost=1000, max_cost=100_000_000, out=out) == 1
    text = out.getvalue()
    # the file line and column inside the expression (its end, for a missing ')')
    assert f"{f}:5:25: error: policy syntax: rule.cel.deny: Syntax error" in text
    assert "policy costly: rule.cel.deny: estimated worst-case cost" in text
    assert "warning: policy agent-on-device: agent_selector never matches" in text
    assert "rule.cel.deny reads `agent`, which requests at checkpoints device" in text
    assert "device_selector never matches" in text
    assert "device_selector can never match: match_labels sets tier=a" in text
    assert "rule device_constraints reads `device`" in text
    assert "policy syntax: already defined at" in text
    assert "bad-field: rule.max_step_percent.max_percent" in text
    # a cost over the server's limit is an error
    findings = lint.lint_paths([f], max_cost=1000)
    assert any(x.severity == "error" and x.policy == "costly" for x in findings)
    # warnings fail only with --strict
    ok = tmp_path / "ok.yaml"
    ok.write_text(BAD.split("---\n")[2])
    assert lint.main([str(ok)], out=io.StringIO()) == 0
    assert cli_main(["policy", "lint", "--strict", str(ok)]) == 1
    assert cli_main(["policy", "lint", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize(("content", "error"), [
    ("- {request: {}, expect: {allowed: 'false'}}", "expect.allowed must be true or false"),
    ("- {request: {}, expect: {allowed: false, explanations: [no-debug]}}",
     "expect.explanations must map each policy name"),
    ("- {request: {}, expect: {allowed: false, explanations: {no-debug: [1]}}}",
     "expect.explanations must map each policy name"),
    ("- {request: {}, repeat: true, expect: {allowed: true}}", "repeat must be a positive"),
])
def test_misread_expectations_are_refused(tmp_path: Path, content: str, error: str) -> None:
    """Values that would be misread (the string 'false' is truthy, true counts as 1) or
    crash the checker are a bad test file (exit 2), not a passing or failing case."""
    d = _copy(tmp_path)
    (d / "bad.test.yaml").write_text(content)
    out = io.StringIO()
    assert unit_tests.main(str(d), out=out) == 2
    assert error in out.getvalue()


BROKEN = ("tenant: acme\nname: typo\ncheckpoints: [push]\nrule:\n  cel:\n"
          "    deny: 'agent.lables[\"env\"] == \"prod\"'\n")


def test_offline_tools_refuse_a_policy_the_server_refuses(tmp_path: Path) -> None:
    """A policy that does not compile is refused by pdp serve and PutDraft. pdp test,
    eval and replay refused it too (exit 2, file:line:column) instead of keeping it as a
    deny-everything policy, under which a test expecting a deny passed."""
    from pdp.authoring import eval as pdp_eval
    from pdp.authoring import replay

    d = tmp_path / "p"
    d.mkdir()
    (d / "p.yaml").write_text(BROKEN)
    (d / "p.test.yaml").write_text(
        "- request: {kind: push, tenant: acme, agent: {id: a1, labels: {env: prod}},"
        " config_yaml: 'a: 1'}\n  expect: {allowed: false}\n")
    out = io.StringIO()
    assert unit_tests.main(str(d), out=out) == 2
    assert "p.yaml:6:" in out.getvalue() and "lables" in out.getvalue()
    req = tmp_path / "req.yaml"
    req.write_text("kind: push\ntenant: acme\nagent: {id: a1}\nconfig: {yaml: 'a: 1'}\n")
    result = pdp_eval.evaluate(str(d / "p.yaml"), str(req))
    assert "does not compile" in result["error"] and "lables" in result["error"]
    audit = tmp_path / "audit.jsonl"
    audit.write_text("")
    out = io.StringIO()
    assert replay.main(str(d / "p.yaml"), "1d", [str(audit)], out=out) == 2
    assert "lables" in out.getvalue()


def test_a_misspelt_tenant_is_unknown_offline_as_on_the_server(tmp_path: Path) -> None:
    """A server denies a tenant it does not know (UNKNOWN_TENANT, its default): so do the
    offline tools. Decided by the built-ins alone, a request whose tenant was misspelt made
    every test expecting an allow pass without testing the tenant's policies."""
    d = _copy(tmp_path)
    (d / "typo.test.yaml").write_text(
        "- name: misspelt\n  request: {kind: push, tenant: acmee, agent: {id: a1},"
        " config: {yaml: 'receivers: {}'}}\n  expect: {allowed: true}\n")
    out = io.StringIO()
    assert unit_tests.main(str(d), str(d / "typo.test.yaml"), out=out) == 1
    assert "UNKNOWN_TENANT" in out.getvalue()


def test_one_policy_file_runs_the_tests_beside_it(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    out = io.StringIO()
    assert unit_tests.main(str(d / "acme.yaml"), out=out) in (0, 1), out.getvalue()
    assert "passed" in out.getvalue() and "expected a list" not in out.getvalue()


@pytest.mark.parametrize(("deny", "column"), [
    ("deny: 'agent.idd == \"x\"'", 18),               # the plain case: the quote is column 11
    ("deny: &e 'agent.idd == \"x\"'", 21),            # an anchor before the value
    ("deny: !!str 'agent.idd == \"x\"'", 24),         # a tag before the value
    ("deny: &e !!str 'agent.idd == \"x\"'", 27),
])
def test_positions_count_from_the_value_not_its_anchor_or_tag(
        tmp_path: Path, deny: str, column: int) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(f"tenant: t\nname: p\nrule:\n  cel:\n    {deny}\n")
    [finding] = lint.lint_paths([f])
    assert (finding.line, finding.column) == (5, column), finding


def test_a_byte_order_mark_moves_no_position(tmp_path: Path) -> None:
    body = "tenant: t\nname: p\nrule:\n  cel:\n    deny: 'agent.idd == \"x\"'\n"
    plain, marked = tmp_path / "a.yaml", tmp_path / "b.yaml"
    plain.write_text(body)
    marked.write_text("\ufeff" + body)
    [a], [b] = lint.lint_paths([plain]), lint.lint_paths([marked])
    assert (a.line, a.column) == (b.line, b.column) == (5, 18)


def test_a_file_named_twice_is_linted_once(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("tenant: t\nname: p\nrule: {cel: {deny: 'false'}}\n")
    assert lint.lint_paths([tmp_path, f]) == []  # not "already defined" by itself


def test_exit_2_errors_go_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As pdp check and pdp eval do: stdout stays for results (a pipe reads no error)."""
    missing = str(tmp_path / "missing")
    assert cli_main(["test", missing]) == 2
    assert cli_main(["policy", "lint", missing]) == 2
    assert cli_main(["replay", "--policy", missing, "--audit", missing, "--since", "1d"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count(missing) >= 2


def test_lint_reports_a_scope_expression_where_the_server_does(tmp_path: Path) -> None:
    from pdp.cel import ProgramCache, pdp_environment
    from pdp.policy.compiled import compile_policy
    from pdp.policy.loader import load_file
    from pdp.policy.model import PolicyError

    f = tmp_path / "p.yaml"
    f.write_text("tenant: t\nname: cap\nrule:\n  daily_cap:\n    max_count: 3\n    scope:\n"
                 "      expression: 'agent.labels[\"team\"] + agent.grup'\n")
    [finding] = lint.lint_paths([f])
    with pytest.raises(PolicyError) as err:
        compile_policy(load_file(f)[0], pdp_environment(), ProgramCache(4))
    assert (finding.line, finding.column) == (err.value.line, err.value.column) == (7, 49)


COOLDOWN = """tenant: acme
name: agent-cooldown
rule: {cooldown: {minutes: 60, scope: agent}}
"""


def _steps_dir(tmp_path: Path, tests: str) -> Path:
    d = tmp_path / "p"
    d.mkdir()
    (d / "cooldown.yaml").write_text(COOLDOWN)
    (d / "cooldown.test.yaml").write_text(tests)
    return d


def test_steps_move_the_clock_between_decisions_on_one_state(tmp_path: Path) -> None:
    """A cooldown is tested end to end: allowed, denied 30 min later, allowed again past the
    hour (and then its own hour runs), and another agent (a step's request replaces the
    case's keys) never waits."""
    d = _steps_dir(tmp_path, """
- name: a second push within the hour waits
  request: {kind: push, tenant: acme, agent: {id: a1}, config: {}}
  now: "2025-03-30T00:30:00Z"
  steps:
    - expect: {allowed: true}
    - advance: 30m
      expect:
        allowed: false
        reasons: [{policy: agent-cooldown, code: COOLDOWN_ACTIVE}]
    - name: another agent
      request: {agent: {id: a2}}
      expect: {allowed: true}
    - advance: 30m1s
      expect: {allowed: true}
    - now: "2025-03-30T04:00:00+02:00"  # 02:00Z: 29m59s after the last allowed push
      expect: {allowed: false}
""")
    out = io.StringIO()
    assert unit_tests.main(str(d), out=out, verbose=True) == 0, out.getvalue()
    assert "1 passed, 0 failed" in out.getvalue()


def test_a_failing_step_is_named(tmp_path: Path) -> None:
    d = _steps_dir(tmp_path, """
- name: wrong
  request: {kind: push, tenant: acme, agent: {id: a1}, config: {}}
  steps:
    - {}
    - {name: too soon, advance: 59m, expect: {allowed: true}}
""")
    out = io.StringIO()
    assert unit_tests.main(str(d), out=out) == 1
    assert "too soon: expected ALLOW, got DENY" in out.getvalue()


@pytest.mark.parametrize(("steps", "error"), [
    ("steps: []", "steps must be a non-empty list"),
    ("steps: [{}]", "no step has an expect"),
    ("expect: {allowed: true}\n  steps: [{expect: {allowed: true}}]",
     "a case with steps has no expect of its own"),
    ("steps: [{advance: soon, expect: {allowed: true}}]", "step 1: advance:"),
    ("steps: [{advance: -1m, expect: {allowed: true}}]", "must not be negative"),
    ("steps: [{now: x, advance: 1m, expect: {allowed: true}}]", "now or advance, not both"),
    ("steps: [{expect: {allowed: true}, wait: 1}]", "step 1: unknown field(s) wait"),
    ("steps: [{request: [1], expect: {allowed: true}}]", "request must be a mapping"),
    ("steps: [{expect: {allowed: 'no'}}]", "step 1: expect.allowed must be true or false"),
])
def test_malformed_steps_exit_2(tmp_path: Path, steps: str, error: str) -> None:
    d = _steps_dir(tmp_path, "- request: {kind: push, tenant: acme, agent: {id: a1}}\n  "
                   + steps + "\n")
    out = io.StringIO()
    assert unit_tests.main(str(d), out=out) == 2
    assert error in out.getvalue()
