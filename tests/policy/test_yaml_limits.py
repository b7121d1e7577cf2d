"""Policy YAML is bounded while it is built: values after alias expansion, nesting depth and
integer length, each refused with the line:column where the limit was crossed (never a hang,
a RecursionError or Python's own int-conversion text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp.authoring.lint import lint_paths
from pdp.policy import yamlpos
from pdp.policy.loader import load_text
from pdp.policy.model import PolicyError
from pdp.policy.yamlpos import MAX_DEPTH, MAX_INT_DIGITS, MAX_VALUES, load_documents

HEAD = "tenant: acme\nname: yf\nrule: {cel: {deny: 'false'}}\n"

# ~400 bytes that expand to 10^8 values ("billion laughs").
BOMB = ("a: &l0 [x,x,x,x,x,x,x,x,x,x]\n"
        + "".join(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]\n"
                  for i in range(1, 8))
        + "tenant: acme\nname: b\nrule: {cel: {deny: 'false'}}\n")


def refused(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as err:
        load_text(text, "p.yaml")
    return err.value


def test_alias_bomb_stops_at_the_alias_that_crosses_the_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object) -> None:  # the values are expanded only within the limits
        raise AssertionError("expanded a document over the limit")

    monkeypatch.setattr(yamlpos, "_expand", never)
    err = refused(BOMB)
    assert err.problem == (f"policy YAML: more than {MAX_VALUES} values after alias expansion"
                           " (aliases expand)")
    # l0..l2 hold 1 111 values with the aliases expanded; l3 (line 4) crosses 10 000.
    assert (err.line, err.source) == (4, "p.yaml")
    assert err.column > 1
    assert err.field_path.startswith("l3[")
    assert str(err).startswith(f"p.yaml:4:{err.column}: l3[")


def test_a_document_within_the_count_loads() -> None:
    items = ", ".join(["x"] * (MAX_VALUES - 100))
    doc = load_documents(f"{HEAD}description: [{items}]\n")[0]
    assert len(doc.value["description"]) == MAX_VALUES - 100
    assert doc.where(("description", 5)) == (4, 15 + 3 * 5)


def test_many_plain_values_over_the_count_are_refused() -> None:
    items = ", ".join(["x"] * MAX_VALUES)
    err = refused(f"{HEAD}description: [{items}]\n")
    assert "more than 10000 values" in err.problem
    assert err.line == 4


@pytest.mark.parametrize("text, path", [
    (HEAD + "x: " + "{a: " * 5000 + "1" + "}" * 5000, "x" + ".a" * 63),
    (HEAD + "description: " + "[" * 20000 + "]" * 20000, "description" + "[0]" * 63),
    (HEAD + "x:\n" + "".join(" " * i + "- \n" for i in range(0, 400, 2)), "x" + "[0]" * 63),
])
def test_deep_nesting_is_a_policy_error_not_a_recursion_error(text: str, path: str) -> None:
    err = refused(text)
    assert err.problem == f"policy YAML: nesting deeper than {MAX_DEPTH} levels"
    assert err.line >= 4 and err.column >= 1
    # The path to the place, as far as the parser got: libyaml (PyYAML >= 6.0.4) reads a
    # deep flow collection ahead and stops at its own limit before pdp sees the events.
    top = path.split("[")[0].split(".")[0]
    assert path.startswith(err.field_path) and len(err.field_path) > len(top)


def test_nesting_at_the_limit_loads() -> None:
    deepest = "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1)  # the document is level 1
    doc = load_documents(f"{HEAD}description: {deepest}\n")[0]
    v = doc.value["description"]
    for _ in range(MAX_DEPTH - 2):
        v = v[0]
    assert v == [1]


def test_nesting_counts_after_alias_expansion() -> None:
    text = ("a: &a " + "[" * 40 + "]" * 40 + "\n"
            + "b: " + "[" * 30 + "*a" + "]" * 30 + "\n" + HEAD)
    err = refused(text)
    assert err.problem.startswith(f"policy YAML: nesting deeper than {MAX_DEPTH} levels")
    assert (err.line, err.column) == (2, 34)


def test_an_alias_inside_its_own_anchor_is_invalid_yaml() -> None:
    err = refused(HEAD + "x: &a [1, *a]\n")
    assert (err.line, err.column) == (4, 11)
    assert "cycle" in err.problem


@pytest.mark.parametrize("spelling, digits", [
    ("7" * 5000, 5000), ("-" + "1_0" * 40, 80), ("0x" + "f" * 65, 65), ("1" + ":30" * 40, 81),
])
def test_an_integer_too_long_names_its_place(spelling: str, digits: int) -> None:
    err = refused(HEAD + f"version: {spelling}\n")
    assert err.problem == (f"policy YAML: integer too long: {digits} digits"
                           f" (at most {MAX_INT_DIGITS})")
    assert (err.line, err.column, err.field_path) == (4, 10, "version")
    assert "set_int_max_str_digits" not in str(err)


def test_explicitly_tagged_long_integer_too() -> None:
    err = refused(HEAD + "version: !!int " + "9" * 5000 + "\n")
    assert "integer too long: 5000 digits" in err.problem


def test_the_longest_int64_spellings_load() -> None:
    doc = load_documents("a: 0b" + "1" * 64 + "\nb: -9223372036854775808\n")[0]
    assert doc.value == {"a": (1 << 64) - 1, "b": -(1 << 63)}


def test_a_value_not_fitting_its_tag_is_invalid_yaml_with_a_place() -> None:
    err = refused(HEAD + "version: !!int abc\n")
    assert (err.line, err.column) == (4, 10)
    assert err.problem.startswith("invalid YAML:")


def test_positions_values_and_merges_are_kept() -> None:
    text = ("defaults: &d {enabled: false, description: shared}\n"
            "tenant: acme\n"
            "name: m\n"
            "<<: *d\n"
            "rule:\n"
            "  cel:\n"
            "    deny: 'true'\n")
    doc = load_documents(text)[0]
    assert doc.value["enabled"] is False
    assert list(doc.value)[:2] == ["enabled", "description"]  # merged entries first
    assert doc.where(("enabled",)) == (1, 24)  # where the merged value is written
    assert doc.where(("rule", "cel", "deny")) == (7, 11)
    loc = doc.location(("rule", "cel", "deny"), "f.yaml")
    assert loc is not None and (loc.raw, loc.style) == ("'true'", "'")


def test_a_key_given_again_after_a_merge_is_a_duplicate() -> None:
    err = refused("d: &d {x: 1}\nm:\n  <<: *d\n  x: 2\n")
    assert (err.line, err.column) == (4, 3)
    assert "duplicate key 'x'" in err.problem


def test_lint_reports_the_bomb_at_its_line(tmp_path: Path) -> None:
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB, encoding="utf-8")
    findings = lint_paths([f])
    assert [(x.severity, x.line) for x in findings] == [("error", 4)]
    assert "more than 10000 values after alias expansion" in findings[0].message

