"""Backend-specific behaviour: separate processes on one SQLite file, Redis notification and
outages, and a property test of the lifecycle rules."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis.asyncio as aioredis
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
from tests.support.procs import RedisCluster, RedisServer, redis_exe
from tests.support.wait import DEADLINE_S, eventually

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


async def _wait_active(store: PolicyStore, tenant: str, since: int) -> None:
    async for _ in store.watch_revisions(since=since):
        snap = await store.snapshot()
        if tenant in snap.tenants and snap.tenants[tenant].active:
            return
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
        _, err = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
        assert proc.returncode == 0, err.decode()
        await asyncio.wait_for(watcher, DEADLINE_S)  # another process's change is noticed
        assert (await store.get(tenant, "no-debug")).status is Status.ACTIVE
    finally:
        await store.close()


async def test_sqlite_file_removed_while_open_is_unavailable_until_it_is_back(
        tmp_path: Path) -> None:
    """``rm`` of the store's file while pdp has it open: the connection would go on using
    the unlinked file (changes lost at restart, readiness fine). The store answers
    unavailable instead, and opens the file put back at the path."""
    import shutil

    path = tmp_path / "store.db"
    tenant = new_tenant()
    store = SqlitePolicyStore(path)
    try:
        await store.put_draft(tenant, policy_yaml(tenant), "alice", 0)
        rev = await store.revision()
        shutil.copy(path, tmp_path / "backup.db")  # (WAL: the draft may be in the -wal file)
        path.unlink()
        with pytest.raises(StoreUnavailable, match="removed while pdp had it open"):
            await store.revision()
        with pytest.raises(StoreUnavailable):
            await store.put_draft(tenant, policy_yaml(tenant), "bob", 0)
        assert not path.exists()  # no empty store was made in its place
        shutil.copy(tmp_path / "backup.db", path)  # put back: a file of its own
        assert await store.revision() <= rev  # read from the file now at the path
    finally:
        await store.close()


@pytest.mark.parametrize("where", ["redis", "cluster"])
async def test_redis_notification_is_pushed_not_polled(where: str,
                                                       request: pytest.FixtureRequest) -> None:
    """With the poll safety net set to an hour, the PUBLISH alone must wake the watcher (on a
    cluster too, where the watcher's node need not be the one the change was written to)."""
    if where == "redis":
        url = request.getfixturevalue("redis_srv").url
    else:
        url = request.getfixturevalue("redis_cluster").url + "?cluster=true"
    tenant = new_tenant()
    a = RedisPolicyStore.from_url(url)
    b = RedisPolicyStore.from_url(url, poll_interval=3600.0)
    try:
        # No need to wait for b to subscribe: it reads the revision after subscribing, so a
        # change made before that is seen at once, and one made after is published to it.
        rev = await b.revision()
        watcher = asyncio.create_task(_wait_active(b, tenant, rev))
        await a.put_draft(tenant, policy_yaml(tenant), "alice", 0)
        await a.approve(tenant, "no-debug", 1, "bob")
        await a.activate(tenant, "no-debug", 1, "carol")
        await asyncio.wait_for(watcher, DEADLINE_S)  # far below the hour of polling
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
        await eventually(lambda: _subscribed(srv), "the watcher subscribed")
        srv.kill()
        for call in (store.get(tenant, "no-debug"), store.snapshot(),
                     store.approve(tenant, "no-debug", 1, "bob")):
            with pytest.raises(StoreUnavailable) as exc:
                await asyncio.wait_for(call, DEADLINE_S)
            assert isinstance(exc.value, StoreError) and exc.value.grpc_status == "UNAVAILABLE"
        assert not pending.done()  # the watch does not die with the server
        srv.start()  # empty (no persistence): the revision restarts from 0, and that is news
        other = RedisPolicyStore.from_url(srv.url)
        await other.put_draft(tenant, policy_yaml(tenant), "alice", 0)
        await other.approve(tenant, "no-debug", 1, "bob")  # revision 2 (was 1 before)
        assert await asyncio.wait_for(pending, DEADLINE_S) == await other.revision()
        await other.close()
        await it.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
        srv.close()


def _subscribed(srv: RedisServer) -> bool:
    """Someone listens on the change channel of ``srv`` (asked with redis-cli)."""
    out = subprocess.run([redis_exe("redis-cli"), "-p", str(srv.port), "pubsub", "numsub",
                          "pdp:policy:changes"], capture_output=True, text=True, timeout=30)
    return out.stdout.split()[-1:] not in ([], ["0"])


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


async def test_cluster_store_lives_in_one_slot(redis_cluster: RedisCluster) -> None:
    """Every key a change writes carries the one hash tag: a cluster can run its MULTI/EXEC
    (and a tenant's keys never straddle two masters)."""
    tenant = new_tenant()
    store = RedisPolicyStore.from_url(redis_cluster.url, cluster=True)
    try:
        await store.put_draft(tenant, policy_yaml(tenant), "alice", 0)
        await store.create_tenant(new_tenant(), "carol", reason="onboarding")
        found: dict[int, list[str]] = {}
        for node in redis_cluster.nodes:
            async with aioredis.Redis.from_url(node.url, decode_responses=True) as r:
                keys = [k for k in await r.keys("*") if "policy" in k]
                if keys:
                    found[node.port] = keys
        [keys] = found.values()  # one master holds them all
        assert all(k.startswith("pdp:{pdp-policies}:policy") for k in keys), keys
        assert any(tenant in k for k in keys)
    finally:
        await store.close()


def test_cluster_flag_of_the_store_url() -> None:
    from pdp.policy.store.redis_store import split_cluster_flag

    assert split_cluster_flag("redis://h:7000/0") == ("redis://h:7000/0", None)
    assert split_cluster_flag("redis://h:7000/0?cluster=true") == ("redis://h:7000/0", True)
    assert split_cluster_flag("rediss://u:p@h:7000/0?ssl_cert_reqs=none&cluster=no") == (
        "rediss://u:p@h:7000/0?ssl_cert_reqs=none", False)


async def test_sqlite_write_behind_a_lock_held_elsewhere_fails_soon_and_clearly(
        tmp_path: Path) -> None:
    """Another process holding the file's write lock: a change fails as StoreUnavailable
    ('database is locked') after a short wait (LOCK_WAIT_S), not after 10 s with the only
    worker thread, and the reachability probe behind it, stuck that long; reads go on."""
    import sqlite3

    from pdp.policy.store import StoreUnavailable
    from pdp.policy.store.sqlite_store import LOCK_WAIT_S

    assert LOCK_WAIT_S <= 1.0
    path = tmp_path / "locked.db"
    tenant = new_tenant()
    store = SqlitePolicyStore(path)
    try:
        rev = await store.revision()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock, as `sqlite3 file 'BEGIN ...'`
        try:
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.put_draft(tenant, policy_yaml(tenant, "p"), "alice", 0)
            assert await store.revision() == rev  # a read is not blocked (WAL)
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.put_draft(tenant, policy_yaml(tenant, "p"), "alice", 0)  # free again
    finally:
        await store.close()
