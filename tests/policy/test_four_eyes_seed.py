"""A policy file may not claim an approval four eyes would refuse: ``approver`` == ``author``
is refused where the YAML is parsed (load, seed, lint), at the approver's line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pdp.authoring.lint import lint_paths
from pdp.policy.loader import load_text
from pdp.policy.model import Policy, PolicyError, Status
from pdp.policy.store import PolicyNotFound, SqlitePolicyStore, seed_from_directory

SELF_APPROVED = """\
tenant: t
name: sneaky
status: active
author: mallory
approver: mallory
rule: {cel: {deny: 'false'}}
"""
PROBLEM = "approver: must differ from author 'mallory' (four-eyes)"


@pytest.mark.parametrize("approver", ["mallory", "Mallory", " MALLORY"])
@pytest.mark.parametrize("status", ["draft", "approved", "active", "retired"])
def test_loader_refuses_author_as_approver(status: str, approver: str) -> None:
    text = SELF_APPROVED.replace("active", status).replace("approver: mallory",
                                                           f"approver: '{approver}'")
    with pytest.raises(PolicyError) as err:
        load_text(text, "p.yaml")
    assert str(err.value) == f"p.yaml:5:11: {PROBLEM}"
    assert (err.value.field_path, err.value.line, err.value.column) == ("approver", 5, 11)


@pytest.mark.parametrize("extra", ["", "author: mallory\n", "approver: bob\n",
                                   "author: mallory\napprover: bob\n"])
def test_loader_accepts_distinct_or_missing_people(extra: str) -> None:
    [p] = load_text(f"tenant: t\nname: a\n{extra}rule: {{cel: {{deny: 'false'}}}}\n")
    assert p.status is Status.ACTIVE


def test_lint_reports_it_at_the_approver(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(SELF_APPROVED)
    [finding] = [x for x in lint_paths([f]) if x.severity == "error"]
    assert (finding.file, finding.line, finding.column) == (str(f), 5, 11)
    assert finding.message == PROBLEM and finding.policy == "sneaky"


async def test_seeding_refuses_it_and_seeds_nothing(tmp_path: Path) -> None:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "a.yaml").write_text("tenant: t\nname: fine\nrule: {cel: {deny: 'false'}}\n")
    (d / "b.yaml").write_text(SELF_APPROVED)
    store = SqlitePolicyStore(tmp_path / "s.sqlite3")
    try:
        with pytest.raises(PolicyError) as err:
            await seed_from_directory(store, d)
        assert str(err.value) == f"{d / 'b.yaml'}:5:11: {PROBLEM}"
        with pytest.raises(PolicyNotFound):
            await store.get("t", "fine")
    finally:
        await store.close()


async def test_seed_policy_refuses_a_self_approval_however_the_policy_was_made(
        tmp_path: Path) -> None:
    """A Policy built in code (not through the parser), and the seeding actor named as one
    of the two with the other left to it: both would record a self-approval."""
    base, other, third = load_text("tenant: t\nname: a\nrule: {cel: {deny: 'false'}}\n---\n"
                                   "tenant: t\nname: b\nrule: {cel: {deny: 'false'}}\n---\n"
                                   "tenant: t\nname: c\nrule: {cel: {deny: 'false'}}\n",
                                   "a.yaml")
    store = SqlitePolicyStore(tmp_path / "s.sqlite3")
    try:
        cases: list[tuple[Policy, str]] = [
            (replace(base, author="mallory", approver="mallory"), "mallory"),
            (replace(base, author="seed"), "seed"),
            (replace(base, approver="seed"), "seed"),
        ]
        for policy, who in cases:
            with pytest.raises(PolicyError) as err:
                await store.seed_policy(policy, "seed")
            assert err.value.field_path == "approver"
            assert f"must differ from author {who!r} (four-eyes)" in str(err.value)
            assert str(err.value).startswith("a.yaml:1: ")
        # A draft records no approval: its author may be anyone.
        draft = replace(base, status=Status.DRAFT, author="seed")
        stored = await store.seed_policy(draft, "seed")
        assert stored is not None and stored.status is Status.DRAFT
        # Neither given: the seeding actor, as documented (the directory is reviewed where
        # it is kept); distinct people are recorded as given.
        both = replace(other, author="dana", approver="erin")
        stored = await store.seed_policy(both, "seed")
        assert stored is not None and (stored.author, stored.approver) == ("dana", "erin")
        plain = third
        stored = await store.seed_policy(plain, "seed")
        assert stored is not None and (stored.author, stored.approver) == ("seed", "seed")
    finally:
        await store.close()


@pytest.mark.parametrize("approver", [
    "alice\u200b",       # a zero-width space: looks the same in every list
    "\uff41lice",        # a full-width a
    "ALICE",
    " alice\t",
    "ali\u00adce",       # a soft hyphen
])
def test_an_identity_that_looks_like_the_authors_is_the_same_person(approver: str) -> None:
    from pdp.policy.model import same_person

    assert same_person("alice", approver)


def test_different_people_stay_different() -> None:
    from pdp.policy.model import same_person

    assert not same_person("alice", "alicia")
    assert not same_person("José", "Jose")
