"""Policy YAML: valid documents load; every problem names file, line, column and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp.policy.loader import load_directory, load_text
from pdp.policy.model import CelRule, Checkpoint, PolicyError, Status
from pdp.policy.rules import AllowedHours, CounterSpec

ROOT = Path(__file__).resolve().parents[2]


def test_examples_load() -> None:
    policies = load_directory(ROOT / "examples" / "policies")
    names = {p.name: p for p in policies}
    assert set(names) >= {"no-debug-exporter-in-prod", "small-steps", "daily-push-cap",
                          "require-batch-processor"}
    assert names["require-batch-processor"].status is Status.DRAFT
    assert isinstance(names["no-debug-exporter-in-prod"].rule, CelRule)
    assert names["no-debug-exporter-in-prod"].checkpoints == {Checkpoint.PUSH,
                                                              Checkpoint.AUTO_APPLY}
    cap = names["daily-push-cap"].rule
    assert isinstance(cap, CounterSpec) and cap.max_count == 5000
    assert cap.timezone == "Europe/Berlin"


def test_multi_document_and_defaults() -> None:
    [a, b] = load_text("tenant: t\nname: a\nrule: {allowed_hours: {start_hour: 22,"
                       " end_hour: 6, timezone: Europe/Berlin}}\n---\n"
                       "tenant: t\nname: b\nenabled: false\nrule: {cel: {deny: 'false'}}\n")
    assert isinstance(a.rule, AllowedHours) and a.rule.start_hour == 22
    assert a.enabled and a.status is Status.ACTIVE and not a.checkpoints
    assert not b.enabled
    assert a.content_hash.startswith("sha256:") and a.content_hash != b.content_hash


@pytest.mark.parametrize(("text", "where", "field", "problem"), [
    ("tenant: t\nname: bad name\nrule: {cel: {deny: 'true'}}\n", ":2:7", "name",
     "letters, digits"),
    ("tenant: t\nname: " + "x" * 251 + "\nrule: {cel: {deny: 'true'}}\n", ":2:7", "name",
     "at most 250"),
    ("tenant: t\nname: a\nrule:\n  daily_cap:\n    max_count: ten\n", ":5:16",
     "rule.daily_cap.max_count", "expected an integer"),
    ("tenant: t\nname: a\nrule:\n  blocked_days:\n    days: [funday]\n", ":5:12",
     "rule.blocked_days.days[0]", "unknown weekday"),
    ("tenant: t\nname: a\nrule:\n  blocked_days:\n    days: [monday]\n    timezone: Mars/X\n",
     ":6:15", "rule.blocked_days.timezone", "unknown IANA time zone"),
    ("tenant: t\nname: a\nrule: {cel: {deny: 'true'}, max_step_percent: {max_percent: 5}}\n",
     ":3:7", "rule", "exactly one rule"),
    ("tenant: t\nname: a\nrule: {nope: {}}\n", ":3:14", "rule.nope", "unknown rule kind"),
    ("tenant: t\nname: a\ncheckpoints: [pusher]\nrule: {cel: {deny: 'true'}}\n", ":3:15",
     "checkpoints[0]", "unknown checkpoint"),
    ("tenant: t\nname: a\nmatchh: {}\nrule: {cel: {deny: 'true'}}\n", ":3:9", "matchh",
     "unknown field"),
    ("tenant: t\nname: a\nrule:\n  allowed_hours: {start_hour: 8, end_hour: 8}\n", ":4:44",
     "rule.allowed_hours.end_hour", "must differ"),
    ("tenant: t\nname: a\nrule: {cel: {deny: 'true'}\n", ":", "", "invalid YAML"),
])
def test_errors_name_file_line_and_field(text: str, where: str, field: str,
                                         problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_text(text, "p.yaml")
    msg = str(err.value)
    assert msg.startswith("p.yaml" + where), msg
    assert err.value.field_path == field
    assert problem in msg


def test_duplicate_names_in_a_directory(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("tenant: t\nname: x\nrule: {cel: {deny: 'true'}}\n")
    (tmp_path / "b.yaml").write_text("tenant: t\nname: x\nrule: {cel: {deny: 'false'}}\n")
    with pytest.raises(PolicyError, match="already defined"):
        load_directory(tmp_path)
