"""ValidatePolicy / PutDraft on the real server take one policy per call: a second policy is
refused where it starts, a text of many empty documents at the first one past the call's
count (nothing stored either way); explicit non-JSON YAML tags are refused at the tag without
a Python repr; a counter scope expression's error points into the expression."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from pdp.server.admin import MAX_CALL_DOCUMENTS
from pdp.v1 import admin_pb2 as apb
from tests.server.test_admin_policy_limits import Admin, admin_server

POLICY = "tenant: acme\nname: docs\nrule: {cel: {deny: 'agent.id == \"x\"'}}\n"
OTHER = POLICY.replace("name: docs", "name: other")
SCOPE = ("tenant: acme\nname: cap\nrule:\n  daily_cap:\n    max_count: 3\n    scope:\n"
         "      expression: 'agent.labels[\"x\"] +'\n")


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    with admin_server(tmp_path_factory.mktemp("documents")) as a:
        yield a


def refused_both_ways(admin: Admin, text: str) -> tuple[apb.PolicyProblem, str]:
    answer = admin.validate(text)
    assert not answer.valid
    [p] = answer.problems
    err = admin.put_error(text)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    return p, err.details() or ""


@pytest.mark.parametrize("text", ["---\n" * 65517 + POLICY, "--- ~\n" * 43000],
                         ids=["empty-documents", "null-documents"])
def test_many_empty_documents_are_refused_at_the_first_one_too_many(admin: Admin,
                                                                    text: str) -> None:
    p, details = refused_both_ways(admin, text)
    line = MAX_CALL_DOCUMENTS + 1
    expected = (f"<request>:{line}:1: one policy per call: more than {MAX_CALL_DOCUMENTS}"
                " YAML documents (empty ones count)")
    assert (p.line, p.column) == (line, 1)
    assert p.message == expected
    assert details == expected
    assert not admin.stored("docs")


def test_a_second_policy_is_refused_and_nothing_is_stored(admin: Admin) -> None:
    p, details = refused_both_ways(admin, POLICY + "---\n" + OTHER)
    assert (p.line, p.column) == (5, 1)
    assert p.message.startswith("<request>:5:1: one policy per call: found a second document"
                                " at line 5")
    assert details.startswith("<request>:5:1: one policy per call: found a second document")
    assert not admin.stored("docs") and not admin.stored("other")


def test_one_policy_among_empty_documents_is_taken(admin: Admin) -> None:
    text = "--- ~\n---\n" + POLICY + "...\n"
    assert admin.validate(text).valid
    rec = admin.stub.PutDraft(apb.PutDraftRequest(yaml=text), timeout=10,
                              metadata=admin.md).policy
    assert (rec.name, rec.meta.version) == ("docs", 1)
    assert rec.yaml == text  # the author's text is what is stored


@pytest.mark.parametrize("value, tag", [
    ("!!timestamp 2001-12-14t21:59:43.10-05:00", "!!timestamp"),
    ("!!binary eTI=", "!!binary"),
])
def test_non_json_tags_are_refused_at_the_tag_without_a_repr(admin: Admin, value: str,
                                                            tag: str) -> None:
    p, details = refused_both_ways(admin, POLICY.replace("docs", "tagged")
                                   + f"description: {value}\n")
    expected = (f"<request>:4:14: description: YAML tag {tag} is not supported in a policy:"
                " write a quoted string")
    assert (p.line, p.column, p.field) == (4, 14, "description")
    assert p.message == expected and details == expected
    assert not admin.stored("tagged")


def test_a_scope_expression_error_points_into_the_expression(admin: Admin) -> None:
    p, details = refused_both_ways(admin, SCOPE)
    assert (p.line, p.column, p.field) == (7, 39, "rule.daily_cap.scope.expression")
    assert p.message.startswith("<request>:7:39: rule.daily_cap.scope.expression: Syntax error")
    assert details.startswith("acme/<draft>:7:39: rule.daily_cap.scope.expression: Syntax")
    for text in (p.message, details):
        assert "<input>" not in text and "ERROR:" not in text
    assert admin.validate(SCOPE.replace(" +'", "'")).valid
