"""Issue 18: typed rules and built-ins mean what they say, through the public API (the
Engine in-process, and policy loading)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pdp.authoring import lint
from pdp.engine.decision import Decision
from pdp.engine.request import CheckRequest
from pdp.policy.loader import load_text
from pdp.policy.model import Checkpoint, Policy, PolicyError
from tests.engine.test_engine import engine_for, push

#: Makes tenant ``t`` known to the engine without adding a deny of its own.
QUIET = "tenant: t\nname: quiet\nrule: {cel: {deny: 'false'}}\n"
TLS = "default-deny-tls-insecure-on-non-localhost"
REMOVAL = "default-deny-exporter-removal"


async def decide(req: CheckRequest, policies: str = QUIET) -> Decision:
    engine, _ = engine_for(policies)
    return await engine.check(req, 5.0)


def denied_by(d: Decision) -> list[str]:
    return [r.policy for r in d.reasons]


def cfg(value: Any) -> str:
    return yaml.safe_dump(value)


# ---------------------------------------------------------------- 1. TLS built-in spellings

REMOTE = "collector.example.com:4317"


@pytest.mark.parametrize(("exporters", "setting"), [
    ({"otlp": {"endpoint": REMOTE, "tls": {"insecure_skip_verify": True}}},
     "tls.insecure_skip_verify: true"),
    ({"otlp": {"endpoint": REMOTE, "tls": {"insecure": True}}}, "tls.insecure: true"),
    ({"otlp": {"endpoint": REMOTE, "tls": {"insecure": "true"}}}, "tls.insecure: true"),
    ({"otlp": {"endpoint": REMOTE, "tls": {"insecure": "True"}}}, "tls.insecure: True"),
    ({"otlp": {"endpoint": REMOTE, "tls": {"insecure_skip_verify": "1"}}},
     "tls.insecure_skip_verify: 1"),
    ({"otlp/2": {"endpoint": REMOTE, "insecure": True}}, "insecure: true"),
    ({"otlp": {"endpoint": REMOTE, "insecure_skip_verify": True}}, "insecure_skip_verify: true"),
    ({"otlphttp/x": {"endpoint": "http://collector.example.com:4318"}},
     "endpoint: http://collector.example.com:4318"),
    ({"otlp": {"endpoint": "http://collector.example.com:4317"}},
     "endpoint: http://collector.example.com:4317"),
    ({"otlphttp": {"traces_endpoint": "http://collector.example.com/v1/traces"}},
     "traces_endpoint: http://collector.example.com/v1/traces"),
    ({"otlp": {"endpoint": REMOTE, "tls": {"min_version": "1.1"}}}, "tls.min_version: 1.1"),
    ({"otlp": {"endpoint": REMOTE, "tls": {"max_version": "1.0"}}}, "tls.max_version: 1.0"),
    ({"otlp": {"endpoint": REMOTE, "tls": {"insecure": "${env:OTLP_INSECURE}"}}},
     "tls.insecure: ${env:OTLP_INSECURE}"),
    ({"otlp": {"endpoint": "https://collector.example.com:4317/path",
               "tls": {"insecure": True}}}, "tls.insecure: true"),
    ({"otlp": {"endpoint": "0.0.0.0:4317", "tls": {"insecure": True}}}, "tls.insecure: true"),
    ({"otlp": {"tls": {"insecure": True}}}, "tls.insecure: true"),  # no endpoint: not local
    ({"custom": {"client": {"endpoint": REMOTE, "tls": {"insecure_skip_verify": True}}}},
     "client.tls.insecure_skip_verify: true"),
    ({"loadbalancing": {"protocol": {"otlp": {"tls": {"insecure": True}}},
                        "resolver": {"static": {"hostnames": ["a.example.com:4317"]}}}},
     "protocol.otlp.tls.insecure: true"),
])
async def test_every_way_to_turn_off_transport_security_to_a_remote_host_is_denied(
        exporters: dict[str, Any], setting: str) -> None:
    d = await decide(push(cfg({"exporters": exporters}), explain=True))
    assert denied_by(d) == [TLS], d.reasons
    [name] = exporters
    assert f"exporter {name!r}" in d.reasons[0].message
    assert f"({setting})" in d.reasons[0].message
    [x] = d.explanations
    assert x.values["exporter"] == name and x.values["localhost"] == "false"


async def test_an_extension_that_skips_verification_towards_a_remote_host_is_denied() -> None:
    config = {"extensions": {"oauth2client": {"token_url": "https://auth.example.com/token",
                                              "tls": {"insecure_skip_verify": True}}}}
    d = await decide(push(cfg(config)))
    assert denied_by(d) == [TLS]
    assert "extension 'oauth2client' disables certificate verification" in \
        d.reasons[0].message and "auth.example.com" in d.reasons[0].message


@pytest.mark.parametrize("exporter", [
    {"endpoint": "localhost:4317", "tls": {"insecure": True}},
    {"endpoint": "LOCALHOST:4317", "tls": {"insecure_skip_verify": True}},
    {"endpoint": "127.0.0.1:4317", "insecure": True},
    {"endpoint": "127.10.20.30:4317", "tls": {"insecure": True}},
    {"endpoint": "[::1]:4317", "tls": {"insecure": True}},
    {"endpoint": "::1", "tls": {"insecure": True}},
    {"endpoint": "http://localhost:4318/v1/traces"},
    {"endpoint": "http://[::1]:4318"},
    {"endpoint": "unix:///run/otel.sock", "tls": {"insecure": True}},
    {"endpoint": REMOTE, "tls": {"insecure": False, "insecure_skip_verify": "false"}},
    {"endpoint": REMOTE, "tls": {"min_version": "1.2", "max_version": "1.3"}},
    {"endpoint": "https://collector.example.com:4318"},
    {"endpoint": REMOTE, "headers": {"insecure": "true"}},  # a header, not a setting
    {"endpoint": REMOTE},
])
async def test_secure_or_local_transports_are_allowed(exporter: dict[str, Any]) -> None:
    d = await decide(push(cfg({"exporters": {"otlp": exporter}})))
    assert d.allowed, d.reasons


# ---------------------------------------------------------------- 2. exporter removal

RUNNING = {"exporters": {"otlp/a": {"endpoint": "localhost:4317"},
                         "otlp/b": {"endpoint": "localhost:4318"}},
           "service": {"pipelines": {"traces": {"receivers": ["otlp"],
                                                "exporters": ["otlp/a"]},
                                     "logs": {"receivers": ["otlp"],
                                              "exporters": ["otlp/b"]}}}}


def _without(pipelines: dict[str, Any]) -> dict[str, Any]:
    return {**RUNNING, "service": {"pipelines": pipelines}}


@pytest.mark.parametrize(("new", "message"), [
    # left out of every pipeline, still defined
    (_without({"traces": {"receivers": ["otlp"], "exporters": ["otlp/a"]},
               "logs": {"receivers": ["otlp"], "exporters": ["otlp/a"]}}),
     "exporter 'otlp/b' is left out of every pipeline"),
    # its pipeline deleted
    (_without({"traces": {"receivers": ["otlp"], "exporters": ["otlp/a"]}}),
     "exporter 'otlp/b' is left out of every pipeline"),
    # every pipeline deleted
    ({"exporters": RUNNING["exporters"]}, "' is left out of every pipeline"),
    # deleted (as before)
    ({"exporters": {"otlp/a": {}}, "service": {"pipelines": {
        "traces": {"receivers": ["otlp"], "exporters": ["otlp/a"]}}}},
     "exporter 'otlp/b' is removed"),
    # named by a pipeline but no longer defined: the collector has nothing to send through
    (_without({"traces": {"receivers": ["otlp"], "exporters": ["otlp/a"]},
               "logs": {"receivers": ["otlp"], "exporters": ["otlp/b"]}})
     | {"exporters": {"otlp/a": {}}}, "exporter 'otlp/b' is removed"),
])
async def test_an_exporter_that_stops_receiving_data_is_removed(new: dict[str, Any],
                                                                message: str) -> None:
    d = await decide(push(cfg(new), previous_config_yaml=cfg(RUNNING), explain=True))
    assert denied_by(d) == [REMOVAL]
    assert message in d.reasons[0].message


async def test_moving_an_exporter_to_another_pipeline_is_allowed() -> None:
    moved = _without({"all": {"receivers": ["otlp"], "exporters": ["otlp/b", "otlp/a"]}})
    d = await decide(push(cfg(moved), previous_config_yaml=cfg(RUNNING)))
    assert d.allowed, d.reasons


async def test_active_exporters_left_out_of_every_pipeline_are_removed() -> None:
    new = _without({"traces": {"receivers": ["otlp"], "exporters": ["otlp/a"]}})
    agent = {"id": "a1", "labels": {}, "active_exporters": ["otlp/a", "otlp/b"]}
    d = await decide(CheckRequest(tenant="t", checkpoint=push().checkpoint, agent=agent,
                                  config_yaml=cfg(new)))
    assert denied_by(d) == [REMOVAL]
    assert "'otlp/b' is left out of every pipeline" in d.reasons[0].message
    assert "agent reports it carries traffic" in d.reasons[0].message
    agent["active_exporters"] = ["otlp/a"]
    ok = await decide(CheckRequest(tenant="t", checkpoint=push().checkpoint, agent=agent,
                                   config_yaml=cfg(new)))
    assert ok.allowed, ok.reasons


async def test_a_deleted_exporter_is_named_before_one_left_out() -> None:
    agent = {"id": "a1", "labels": {}, "active_exporters": ["otlp/a", "otlp/b"]}
    new = {"exporters": {"otlp/a": {}}}  # otlp/a left out (no pipelines), otlp/b deleted
    d = await decide(CheckRequest(tenant="t", checkpoint=Checkpoint.PUSH, agent=agent,
                                  config_yaml=cfg(new), previous_config_yaml=cfg(RUNNING)))
    assert denied_by(d) == [REMOVAL]
    assert "exporter 'otlp/b' is removed" in d.reasons[0].message
    assert "'logs'" in d.reasons[0].message


async def test_a_connector_is_not_an_exporter() -> None:
    running = {"exporters": {"otlp/a": {"endpoint": "localhost:4317"}},
               "connectors": {"spanmetrics": {}},
               "service": {"pipelines": {
                   "traces": {"receivers": ["otlp"], "exporters": ["spanmetrics", "otlp/a"]},
                   "metrics": {"receivers": ["spanmetrics"], "exporters": ["otlp/a"]}}}}
    new = {**running, "connectors": {},
           "service": {"pipelines": {"traces": {"receivers": ["otlp"],
                                                "exporters": ["otlp/a"]}}}}
    d = await decide(push(cfg(new), previous_config_yaml=cfg(running)))
    assert d.allowed, d.reasons


# ---------------------------------------------------------------- 3. device rules at a push

DEVICE_RULES = ["min_memory: 4GB", "allowed_groups: [beta]", "min_os_version: {android: '10'}"]
GOOD_DEVICE = {"id": "d1", "platform": "android", "os_version": "14", "groups": ["beta"],
               "memory_bytes": 8_000_000_000, "labels": {}}


def device_policy(params: str, checkpoints: str = "") -> str:
    return (f"tenant: t\nname: dev\n{checkpoints}rule:\n  device_constraints: {{{params}}}\n")


def device_check(device: dict[str, Any] | None) -> CheckRequest:
    return CheckRequest(tenant="t", checkpoint=Checkpoint.DEVICE, device=device)


@pytest.mark.parametrize("params", DEVICE_RULES)
async def test_device_rules_do_not_apply_to_a_push_without_a_device(params: str) -> None:
    d = await decide(push(), device_policy(params))
    assert d.allowed, d.reasons


@pytest.mark.parametrize("params", DEVICE_RULES)
@pytest.mark.parametrize(("device", "allowed"), [
    (GOOD_DEVICE, True),
    ({**GOOD_DEVICE, "platform": "", "os_version": "", "groups": [], "memory_bytes": 0}, False),
    ({"id": "d1"}, False),  # a device that reports nothing is judged, and denied
])
async def test_device_rules_apply_wherever_a_device_is_carried(
        params: str, device: dict[str, Any], allowed: bool) -> None:
    at_device = await decide(device_check(device), device_policy(params))
    on_push = await decide(push(device=device), device_policy(params))
    assert at_device.allowed is allowed and on_push.allowed is allowed
    if not allowed:
        assert [r.code for r in at_device.reasons] == ["DEVICE_CONSTRAINT"]


def _lint(tmp_path: Path, text: str) -> list[str]:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    return [x.message for x in lint.lint_paths([f]) if x.severity == "warning"]


@pytest.mark.parametrize(("checkpoints", "warned"), [
    ("", "auto_apply, push, rollout_precondition"),
    ("checkpoints: [device, push]\n", "push"),
    ("checkpoints: [device]\n", None),
])
def test_lint_says_where_a_device_rule_does_not_apply(tmp_path: Path, checkpoints: str,
                                                      warned: str | None) -> None:
    found = [m for m in _lint(tmp_path, device_policy("min_memory: 1GB", checkpoints))
             if "device_constraints" in m]
    if warned is None:
        assert found == []
    else:
        assert len(found) == 1 and f"requests at {warned} do not carry" in found[0]
        assert "does not apply there, only at device" in found[0]


async def test_quality_gates_apply_only_where_metrics_are() -> None:
    gate = "tenant: t\nname: gate\nrule:\n  quality_gate: {min_accuracy: 0.9}\n"
    assert (await decide(push(), gate)).allowed
    blocked = await decide(CheckRequest(tenant="t", checkpoint=Checkpoint.ROLLOUT_PRECONDITION,
                                        rollout={"id": "r"}), gate)
    assert [r.code for r in blocked.reasons] == ["QUALITY_GATE_FAILED"]


# ---------------------------------------------------------------- 4. bad values refused at load

def load(rule_yaml: str) -> list[Policy]:
    return load_text(f"tenant: t\nname: r\nrule:\n{rule_yaml}", "policies/r.yaml")


@pytest.mark.parametrize(("rule_yaml", "field", "at", "problem"), [
    ("  device_constraints:\n    min_os_version: {android: 'ten'}\n",
     "rule.device_constraints.min_os_version.android", "'ten'", "'ten'"),
    ("  device_constraints:\n    min_os_version: {ios: 16.10}\n",
     "rule.device_constraints.min_os_version.ios", "16.10", "as a string"),
    ("  device_constraints:\n    min_os_version: {ios: '16', iOS: '17'}\n",
     "rule.device_constraints.min_os_version.iOS", "'17'", "given twice"),
    ("  device_constraints:\n    min_os_version: {android: ''}\n",
     "rule.device_constraints.min_os_version.android", "''", "''"),
    ("  device_constraints:\n    allowed_groups: ['']\n",
     "rule.device_constraints.allowed_groups[0]", "''", "group name"),
    ("  device_constraints: {}\n", "rule.device_constraints", "{}", "at least one"),
    ("  device_constraints: {min_memory: lots}\n",
     "rule.device_constraints.min_memory", "lots", "'lots'"),
    ("  max_step_percent: {max_percent: .nan}\n",
     "rule.max_step_percent.max_percent", ".nan", "finite"),
    ("  quality_gate: {conditions: [{metric: a, threshold: .inf}]}\n",
     "rule.quality_gate.conditions[0].threshold", ".inf", "finite"),
    ("  quality_gate: {conditions: [{metric: '', threshold: 1}]}\n",
     "rule.quality_gate.conditions[0].metric", "''", "metric name"),
    ("  quality_gate: {max_quality_drop: .nan}\n",
     "rule.quality_gate.max_quality_drop", ".nan", "finite"),
    ("  auto_rollback: {max_error_rate: .nan}\n",
     "rule.auto_rollback.max_error_rate", ".nan", "finite"),
    ("  cooldown: {minutes: 100000000000}\n", "rule.cooldown.minutes", "1000", "<= 527040"),
    ("  velocity: {max_count: 5, window_minutes: 10000000}\n",
     "rule.velocity.window_minutes", "1000", "<= 527040"),
    ("  rollback_rate: {threshold_percent: 10, window_hours: 100000}\n",
     "rule.rollback_rate.window_hours", "100000", "at most 168"),
    ("  daily_cap: {max_count: 1e12}\n", "rule.daily_cap.max_count", "1e12", "integer"),
    ("  freeze_windows: {windows: [{start: '2026-12-20T00:00:00', end: '2026-12-21T00:00:00Z'}]}"
     "\n", "rule.freeze_windows.windows[0].start", "'2026-12-20", "UTC offset"),
    ("  allowed_hours: {start_hour: 9, end_hour: 9}\n", "rule.allowed_hours.end_hour",
     "9}", "empty"),
])
def test_bad_parameters_are_refused_at_load_with_file_line_column(
        rule_yaml: str, field: str, at: str, problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        load(rule_yaml)
    lines = rule_yaml.splitlines()
    row = next(i for i, text in enumerate(lines) if at in text)
    where = f"{row + 4}:{lines[row].index(at) + 1}"  # the rule starts on line 4
    assert str(err.value).startswith(f"policies/r.yaml:{where}: {field}: "), str(err.value)
    assert problem in err.value.problem


@pytest.mark.parametrize("version", ["10", "10.0.1", "v11", "16.4.1-beta.2", 12])
def test_good_versions_load(version: Any) -> None:
    [p] = load(f"  device_constraints:\n    min_os_version: {{android: {version!r}}}\n")
    assert p.rule.min_os_version == (("android", str(version)),)


@pytest.mark.parametrize(("device", "shown"), [
    ({"os_version": "banana"}, "'banana'"),
    ({"os_version": "10..1"}, "'10..1'"),
    ({"os_version": ""}, "no OS version"),
    ({"os_version": None}, "no OS version"),
    ({"platform": None}, "no platform"),
    ({"memory_bytes": "lots"}, "'lots'"),
    ({"memory_bytes": True}, "True"),
    ({"groups": "beta"}, "'beta'"),
])
async def test_a_device_reporting_junk_is_denied_naming_the_value(device: dict[str, Any],
                                                                  shown: str) -> None:
    policy = device_policy("min_os_version: {android: '10'}, min_memory: 1GB,"
                           " allowed_groups: [beta]")
    d = await decide(device_check({**GOOD_DEVICE, **device}), policy)
    assert [r.code for r in d.reasons] == ["DEVICE_CONSTRAINT"], d.reasons
    assert shown in d.reasons[0].message


async def test_junk_numbers_in_requests_deny_rather_than_pass() -> None:
    step = "tenant: t\nname: step\nrule:\n  max_step_percent: {max_percent: 10}\n"
    d = await decide(push(rollout={"id": "r", "step_percent": float("nan")}), step)
    assert [r.code for r in d.reasons] == ["STEP_TOO_LARGE"] and "nan" in d.reasons[0].message
    drop = "tenant: t\nname: drop\nrule:\n  quality_gate: {max_quality_drop: 0.01}\n"
    d = await decide(CheckRequest(tenant="t", checkpoint=Checkpoint.ROLLOUT_PRECONDITION,
                                  metrics={"accuracy": float("nan"),
                                           "baseline/accuracy": 0.9}), drop)
    assert [r.code for r in d.reasons] == ["QUALITY_GATE_FAILED"]


# ---------------------------------------------------------------- 5. hours, zones and DST

def clock_policy(rule_yaml: str) -> str:
    return f"tenant: t\nname: clock\nrule:\n  {rule_yaml}\n"


async def decide_at(when: str, rule_yaml: str) -> Decision:
    engine, _ = engine_for(clock_policy(rule_yaml))
    instant = datetime.fromisoformat(when.replace("Z", "+00:00"))
    engine.options.now = lambda: instant
    return await engine.check(push(), 5.0)


@pytest.mark.parametrize("when", ["2026-03-29T00:00Z", "2026-03-29T01:00Z", "2026-03-29T12:30Z",
                                  "2026-03-29T21:59Z", "2026-03-29T22:00Z", "2026-10-25T00:30Z",
                                  "2026-10-25T01:30Z", "2026-12-31T23:59Z"])
async def test_allowed_hours_0_to_24_is_the_whole_day(when: str) -> None:
    d = await decide_at(when, "allowed_hours: {start_hour: 0, end_hour: 24,"
                              " timezone: Europe/Berlin}")
    assert d.allowed, d.reasons


@pytest.mark.parametrize("zone", ["localtime", "local", "''", "Local", "posixrules", "Factory",
                                  "europe/berlin", "Europe/Berlin ", "posix/Europe/Berlin",
                                  "right/UTC", "Mars/Olympus_Mons", "+02:00", "CEST"])
@pytest.mark.parametrize("rule_yaml", [
    "blocked_days: {{days: [sunday], timezone: {zone}}}",
    "allowed_hours: {{start_hour: 9, end_hour: 17, timezone: {zone}}}",
    "daily_cap: {{max_count: 5, timezone: {zone}}}",
])
def test_host_dependent_or_unknown_zones_are_refused(zone: str, rule_yaml: str) -> None:
    text = clock_policy(rule_yaml.format(zone=zone if zone.strip() == zone and zone
                                         else repr(zone)))
    with pytest.raises(PolicyError) as err:
        load_text(text, "policies/clock.yaml")
    assert err.value.field_path.endswith(".timezone") and err.value.line == 4


@pytest.mark.parametrize("zone", ["UTC", "Etc/UTC", "Etc/GMT-14", "Europe/Berlin",
                                  "America/Sao_Paulo", "Australia/Lord_Howe", "US/Eastern"])
def test_iana_zones_load(zone: str) -> None:
    [p] = load_text(clock_policy(f"blocked_days: {{days: [sunday], timezone: {zone}}}"))
    assert p.rule.tz.key == zone


# (zone, rule, UTC instant, allowed?, what the instant is on the local wall clock)
DST = [
    # Europe/Berlin, 2026-03-29: 02:00 CET -> 03:00 CEST, a 23-hour Sunday
    ("Europe/Berlin", "blocked_days: {days: [sunday]", "2026-03-28T22:59Z", True, "Sat 23:59"),
    ("Europe/Berlin", "blocked_days: {days: [sunday]", "2026-03-28T23:00Z", False, "Sun 00:00"),
    ("Europe/Berlin", "blocked_days: {days: [sunday]", "2026-03-29T21:59Z", False, "Sun 23:59"),
    ("Europe/Berlin", "blocked_days: {days: [sunday]", "2026-03-29T22:00Z", True, "Mon 00:00"),
    ("Europe/Berlin", "allowed_hours: {start_hour: 2, end_hour: 3", "2026-03-29T00:59Z",
     False, "01:59"),
    ("Europe/Berlin", "allowed_hours: {start_hour: 2, end_hour: 3", "2026-03-29T01:00Z",
     False, "03:00: 02:00-03:00 never happens that day"),
    ("Europe/Berlin", "allowed_hours: {start_hour: 9, end_hour: 17", "2026-03-29T07:00Z",
     True, "09:00 CEST"),
    ("Europe/Berlin", "allowed_hours: {start_hour: 9, end_hour: 17", "2026-03-29T15:00Z",
     False, "17:00 CEST"),
    # Europe/Berlin, 2026-10-25: 03:00 CEST -> 02:00 CET, a 25-hour Sunday
    ("Europe/Berlin", "blocked_days: {days: [sunday]", "2026-10-24T21:59Z", True, "Sat 23:59"),
    ("Europe/Berlin", "blocked_days: {days: [sunday]", "2026-10-24T22:00Z", False, "Sun 00:00"),
    ("Europe/Berlin", "blocked_days: {days: [sunday]", "2026-10-25T22:59Z", False, "Sun 23:59"),
    ("Europe/Berlin", "blocked_days: {days: [sunday]", "2026-10-25T23:00Z", True, "Mon 00:00"),
    ("Europe/Berlin", "allowed_hours: {start_hour: 2, end_hour: 3", "2026-10-25T00:30Z",
     True, "02:30 CEST"),
    ("Europe/Berlin", "allowed_hours: {start_hour: 2, end_hour: 3", "2026-10-25T01:30Z",
     True, "02:30 CET, the repeated hour"),
    ("Europe/Berlin", "allowed_hours: {start_hour: 2, end_hour: 3", "2026-10-25T02:00Z",
     False, "03:00 CET"),
    ("Europe/Berlin", "allowed_hours: {start_hour: 22, end_hour: 2", "2026-10-25T00:00Z",
     False, "02:00 CEST (wraps midnight)"),
    ("Europe/Berlin", "allowed_hours: {start_hour: 22, end_hour: 2", "2026-10-24T23:59Z",
     True, "01:59 CEST (wraps midnight)"),
    # America/Sao_Paulo, 2018-11-04: 00:00 -03 -> 01:00 -02 (midnight skipped, 23-hour Sunday)
    ("America/Sao_Paulo", "blocked_days: {days: [sunday]", "2018-11-04T02:59Z", True,
     "Sat 23:59"),
    ("America/Sao_Paulo", "blocked_days: {days: [sunday]", "2018-11-04T03:00Z", False,
     "Sun 01:00"),
    ("America/Sao_Paulo", "blocked_days: {days: [sunday]", "2018-11-05T01:59Z", False,
     "Sun 23:59"),
    ("America/Sao_Paulo", "blocked_days: {days: [sunday]", "2018-11-05T02:00Z", True,
     "Mon 00:00"),
    ("America/Sao_Paulo", "allowed_hours: {start_hour: 0, end_hour: 1", "2018-11-04T03:00Z",
     False, "01:00: hour 0 never happens that day"),
    ("America/Sao_Paulo", "allowed_hours: {start_hour: 0, end_hour: 1", "2018-11-03T03:30Z",
     True, "00:30 the day before"),
    # America/Sao_Paulo, 2019-02-17: 00:00 -02 -> 23:00 -03 (a 25-hour Saturday)
    ("America/Sao_Paulo", "blocked_days: {days: [saturday]", "2019-02-16T01:59Z", True,
     "Fri 23:59"),
    ("America/Sao_Paulo", "blocked_days: {days: [saturday]", "2019-02-16T02:00Z", False,
     "Sat 00:00"),
    ("America/Sao_Paulo", "blocked_days: {days: [saturday]", "2019-02-17T02:30Z", False,
     "Sat 23:30, the second time"),
    ("America/Sao_Paulo", "blocked_days: {days: [saturday]", "2019-02-17T03:00Z", True,
     "Sun 00:00"),
    ("America/Sao_Paulo", "allowed_hours: {start_hour: 23, end_hour: 24", "2019-02-17T01:30Z",
     True, "23:30 -02"),
    ("America/Sao_Paulo", "allowed_hours: {start_hour: 23, end_hour: 24", "2019-02-17T02:30Z",
     True, "23:30 -03, the repeated hour"),
    ("America/Sao_Paulo", "allowed_hours: {start_hour: 23, end_hour: 24", "2019-02-17T03:00Z",
     False, "Sun 00:00"),
    # Australia/Lord_Howe: a 30-minute shift. 2026-10-04 02:00 +1030 -> 02:30 +11
    ("Australia/Lord_Howe", "blocked_days: {days: [sunday]", "2026-10-03T13:29Z", True,
     "Sat 23:59"),
    ("Australia/Lord_Howe", "blocked_days: {days: [sunday]", "2026-10-03T13:30Z", False,
     "Sun 00:00"),
    ("Australia/Lord_Howe", "allowed_hours: {start_hour: 2, end_hour: 3", "2026-10-03T15:29Z",
     False, "01:59 +1030"),
    ("Australia/Lord_Howe", "allowed_hours: {start_hour: 2, end_hour: 3", "2026-10-03T15:30Z",
     True, "02:30 +11: the hour is 30 minutes long"),
    ("Australia/Lord_Howe", "allowed_hours: {start_hour: 2, end_hour: 3", "2026-10-03T16:00Z",
     False, "03:00 +11"),
    # 2026-04-05 02:00 +11 -> 01:30 +1030: 01:30-02:00 happens twice
    ("Australia/Lord_Howe", "allowed_hours: {start_hour: 1, end_hour: 2", "2026-04-04T14:30Z",
     True, "01:30 +11"),
    ("Australia/Lord_Howe", "allowed_hours: {start_hour: 1, end_hour: 2", "2026-04-04T15:29Z",
     True, "01:59 +1030, the second time"),
    ("Australia/Lord_Howe", "allowed_hours: {start_hour: 1, end_hour: 2", "2026-04-04T15:30Z",
     False, "02:00 +1030"),
]


@pytest.mark.parametrize(("zone", "rule_yaml", "when", "allowed", "local"), DST,
                         ids=[f"{z}-{w}-{r.split(':')[0]}" for z, r, w, _, _ in DST])
async def test_clock_rules_read_the_local_wall_clock_across_dst(
        zone: str, rule_yaml: str, when: str, allowed: bool, local: str) -> None:
    d = await decide_at(when, f"{rule_yaml}, timezone: {zone}}}")
    assert d.allowed is allowed, (local, d.reasons)
    if not allowed:
        assert d.reasons[0].code in ("BLOCKED_DAY", "OUTSIDE_ALLOWED_HOURS")
        assert zone in d.reasons[0].message


FREEZE = ("freeze_windows: {windows: ["
          "{start: '2026-10-25T00:00:00+02:00', end: '2026-10-26T00:00:00+01:00',"
          " reason: 25-hour Sunday in Berlin},"
          "{start: '2026-03-29T00:00:00+01:00', end: '2026-03-30T00:00:00+02:00',"
          " reason: 23-hour Sunday in Berlin}]}")


@pytest.mark.parametrize(("when", "retry_after"), [
    ("2026-10-24T21:59Z", None),
    ("2026-10-24T22:00Z", 25 * 3600),      # the whole 25-hour day
    ("2026-10-25T22:30Z", 1800),           # 23:30 CET
    ("2026-10-25T23:00Z", None),           # Monday 00:00 CET: end is exclusive
    ("2026-03-28T23:00Z", 23 * 3600),      # the whole 23-hour day
    ("2026-03-29T21:59Z", 60),
    ("2026-03-29T22:00Z", None),
])
async def test_freeze_windows_are_instants_across_dst(when: str, retry_after: int | None
                                                      ) -> None:
    d = await decide_at(when, FREEZE)
    if retry_after is None:
        assert d.allowed, d.reasons
    else:
        assert [r.code for r in d.reasons] == ["CHANGE_FREEZE"]
        assert d.reasons[0].retry_after_s == retry_after


async def test_overlapping_freeze_windows_retry_after_the_last_one() -> None:
    rule_yaml = ("freeze_windows: {windows: ["
                 "{start: '2026-12-20T00:00:00Z', end: '2026-12-27T00:00:00Z', reason: a},"
                 "{start: '2026-12-26T00:00:00Z', end: '2027-01-02T00:00:00Z', reason: b},"
                 "{start: '2027-01-02T00:00:00Z', end: '2027-01-03T00:00:00Z', reason: c}]}")
    d = await decide_at("2026-12-21T00:00Z", rule_yaml)
    assert d.reasons[0].retry_after_s == 13 * 86400
    assert "frozen until 2027-01-03" in d.reasons[0].message


# ---------------------------------------------------------------- 6. same request, same answer

SELECTORS = """\
tenant: t
name: not-canary
match:
  agent_selector: {match_expressions: [{key: track, operator: NotIn, values: [canary]}]}
