"""Backend-specific behaviour: separate processes on one SQLite file, Redis notification and
outages, and a property test of the lifecycle rules."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdp.policy.model import Status
from pdp.policy.store import (
    PolicyStore,
    RedisPolicyStore,
    SqlitePolicyStore,
    StoreError,
    StoreUnavailable,
    lifecycle,
)
from pdp.policy.store.records import PolicyRecord
from tests.policy_store.conftest import Backend, new_tenant, policy_yaml
from tests.support.procs import RedisServer

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    from pdp.policy.store import SqlitePolicyStore
    from tests.policy_store.conftest import policy_yaml

    async def main() -> None:
        store = SqlitePolicyStore({path!r})
        t = {tenant!r}
        await store.put_draft(t, policy_yaml(t), "alice", 0)
        await store.approve(t, "no-debug", 1, "bob")
        await store.activate(t, "no-debug", 1, "carol")
        await store.close()

    asyncio.run(main())
""")


async def _wait_active(store: PolicyStore, tenant: str, since: int) -> float:
    async for _ in store.watch_revisions(since=since):
        snap = await store.snapshot()
        if tenant in snap.tenants and snap.tenants[tenant].active:
            return time.monotonic()
    raise AssertionError("watch ended")


async def test_sqlite_two_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    tenant = new_tenant()
    store = SqlitePolicyStore(path)
    try:
        rev = await store.revision()
        watcher = asyncio.create_task(_wait_active(store, tenant, rev))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(path), tenant=tenant),
            stderr=subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        done = time.monotonic()
        seen = await asyncio.wait_for(watcher, 1.0)
        assert seen - done < 1.0
        assert (await store.get(tenant, "no-debug")).status is Status.ACTIVE
    finally:
        await store.close()


async def test_redis_notification_is_pushed_not_polled(redis_srv: RedisServer) -> None:
    """With the poll safety net set to 10 s, the PUBLISH alone must wake the watcher."""
    tenant = new_tenant()
    a = RedisPolicyStore.from_url(redis_srv.url)
    b = RedisPolicyStore.from_url(redis_srv.url, poll_interval=10.0)
    try:
        rev = await b.revision()
        watcher = asyncio.create_task(_wait_active(b, tenant, rev))
        await asyncio.sleep(0.2)  # let b subscribe and settle into its wait
        await a.put_draft(tenant, policy_yaml(tenant), "alice", 0)
        await a.approve(tenant, "no-debug", 1, "bob")
        await asyncio.sleep(0.2)
        await a.activate(tenant, "no-debug", 1, "carol")
        done = time.monotonic()
        seen = await asyncio.wait_for(watcher, 1.0)
        assert seen - done < 1.0
    finally:
        await a.close()
        await b.close()


async def test_redis_outage_fails_clearly_and_watch_recovers() -> None:
    srv = RedisServer().start()
    tenant = new_tenant()
    store = RedisPolicyStore.from_url(srv.url, poll_interval=0.2)
    try:
        await store.put_draft(tenant, policy_yaml(tenant), "alice", 0)
        rev = await store.revision()
        it = store.watch_revisions(since=rev)
        pending = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.3)
        srv.kill()
        for call in (store.get(tenant, "no-debug"), store.snapshot(),
                     store.approve(tenant, "no-debug", 1, "bob")):
            with pytest.raises(StoreUnavailable) as exc:
                await asyncio.wait_for(call, 5)
            assert isinstance(exc.value, StoreError) and exc.value.grpc_status == "UNAVAILABLE"
        assert not pending.done()  # the watch does not die with the server
        srv.start()  # empty (no persistence): the revision restarts from 0, and that is news
        other = RedisPolicyStore.from_url(srv.url)
        await other.put_draft(tenant, policy_yaml(tenant), "alice", 0)
        await other.approve(tenant, "no-debug", 1, "bob")  # revision 2 (was 1 before)
        assert await asyncio.wait_for(pending, 3) == await other.revision()
        await other.close()
        await it.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
        srv.close()


async def test_closed_store_refuses(backend: Backend) -> None:
    store = backend.open()
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get(backend.tenant, "x")


# ---------------------------------------------------------------- lifecycle property test

ACTORS = ["alice", "bob", "carol"]
ops = st.lists(st.tuples(st.sampled_from(["draft", "approve", "activate", "retire",
                                          "reactivate"]),
                         st.integers(min_value=1, max_value=6), st.sampled_from(ACTORS)),
               max_size=40)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_lifecycle_invariants(steps: list[tuple[str, int, str]]) -> None:
    rec = PolicyRecord("t", "p")
    now = 0.0
    for op, version, actor in steps:
        now += 1
        try:
            if op == "draft":
                m = lifecycle.new_draft(rec, "y", f"h{version}", actor, rec.latest_version, now)
            elif op == "approve":
                m = lifecycle.approve(rec, version, actor, now)
            elif op == "activate":
                m = lifecycle.activate(rec, version, actor, now)
            elif op == "retire":
                m = lifecycle.retire(rec, actor, now)
            else:
                m = lifecycle.reactivate(rec, actor, now)
        except StoreError:
            continue
        by_version = {v.version: v for v in rec.versions}
        by_version.update({v.version: v for v in m.versions})
        rec = PolicyRecord("t", "p", tuple(by_version[k] for k in sorted(by_version)),
                           rec.transitions + m.transitions)
        # at most one active version; versions are 1..n; nothing disappears
        assert sum(v.status is Status.ACTIVE for v in rec.versions) <= 1
        assert [v.version for v in rec.versions] == list(range(1, len(rec.versions) + 1))
        # every approved or later version was approved by someone other than its author
        for v in rec.versions:
            if v.status is not Status.DRAFT:
                assert v.approver and not lifecycle.same_person(v.approver, v.author)
        # each version's status is the target of its last transition
        last = {t.version: t.to_status for t in rec.transitions}
        assert all(last[v.version] is v.status for v in rec.versions)
