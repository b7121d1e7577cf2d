"""Policies that read like their intent (issue 21): typed request sections, the collector
view, optional syntax, variables and per-violation reasons, compile errors in the file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from pdp.cel import (
    CelCompileError,
    CelEvalError,
    Environment,
    ProgramCache,
    pdp_environment,
)
from pdp.cel.collector import collector_view
from pdp.cel.env import new_pdp_environment
from pdp.cel.runtime import Deferred
from pdp.policy.compiled import MAX_VIOLATIONS, compile_or_broken, compile_policy
from pdp.policy.loader import load_text
from pdp.policy.model import PolicyError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from test_engine import engine_for, push  # type: ignore[import-not-found]

ENV = pdp_environment()


def compile_error(src: str) -> CelCompileError:
    with pytest.raises(CelCompileError) as info:
        ENV.compile(src)
    return info.value


# -- typed sections -----------------------------------------------------------------------

@pytest.mark.parametrize(("src", "wrong", "suggested"), [
    ('agent.lables.env == "prod"', "lables", "labels"),
    ("has(agent.grup)", "grup", "group"),
    ("device.memroy_bytes > 1", "memroy_bytes", "memory_bytes"),
    ("rollout.step_precent > 10.0", "step_precent", "step_percent"),
    ('request.chnage.subject == "x"', "chnage", "change"),
    ('request.change.subjct == "x"', "subjct", "subject"),
    ("agent.?lables", "lables", "labels"),
    ('collector.exporters.exists(n, collector.exporters[n].hots == "x")', "hots", "host"),
    ('collector.service.pipelines.exists(p, collector.service.pipelines[p].typ == "x")',
     "typ", "type"),
])
def test_unknown_field_is_a_compile_error_with_position_and_suggestion(
        src: str, wrong: str, suggested: str) -> None:
    err = compile_error(src)
    assert f"no field `{wrong}`" in err.message
    assert f"did you mean `{suggested}`?" in err.message
    assert err.column == src.index(wrong) + 1  # the caret is under the misspelt name


def test_unknown_field_without_a_close_name_lists_the_fields() -> None:
    err = compile_error("agent.xyz")
    assert "its fields are id, labels, group, version, hostname, active_exporters" in err.message


@pytest.mark.parametrize("src", [
    "agent.labels.env == 1",
    'rollout.step == "2"',
    'device.memory_bytes > "4GB"',
    "agent.active_exporters.size() == true",
])
def test_wrong_type_is_a_compile_error_naming_the_operands(src: str) -> None:
    err = compile_error(src)
    assert "found no matching overload" in err.message
    assert err.line == 1 and err.column > 1


def test_typed_sections_still_work_as_maps() -> None:
    """A record used whole (``"k" in agent``, iteration, indexing, type()) is a map."""
    act = {"agent": {"id": "a", "labels": {"env": "prod"}}}
    for src in ['"id" in agent', 'agent["id"] == "a"', 'agent.exists(k, k == "labels")',
                "type(agent) == map", 'agent.labels.env == "prod"', "size(agent) == 2"]:
        assert ENV.compile(src).evaluate(act) is True, src


def test_has_on_a_request_section_follows_proto3_presence() -> None:
    """The converter fills in every field, so ``has()`` asks what proto3 asks of a message:
    is the field other than its default. An unset ``rollout.created_at`` is not "set"."""
    from google.protobuf import timestamp_pb2

    from pdp.api.convert import agent_dict, rollout_dict
    from pdp.v1 import common_pb2 as cpb

    bare = {"agent": agent_dict(cpb.Agent(id="a")), "rollout": rollout_dict(cpb.Rollout())}
    for field in ("agent.group", "agent.labels", "agent.hostname", "agent.active_exporters",
                  "rollout.created_at", "rollout.approvals", "rollout.step",
                  "rollout.step_percent", "rollout.id"):
        assert ENV.compile(f"has({field})").evaluate(bare) is False, field
    assert ENV.compile("has(agent.id)").evaluate(bare) is True
    full = {"agent": agent_dict(cpb.Agent(id="a", group="g", labels={"env": "prod"})),
            "rollout": rollout_dict(cpb.Rollout(
                id="r", step=2, step_percent=10.0,
                created_at=timestamp_pb2.Timestamp(seconds=1_700_000_000),
                approvals=[cpb.Approval(actor="bob")]))}
    for field in ("agent.group", "agent.labels", "rollout.created_at", "rollout.approvals",
                  "rollout.step", "rollout.step_percent", "rollout.id",
                  "rollout.approvals[0].actor"):
        assert ENV.compile(f"has({field})").evaluate(full) is True, field
    assert ENV.compile("has(rollout.approvals[0].time)").evaluate(full) is False
    # The collector view and configs are not proto messages: a present key is set.
    assert ENV.compile("has(config.a)").evaluate({"config": {"a": 0}}) is True


def test_untyped_environment_compiles_any_field() -> None:
    assert new_pdp_environment(typed=False).compile("agent.lables.x == 1") is not None


# -- the collector view -------------------------------------------------------------------

CONFIG: dict[str, Any] = {
    "receivers": {"otlp": {"protocols": {}}, "hostmetrics/host": {"collection_interval": "30s"}},
    "processors": {"batch": None},
    "exporters": {"otlp/eu": {"endpoint": "otel.acme.eu:4317", "tls": {"insecure": True}},
                  "otlphttp/local": {"endpoint": "http://localhost:4318"},
                  "debug": {"verbosity": "detailed"}},
    "service": {"pipelines": {"traces/eu": {"receivers": ["otlp"], "processors": ["batch"],
                                            "exporters": ["otlp/eu", "debug"]}}},
}


def test_collector_view_names_types_and_helpers() -> None:
    v = collector_view(CONFIG)
    eu = v["exporters"]["otlp/eu"]
    assert (eu["name"], eu["type"], eu["host"], eu["port"]) == ("otlp/eu", "otlp",
                                                               "otel.acme.eu", 4317)
    assert eu["tls_disabled"] and not eu["tls_unverified"] and not eu["local"]
    assert eu["pipelines"] == ["traces/eu"]
    local = v["exporters"]["otlphttp/local"]
    assert local["local"] and local["tls_disabled"] and local["pipelines"] == []
    assert v["processors"]["batch"]["settings"] == {}
    p = v["service"]["pipelines"]["traces/eu"]
    assert p["type"] == "traces" and p["exporter_types"] == ["otlp", "debug"]
    assert v["connectors"] == {} and v["extensions"] == {}


@pytest.mark.parametrize("config", [None, {}, "text", [1, 2], {"exporters": [1],
                                                                "service": "x"}])
def test_collector_view_of_anything_has_every_section(config: Any) -> None:
    v = collector_view(config)
    for section in ("receivers", "processors", "exporters", "extensions", "connectors"):
        assert v[section] == {}
    assert v["service"] == {"pipelines": {}, "extensions": []}


def test_collector_expressions_need_no_guards() -> None:
    src = 'collector.exporters.exists(n, collector.exporters[n].type == "debug")'
    prog = ENV.compile(src)
    assert prog.evaluate({"collector": collector_view(CONFIG)}) is True
    assert prog.evaluate({"collector": collector_view({})}) is False
    assert prog.reads == frozenset({"collector.exporters"})


# -- optional syntax ----------------------------------------------------------------------

@pytest.mark.parametrize(("src", "config", "want"), [
    ('config.?exporters.orValue({}).size()', {"exporters": {"a": 1}}, 1),
    ('config.?exporters.orValue({}).size()', {}, 0),
    ('config.?service.?pipelines.?traces.hasValue()', {"service": {}}, False),
    ('config.?service.?pipelines.?traces.hasValue()',
     {"service": {"pipelines": {"traces": {}}}}, True),
    ('config.exporters[?"debug"].orValue(null) == null', {"exporters": {}}, True),
    ("config.items[?5].orValue(-1)", {"items": [1, 2]}, -1),
    ("config.items[?1].orValue(-1)", {"items": [1, 2]}, 2),
    ("[?config.?a, ?config.?b].size()", {"a": 1}, 1),
    ('{?"a": config.?a, ?"b": config.?b}', {"b": 2}, {"b": 2}),
    ("optional.of(1).orValue(2) + optional.none().orValue(3)", {}, 4),
])
def test_optional_syntax(src: str, config: Any, want: Any) -> None:
    assert ENV.compile(src).evaluate({"config": config}) == want


def test_optional_syntax_needs_the_optionals_library() -> None:
    with pytest.raises(CelCompileError, match="unsupported syntax"):
        Environment({"x": "dyn"}, extensions=("strings",)).compile("x.?a")


def test_optional_select_reads_the_field() -> None:
    assert ENV.compile("agent.?labels.orValue({}).size() > 0").reads == \
        frozenset({"agent.labels"})


# -- variables, violations, positions -----------------------------------------------------

def policy(rule: str, extra: str = "") -> str:
    return f"tenant: t\nname: p\ndescription: d\n{extra}rule:\n  cel:\n{rule}"


def compiled(text: str) -> Any:
    return compile_policy(load_text(text, "p.yaml")[0], ENV, ProgramCache(10))


def test_variables_are_typed_and_read_by_later_ones() -> None:
    p = compiled(policy(
        "    variables:\n"
        "      hosts: 'collector.exporters.map(n, collector.exporters[n].host)'\n"
        "      remote: 'variables.hosts.filter(h, h != \"\" && !h.isLocalhost())'\n"
        "    deny: 'variables.remote.size() > 0'\n"
        "    message: '\"remote exporters: \" + variables.remote.join(\", \")'\n"))
    assert [n for n, _ in p.variables] == ["hosts", "remote"]
    assert p.verdict_reads == frozenset({"collector.exporters"})
    with pytest.raises(PolicyError, match="no field `remot` on variables; did you mean"):
        compiled(policy("    variables:\n      remote: '[1]'\n    deny: 'variables.remot == 1'\n"))
    with pytest.raises(PolicyError, match="is defined twice"):
        compiled(policy("    variables:\n      - {name: a, expression: '1'}\n"
                        "      - {name: a, expression: '2'}\n    deny: 'true'\n"))


def test_a_failing_variable_fails_only_where_it_is_read() -> None:
    from pdp.cel import Budget
    from pdp.policy.evalctx import EvalContext

    p = compiled(policy("    variables:\n      x: 'config.missing.key'\n"
                        "    deny: 'has(config.missing) && variables.x == 1'\n"))
    ctx = EvalContext("t", None, None, {"config": {}})  # type: ignore[arg-type]
    assert p.evaluate(ctx, Budget()) is None  # short-circuited: the error never surfaces
    p2 = compiled(policy("    variables:\n      x: 'config.missing.key'\n"
                         "    deny: 'variables.x == 1'\n"))
    deny = p2.evaluate(ctx, Budget())
    assert deny.code == "POLICY_ERROR" and "variable x" in deny.message
    held = p2.activation(ctx)["variables"]["x"]  # the error, kept until read
    assert isinstance(held, Deferred) and isinstance(held.error, CelEvalError)


def test_violations_and_deny_are_exclusive() -> None:
    with pytest.raises(PolicyError, match="exactly one of deny"):
        load_text(policy("    deny: 'true'\n    violations: '[]'\n"))
    with pytest.raises(PolicyError, match="message goes with deny"):
        load_text(policy("    violations: '[]'\n    message: '\"x\"'\n"))


VIOLATIONS = policy("    violations: >\n"
                    "      collector.exporters.transformList(n, e, e.type == \"debug\",\n"
                    "        \"exporter \" + n + \" is a debug exporter\")\n")


async def test_violations_give_one_reason_per_offending_element() -> None:
    engine, _ = engine_for(VIOLATIONS)
    d = await engine.check(push("exporters:\n  debug: {}\n  debug/2: {}\n  otlp: {}\n"), 1.0)
    assert not d.allowed
    assert [(r.policy, r.code, r.message) for r in d.reasons] == [
        ("p", "POLICY_DENIED", "exporter debug is a debug exporter"),
        ("p", "POLICY_DENIED", "exporter debug/2 is a debug exporter")]
    d = await engine.check(push("exporters:\n  otlp: {}\n"), 1.0)
    assert d.allowed
    d = await engine.check(push("receivers:\n  otlp: {}\n"), 1.0)  # no exporters section
    assert d.allowed


async def test_violations_are_capped() -> None:
    engine, _ = engine_for(policy("    violations: 'config.items.map(i, string(i))'\n"))
    items = "\n".join(f"  - {i}" for i in range(MAX_VIOLATIONS + 20))
    d = await engine.check(push(f"items:\n{items}\n"), 1.0)
    assert len(d.reasons) == MAX_VIOLATIONS + 1
    assert d.reasons[-1].message == "... and 20 more violations"


async def test_violations_not_a_list_deny_as_an_error() -> None:
    engine, _ = engine_for(policy("    violations: '\"oops\"'\n"))  # known: refused
    d = await engine.check(push(), 1.0)
    assert [r.code for r in d.reasons] == ["POLICY_INVALID"]
    assert "must evaluate to a list of strings" in d.reasons[0].message
    engine, _ = engine_for(policy("    violations: 'config.a'\n"))  # dyn: at evaluation
    d = await engine.check(push(), 1.0)
    assert [r.code for r in d.reasons] == ["POLICY_ERROR"]


async def test_violations_in_a_batch_name_each_agent() -> None:
    """A violations rule reading the agent is evaluated per agent in a step."""
    engine, _ = engine_for(policy(
        "    violations: 'collector.exporters.map(n, n + \" on \" + agent.id)'\n"))
    reqs = [push("exporters:\n  debug: {}\n", agent=f"a{i}") for i in range(3)]
    ds = await engine.check_batch(reqs, 1.0)
    assert [d.reasons[0].message for d in ds] == [f"debug on a{i}" for i in range(3)]


BAD = """\
tenant: t
name: typo
rule:
  cel:
    variables:
      env: agent.labels.env
    deny: >
      variables.env == "prod"
      && agent.lables.team == "x"