rule: {cel: {deny: 'true', message: '"not canary"'}}
---
tenant: t
name: no-track
match:
  agent_selector: {match_expressions: [{key: track, operator: DoesNotExist}]}
rule: {cel: {deny: 'true', message: '"no track"'}}
---
tenant: t
name: track-1
match:
  agent_selector: {match_labels: {track: "1"}}
rule: {cel: {deny: 'true', message: '"track 1"'}}
"""


def agent_push(labels: Any, *, with_labels: bool = True) -> CheckRequest:
    agent: dict[str, Any] = {"id": "a1"}
    if with_labels:
        agent["labels"] = labels
    return CheckRequest(tenant="t", checkpoint=Checkpoint.PUSH, agent=agent, config_yaml="a: 1")


LABELS: list[tuple[str, CheckRequest]] = [
    ("empty", agent_push({})),
    ("absent", agent_push(None, with_labels=False)),
    ("none", agent_push(None)),
    ("str-1", agent_push({"track": "1"})),
    ("int-1", agent_push({"track": 1})),
    ("true", agent_push({"track": True})),
    ("float-1", agent_push({"track": 1.0})),
    ("canary", agent_push({"track": "canary"})),
    ("other-order", agent_push({"zone": "a", "track": "1"})),
    ("list", agent_push({"track": ["1"]})),
]


async def _answers(reqs: list[CheckRequest]) -> list[list[str]]:
    engine, _ = engine_for(SELECTORS)
    return [denied_by(await engine.check(r, 5.0)) for r in reqs]


@pytest.mark.parametrize("first", [name for name, _ in LABELS])
async def test_an_answer_does_not_depend_on_what_was_asked_before(first: str) -> None:
    alone = {name: (await _answers([req]))[0] for name, req in LABELS}
    [earlier] = [req for name, req in LABELS if name == first]
    for name, req in LABELS:
        _, after = await _answers([earlier, req])
        assert after == alone[name], (first, name)
    # what the selectors say, for the record
    assert alone["empty"] == ["not-canary", "no-track"]
    assert alone["str-1"] == ["not-canary", "track-1"]
    assert alone["int-1"] == ["not-canary"]  # 1 is not the label value "1"
    assert alone["canary"] == []


async def test_labels_that_are_not_a_mapping_select_every_selector_policy() -> None:
    [answer] = await _answers([agent_push("track=canary")])
    assert answer == ["not-canary", "no-track", "track-1"]
