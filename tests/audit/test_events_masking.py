"""Event model, derived events, masking, settings."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pdp.audit import (
    AuditSettings,
    Masker,
    builtin_relaxed,
    events_for_decision,
    policy_activated,
    policy_approved,
    policy_created,
    policy_reactivated,
    policy_retired,
)
from pdp.audit.chain import canonical
from pdp.audit.events import to_jsonable
from tests.audit.conftest import decision


def test_allowed_decision_is_one_event() -> None:
    evs = events_for_decision(decision(1))
    assert [e["type"] for e in evs] == ["Decision"]
    d = evs[0]
    assert d["time"] == "2023-11-14T22:13:21.000000Z"
    assert d["subject"] == {"agent_id": "agent-1", "device_id": None, "rollout_id": "r-1"}
    assert d["policies"] == [{"name": "p", "version": 1, "content_hash": "sha256:abc"}]
    assert d["request"]["config"]["exporters"]["otlp"]["headers"]["authorization"] == "secret"


@pytest.mark.parametrize("cp", ["PUSH", "AUTO_APPLY", "CHECKPOINT_PUSH", "push"])
def test_per_agent_deny_adds_push_denied(cp: str) -> None:
    evs = events_for_decision(decision(2, allowed=False, checkpoint=cp, shadow=2))
    assert [e["type"] for e in evs] == [
        "Decision", "Rollout.PushDenied", "Policy.WouldDeny", "Policy.WouldDeny"]
    pd = evs[1]
    assert pd["decision_id"] == "d-2" and pd["agent_id"] == "agent-2"
    assert pd["rollout_id"] == "r-1" and pd["reasons"][0]["code"] == "POLICY_DENY"
    assert "request" not in pd
    assert [e["policy"] for e in evs[2:]] == ["draft-0", "draft-1"]
    assert all(e["decision_id"] == "d-2" and e["tenant"] == "acme" for e in evs)


def test_extra_fields_are_kept() -> None:
    d = decision(4, allowed=False)
    d["request_id"] = "req-9"
    d["overridden"] = False
    d["reasons"] = [{"policy": "p", "version": 1, "rule": "cap", "code": "DAILY_CAP",
                     "message": "cap", "retry_after_s": 30.0, "builtin": False}]
    d["checkpoint"] = "auto_apply"
    evs = events_for_decision(d)
    assert evs[0]["request_id"] == "req-9" and evs[0]["overridden"] is False
    assert evs[0]["checkpoint"] == "auto_apply"
    assert evs[0]["reasons"][0]["retry_after_s"] == 30.0
    assert evs[1]["type"] == "Rollout.PushDenied"
    assert evs[1]["reasons"][0]["retry_after_s"] == 30.0


@pytest.mark.parametrize("cp", ["ROLLOUT", "DEVICE", "device"])
def test_other_denies_are_not_push_denied(cp: str) -> None:
    evs = events_for_decision(decision(3, allowed=False, checkpoint=cp, shadow=1))
    assert [e["type"] for e in evs] == ["Decision", "Policy.WouldDeny"]


def test_lifecycle_events() -> None:
    t = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    evs = [
        policy_created("acme", "p", 1, "alice", content_hash="h1", time=t),
        policy_approved("acme", "p", 1, "bob", author="alice", time=t),
        policy_activated("acme", "p", 1, "bob", content_hash="h1", time=t),
        policy_retired("acme", "p", 1, "bob", reason="replaced", time=t),
        policy_reactivated("acme", "p", 1, "carol", content_hash="h1", time=t),
        builtin_relaxed("acme", "default-deny-tls-insecure-on-non-localhost", "carol",
                        reason="lab tenant", time=t),
    ]
    assert [e["type"] for e in evs] == [
        "Policy.Created", "Policy.Approved", "Policy.Activated", "Policy.Retired",
        "Policy.Reactivated", "Tenant.BuiltinRelaxed"]
    assert evs[2]["content_hash"] == "h1"
    assert all(e["time"] == "2024-05-01T12:00:00.000000Z" and e["tenant"] == "acme"
               for e in evs)


def test_to_jsonable_round_trips() -> None:
    value = {"t": dt.datetime(2024, 1, 1), "b": b"\x00\x01", "s": {3, 1}, "n": float("nan"),
             "td": dt.timedelta(seconds=90), 1: (1, 2)}
    out = to_jsonable(value)
    assert json.loads(canonical(out)) == out
    assert out["1"] == [1, 2] and out["b"] == "base64:AAE=" and out["td"] == 90.0


REQ = {"config": {"exporters": {
    "otlp": {"headers": {"authorization": "Bearer a", "x": "1"}, "endpoint": "h:1"},
    "prom": {"headers": {"authorization": "Bearer b"}}}},
    "list": [{"token": "t1"}, {"token": "t2", "keep": True}]}


def test_mask_hash_mode_wildcards_and_input_untouched() -> None:
    m = Masker(["request.config.exporters.*.headers.authorization", "list.*.token"], "hash")
    before = json.dumps(REQ, sort_keys=True)
    out = m.apply({"type": "Decision", "request": REQ})
    assert json.dumps(REQ, sort_keys=True) == before
    ex = out["request"]["config"]["exporters"]
    assert ex["otlp"]["headers"]["authorization"] == m.digest("Bearer a")
    assert ex["otlp"]["headers"]["authorization"].startswith("sha256:")
    assert ex["otlp"]["headers"]["x"] == "1" and ex["otlp"]["endpoint"] == "h:1"
    assert ex["prom"]["headers"]["authorization"] == m.digest("Bearer b")
    assert out["request"]["list"][1] == {"token": m.digest("t2"), "keep": True}


def test_mask_remove_mode_and_indexes() -> None:
    m = Masker(["config.exporters.otlp.headers", "list.0"], "remove")
    out = m.mask_value(REQ)
    assert "headers" not in out["config"]["exporters"]["otlp"]
    assert out["config"]["exporters"]["prom"]["headers"]["authorization"] == "Bearer b"
    assert out["list"] == [None, {"token": "t2", "keep": True}]


def test_mask_hmac() -> None:
    m = Masker(["a"], "hash", hmac_key=b"k")
    assert m.mask_value({"a": "x"})["a"].startswith("hmac-sha256:")
    assert m.mask_value({"a": "x"}) != Masker(["a"], "hash", hmac_key=b"k2").mask_value({"a": "x"})


def test_mask_bad_settings() -> None:
    with pytest.raises(ValueError):
        Masker(["a..b"])
    with pytest.raises(ValueError):
        Masker(["a"], "drop")  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=3), kids,
                                                               max_size=4),
    max_leaves=20)


@given(json_values, st.sampled_from(["remove", "hash"]))
def test_mask_everything_leaves_no_leaf(value: Any, mode: str) -> None:
    m = Masker(["*"], mode)  # type: ignore[arg-type]
    out = m.mask_value(value)
    if isinstance(value, dict):
        assert all(v is None or str(v).startswith("sha256:") for v in out.values()) \
            if mode == "hash" else out == {}
    elif isinstance(value, list):
        assert len(out) == len(value)
    elif isinstance(value, str):  # a string is parsed as a document; unparseable = masked
        assert out == value or out is None or out.startswith("sha256:")
    else:
        assert out == value


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        AuditSettings(queue_size=0)
    with pytest.raises(ValueError):
        AuditSettings(durability="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown audit settings: nope"):
        AuditSettings.from_mapping({"nope": 1})
    s = AuditSettings.from_mapping({"path": "/x/a.jsonl", "mask_paths": ("a.b",)})
    assert s.mask_paths == ["a.b"] and s.spool_path == "/x/a.jsonl.spool"
    assert s.instance_name.endswith(":/x/a.jsonl")


CONFIG_YAML = """\
receivers:
  otlp: {protocols: {grpc: {}}}
