"""Seeding a store that already holds the directory's policies validates nothing again."""

from __future__ import annotations

from pathlib import Path

from pdp.policy.model import Policy
from pdp.policy.store import SqlitePolicyStore, seed_from_directory


async def test_reseeding_skips_known_policies_without_validating(tmp_path: Path) -> None:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "p.yaml").write_text("tenant: t\nname: a\nrule: {cel: {deny: 'false'}}\n---\n"
                              "tenant: t\nname: b\nrule: {max_step_percent: {max_percent: 5}}\n")
    checked: list[str] = []

    def validate(policy: Policy) -> object:
        checked.append(policy.name)
        return None

    store = SqlitePolicyStore(tmp_path / "s.sqlite3", validate=validate)
    try:
        first = await seed_from_directory(store, d)
        assert sorted(n for _, n in first.created) == ["a", "b"]
        checked.clear()
        again = await seed_from_directory(store, d)
        assert not again.created and sorted(n for _, n in again.skipped) == ["a", "b"]
        assert checked == []
    finally:
        await store.close()


async def test_a_file_edited_since_seeding_is_reported_not_applied(tmp_path: Path) -> None:
    """The store is the source of truth: a restart does not apply an edited file. It says
    so (``differs``, logged at start-up) instead of letting the edit pass for applied."""
    d = tmp_path / "policies"
    d.mkdir()
    (d / "p.yaml").write_text("tenant: t\nname: a\nrule: {cel: {deny: 'false'}}\n---\n"
                              "tenant: t\nname: b\nrule: {max_step_percent: {max_percent: 5}}\n")
    store = SqlitePolicyStore(tmp_path / "s.sqlite3")
    try:
        await seed_from_directory(store, d)
        (d / "p.yaml").write_text(
            "tenant: t\nname: a\nrule: {cel: {deny: 'true'}}\n---\n"
            "tenant: t\nname: b\nrule: {max_step_percent: {max_percent: 5}}\n")
        again = await seed_from_directory(store, d)
        assert [(t, n, v) for t, n, _, v in again.differs] == [("t", "a", 1)]
        assert again.differs[0][2].endswith("p.yaml:1")
        assert (await store.get("t", "a")).version == 1  # not applied
    finally:
        await store.close()
