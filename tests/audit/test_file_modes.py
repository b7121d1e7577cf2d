"""What pdp writes about every tenant's decisions and policies is not readable by every
local user: the audit ledger, its lock, anchors and spool are 0640 (a log shipper in pdp's
group reads them), the SQLite policy store 0600 (it may hold literal notify secrets).
Before, they were created 0644."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pdp.audit.sinks.file import Ledger
from pdp.audit.spool import Spool
from pdp.policy.store.sqlite_store import SqlitePolicyStore


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The modes pdp asks for, not what a stricter umask would leave of them."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_audit_ledger_its_lock_and_the_spool_are_not_world_readable(
        tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    path.parent.mkdir()
    ledger = Ledger(path, 1 << 20)
    ledger.open()
    try:
        ledger.append([{"type": "Test", "i": 1}], fsync=True)
    finally:
        ledger.close()
    written = [p for p in path.parent.iterdir() if p.is_file()]
    assert path in written and len(written) >= 2  # the ledger and its lock at least
    assert {p.name: mode(p) for p in written} == {p.name: 0o640 for p in written}
    spool = Spool(tmp_path / "s.spool")
    spool.append([b'{"a": 1}'])
    assert mode(tmp_path / "s.spool") == 0o640


async def test_the_sqlite_policy_store_is_owner_only(tmp_path: Path) -> None:
    store = SqlitePolicyStore(tmp_path / "s.sqlite3")
    try:
        await store.put_draft("t", "tenant: t\nname: p\nrule: {cel: {deny: 'false'}}\n",
                              "alice", 0)
    finally:
        await store.close()
    files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("s.sqlite3"))
    assert files and {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