exporters:
  otlphttp:
    endpoint: https://collector.example:4318
    headers:
      authorization: Bearer top-secret
      x-tenant: acme
  debug: {}
"""


def test_mask_inside_yaml_string() -> None:
    m = Masker(["request.config.exporters.*.headers.authorization"], "hash")
    out = m.apply({"type": "Decision", "request": {"config": CONFIG_YAML}})
    text = out["request"]["config"]
    assert isinstance(text, str) and "top-secret" not in text
    import yaml
    doc = yaml.safe_load(text)
    assert doc["exporters"]["otlphttp"]["headers"]["authorization"] == m.digest(
        "Bearer top-secret")
    assert doc["exporters"]["otlphttp"]["headers"]["x-tenant"] == "acme"
    assert doc["receivers"] == {"otlp": {"protocols": {"grpc": {}}}}


def test_yaml_string_without_the_key_is_kept_verbatim() -> None:
    m = Masker(["config.exporters.*.headers.authorization"], "remove")
    cfg = CONFIG_YAML.replace("authorization: Bearer top-secret\n      ", "")
    assert m.mask_value({"config": cfg})["config"] == cfg
    # Key text present but not at the path: parsed, nothing masked, still verbatim.
    cfg2 = "authorization: at-top-level\n"
    assert m.mask_value({"config": cfg2})["config"] == cfg2


def test_unparseable_or_bomb_document_is_masked_whole() -> None:
    m = Masker(["config.exporters.*.headers.authorization"], "remove")
    bad = "exporters: {otlp: {headers: {authorization: secret}\n  - ["
    assert "config" not in m.mask_value({"config": bad})
    lol = ["a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lol.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = "\n".join(lol) + "\nexporters: {x: {headers: {authorization: s}}, y: *i}\n"
    hm = Masker(["config.*.*.*.*.*.*.*"], "hash")
    out = hm.mask_value({"config": bomb})["config"]
    assert out.startswith("sha256:")  # too big to walk: masked whole, quickly
    assert "authorization: s" not in str(m.mask_value({"config": bomb}))
