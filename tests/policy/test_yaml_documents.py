"""Policy texts are bounded as a whole, not only per document: documents per text (empty ones
count), values of all documents together, one policy per admin text (stopping at the second);
the values-limit text mentions aliases only when one was expanded; explicit YAML tags for
values JSON does not have are refused at the tag (no Python repr in an error); and a counter
scope expression's compile error points into the expression, as a CEL rule's does."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pdp.cel import ProgramCache, new_pdp_environment
from pdp.policy.compiled import compile_policy
from pdp.policy.loader import load_text
from pdp.policy.model import PolicyError
from pdp.policy.rules import FreezeWindows
from pdp.policy.yamlpos import MAX_DOCUMENTS, MAX_TOTAL_VALUES, MAX_VALUES, load_documents

POLICY = "tenant: acme\nname: a\nrule: {cel: {deny: 'false'}}\n"
CALL_DOCUMENTS = 16  # pdp.server.admin.MAX_CALL_DOCUMENTS


def refused(text: str, **kw: object) -> PolicyError:
    with pytest.raises(PolicyError) as err:
        load_text(text, "p.yaml", **kw)  # type: ignore[arg-type]
    return err.value


def one(text: str) -> PolicyError:
    return refused(text, max_documents=CALL_DOCUMENTS, one_policy=True)


# -- documents per text ------------------------------------------------------------------------

def test_a_file_of_too_many_empty_documents_stops_at_the_first_one_too_many() -> None:
    err = refused("---\n" * 65517 + POLICY)
    assert err.problem == (f"policy YAML: more than {MAX_DOCUMENTS} YAML documents in one file"
                           " (empty ones count)")
    assert (err.source, err.line, err.column) == ("p.yaml", MAX_DOCUMENTS + 1, 1)


def test_null_documents_count_too() -> None:
    err = refused("--- ~\n" * 43000)
    assert (err.line, err.column) == (MAX_DOCUMENTS + 1, 1)
    assert "YAML documents" in err.problem


def test_a_file_at_the_document_count_loads() -> None:
    text = "".join(f"---\ntenant: acme\nname: p{i}\nrule: {{cel: {{deny: 'false'}}}}\n"
                   for i in range(MAX_DOCUMENTS))
    assert len(load_text(text, "p.yaml")) == MAX_DOCUMENTS


def test_values_of_all_documents_together_are_bounded() -> None:
    doc = POLICY + "description: [" + ", ".join(["x"] * (MAX_VALUES - 100)) + "]\n"
    per_doc = MAX_VALUES - 100 + 12  # the policy's own 11 values and the list
    docs_needed = MAX_TOTAL_VALUES // per_doc + 1  # the document that crosses the total
    err = refused("---\n".join([doc] * (docs_needed + 3)))
    assert err.problem == (f"policy YAML: more than {MAX_TOTAL_VALUES} values in all the"
                           " documents of one file")
    # each document is 4 lines and a "---": the crossing one's list is on its line 4
    assert err.line == 5 * (docs_needed - 1) + 4
    assert err.field_path.startswith("description[")
    # within the total, the same documents load
    docs = load_documents("---\n".join([doc] * (docs_needed - 1)))
    assert len(docs) == docs_needed - 1


# -- one policy per admin text -----------------------------------------------------------------

def test_a_second_policy_is_refused_where_it_starts_before_it_is_read() -> None:
    # what follows the second document's first line is never read: its bad YAML is no error
    text = POLICY + "---\n\ntenant: acme\nname: b\nrule: [unclosed\n"
    err = one(text)
    assert err.problem.startswith("one policy per call: found a second document at line 6")
    assert (err.line, err.column) == (6, 1)
    assert "policy YAML" not in err.problem


def test_a_second_document_of_any_kind_counts_as_a_policy() -> None:
    err = one(POLICY + "--- just a string\n")
    assert err.problem.startswith("one policy per call: found a second document at line 4")
    assert (err.line, err.column) == (4, 5)
    err = one("--- ~\n---\n" + POLICY + "--- [1]\n")
    assert err.problem == ("one policy per call: found a second document at line 6"
                           " (the first is at line 3)")


def test_empty_documents_around_the_policy_are_fine_up_to_the_call_count() -> None:
    [p] = load_text("--- ~\n---\n" + "---\n" + POLICY + "...\n---\n", "r",
                    max_documents=CALL_DOCUMENTS, one_policy=True)
    assert p.name == "a"
    text = "---\n" * (CALL_DOCUMENTS - 1) + "---\n" + POLICY  # 16 documents
    assert len(load_text(text, "r", max_documents=CALL_DOCUMENTS, one_policy=True)) == 1


@pytest.mark.parametrize("text", ["---\n" * 65517 + POLICY, "--- ~\n" * 43000],
                         ids=["empty", "null"])
def test_a_call_text_of_many_empty_documents_is_refused_at_the_first_one_too_many(
        text: str) -> None:
    err = one(text)
    assert err.problem == (f"one policy per call: more than {CALL_DOCUMENTS} YAML documents"
                           " (empty ones count)")
    assert (err.line, err.column) == (CALL_DOCUMENTS + 1, 1)


# -- the values-limit text -----------------------------------------------------------------------

def test_plain_values_over_the_count_do_not_mention_aliases() -> None:
    err = refused(POLICY + "description: [" + ", ".join(["x"] * MAX_VALUES) + "]\n")
    assert err.problem == f"policy YAML: more than {MAX_VALUES} values"


def test_expanded_aliases_are_mentioned() -> None:
    text = ("a: &a [" + ", ".join(["x"] * 3000) + "]\n"
            "b: [*a, *a, *a, *a]\n" + POLICY)
    err = refused(text)
    assert err.problem == (f"policy YAML: more than {MAX_VALUES} values after alias"
                           " expansion (aliases expand)")
    assert err.line == 2


# -- tags ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, tag, instead", [
    ("!!timestamp 2001-12-14t21:59:43.10-05:00", "!!timestamp", "write a quoted string"),
    ("!!timestamp 2001-12-14", "!!timestamp", "write a quoted string"),
    ("!!binary eTI=", "!!binary", "write a quoted string"),
    ("!!set {a, b}", "!!set", "write a list"),
    ("!!omap [{a: 1}, {b: 2}]", "!!omap", "write a mapping"),
    ("!!pairs [{a: 1}, {a: 2}]", "!!pairs", "write a list of mappings"),
    ("!!timestamp", "!!timestamp", "write a quoted string"),
])
def test_tags_of_non_json_values_are_refused_at_the_tag(value: str, tag: str,
                                                        instead: str) -> None:
    err = refused(POLICY + f"description: {value}\n")
    assert err.problem.startswith(f"YAML tag {tag} is not supported in a policy: {instead}")
    assert (err.line, err.column, err.field_path) == (4, 14, "description")
    for leak in ("datetime", "b'", "{'a'", "set("):
        assert leak not in str(err)


def test_a_refused_tag_in_a_key_or_nested_is_refused_too() -> None:
    err = refused(POLICY + "x:\n  - {!!binary eTI=: 1}\n")
    assert (err.line, err.column) == (5, 6)
    assert err.problem.startswith("YAML tag !!binary")
    err = refused(POLICY + "x: [1, !!set {a}]\n")
    assert (err.line, err.column, err.field_path) == (4, 8, "x[1]")


def test_a_local_tag_on_a_collection_is_refused_not_ignored() -> None:
    err = refused(POLICY + "description: !thing {a: 1}\n")
    assert err.problem == "YAML tag !thing is not supported in a policy"
    assert (err.line, err.column) == (4, 14)


def test_json_tags_still_load() -> None:
    [doc] = load_documents(POLICY + "x: !!map {a: !!str 1, b: !!seq [!!int '2', !!float 3,"
                           " !!bool true, !!null '']}\ny: ! {c: 1}\n")
    assert doc.value["x"] == {"a": "1", "b": [2, 3.0, True, None]}
    assert doc.value["y"] == {"c": 1}


def test_unquoted_freeze_window_timestamps_still_load() -> None:
    text = ("tenant: acme\nname: f\nrule:\n  freeze_windows:\n    windows:\n"
            "      - {start: 2026-12-20T00:00:00Z, end: 2026-12-27T00:00:00Z, reason: x}\n"
            "      - {start: '2027-01-01T00:00:00Z', end: \"2027-01-02T00:00:00+01:00\"}\n")
    [p] = load_text(text, "f.yaml")
    assert isinstance(p.rule, FreezeWindows)
    start, end, _ = p.rule.windows[0]
    assert start == datetime(2026, 12, 20, tzinfo=UTC)
    assert end == datetime(2026, 12, 27, tzinfo=UTC)
    assert len(p.rule.windows) == 2


# -- counter scope expressions -------------------------------------------------------------------

SCOPE = "tenant: acme\nname: c\nrule:\n  daily_cap:\n    max_count: 3\n    scope:\n"


@pytest.mark.parametrize("expression, line, column", [
    ("      expression: 'agent.labels[\"x\"] +'\n", 7, 39),
    ("      expression: agent.labels[\"x\"] + )\n", 7, 39),
    ("      expression: |\n        agent.labels[\"x\"]\n          + )\n", 9, 13),
    ("      expression: >\n        agent.id +\n        nope(\n", 9, 14),
], ids=["single-quoted", "plain", "literal", "folded"])
def test_a_scope_expression_error_points_into_the_expression(expression: str, line: int,
                                                             column: int) -> None:
    [p] = load_text(SCOPE + expression, "policies/c.yaml")
    with pytest.raises(PolicyError) as err:
        compile_policy(p, new_pdp_environment(), ProgramCache(10))
    e = err.value
    assert (e.source, e.line, e.column) == ("policies/c.yaml", line, column), str(e)
    assert e.field_path == "rule.daily_cap.scope.expression"
    assert "<input>" not in str(e) and "ERROR:" not in str(e)
    assert "\n | " in e.problem and e.problem.rstrip().endswith("^")


def test_a_valid_scope_expression_compiles() -> None:
    [p] = load_text(SCOPE + "      expression: 'agent.labels[\"x\"]'\n", "c.yaml")
    compiled = compile_policy(p, new_pdp_environment(), ProgramCache(10))
    assert compiled.scope_program is not None
    assert p.rule.locations  # recorded, and no part of the rule's equality
    [again] = load_text("\n" + SCOPE + "      expression: 'agent.labels[\"x\"]'\n", "c.yaml")
    assert again.rule == p.rule


def test_an_unquoted_date_or_time_stays_the_text_written() -> None:
    """YAML reads an unquoted 2001-12-14 as a date (and a time as a datetime, taking offsets
    like +05:99 as +06:39): policies keep them as written, and a time is read strictly
    where one is due (freeze windows)."""
    from pdp.policy.loader import load_text
    from pdp.policy.model import PolicyError

    [p] = load_text("tenant: t\nname: p\ndescription: 2001-12-14\nrule: {cel: {deny: 'false'}}\n")
    assert p.description == "2001-12-14"
    freeze = ("tenant: t\nname: f\nrule:\n  freeze_windows:\n    windows:\n"
              "      - {{start: {start}, end: 2026-12-31T00:00:00Z}}\n")
    [ok] = load_text(freeze.format(start="2026-12-20T00:00:00+01:00"))
    assert "2026-12-20T00:00:00+01:00" in str(ok.spec)
    for bad in ("2026-12-20T00:00:00+05:99", "2026-12-20T00:00:00+05:30:10"):
        with pytest.raises(PolicyError) as info:
            load_text(freeze.format(start=bad))
        assert info.value.field_path == "rule.freeze_windows.windows[0].start", bad
