"""Issue 18: typed rules and built-ins mean what they say, through the public API (the
Engine in-process, and policy loading)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pdp.engine.decision import Decision
from pdp.engine.request import CheckRequest
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