"""


def test_compile_error_names_the_file_line_and_column_in_the_expression() -> None:
    with pytest.raises(PolicyError) as info:
        compiled(BAD)
    exc = info.value
    assert (exc.source, exc.line, exc.column) == ("p.yaml", 9, 16)
    assert str(exc).startswith("p.yaml:9:16: rule.cel.deny: no field `lables` on agent")
    broken = compile_or_broken(load_text(BAD, "p.yaml")[0], ENV, ProgramCache(1))
    assert broken.broken is not None and broken.broken.startswith("p.yaml:9:16:")


def test_compile_error_in_a_variable_points_into_it() -> None:
    with pytest.raises(PolicyError) as info:
        compiled(BAD.replace("agent.labels.env", "agent.lables.env"))
    assert (info.value.line, info.value.column) == (6, 18)
    assert info.value.field_path == "rule.cel.variables.env"


@pytest.mark.parametrize(("rule", "field", "what"), [
    ("    deny: '\"yes\"'\n", "deny", "a bool"),
    ("    deny: 'agent.labels'\n", "deny", "a bool"),
    ("    deny: 'true'\n    message: 'agent.labels'\n", "message", "a string"),
    ("    deny: 'true'\n    message: '3'\n", "message", "a string"),
])
def test_an_expression_of_the_wrong_known_type_is_refused_at_admission(
        rule: str, field: str, what: str) -> None:
    """Loaded, each denied every request it applied to (POLICY_ERROR) or showed a Python
    repr as the deny message; now refused where it is written."""
    with pytest.raises(PolicyError) as err:
        compiled(policy(rule))
    assert err.value.field_path == f"rule.cel.{field}" and f"must evaluate to {what}" in str(
        err.value)


async def test_a_dyn_message_is_shown_as_cel_shows_values() -> None:
    engine, _ = engine_for(policy("    deny: 'true'\n    message: 'config.m'\n"))
    d = await engine.check(push("m: {k: [1, true]}"), 1.0)
    assert d.reasons[0].message == '{"k":[1,true]}'  # CEL's true, not Python's True


@pytest.mark.parametrize(("variables", "what"), [
    ("      a: 'variables.b + 1'\n      b: '1'\n", "reads variables.b, defined at or after it"),
    ("      a: 'variables.a + 1'\n", "reads itself, defined at or after it"),
])
def test_a_variable_reading_a_later_one_says_so(variables: str, what: str) -> None:
    with pytest.raises(PolicyError) as err:
        compiled(policy(f"    variables:\n{variables}    deny: 'false'\n"))
    assert what in str(err.value) and err.value.field_path == "rule.cel.variables.a"
