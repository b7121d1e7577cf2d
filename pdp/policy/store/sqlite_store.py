"""SQLite policy store: the embedded default (one file, no setup).

All SQLite work runs on one worker thread with one connection (WAL mode, ``busy_timeout``), so
the event loop never blocks on disk. Every change is one ``BEGIN IMMEDIATE`` transaction that
reads the policy's rows, applies the lifecycle rule, writes, and bumps the ``revision`` row;
an error rolls it back, so nothing is half-written. Several processes may share the file:
``BEGIN IMMEDIATE`` serializes their writers, and ``watch_revisions`` polls the revision row
(a one-row primary-key read, every 0.2 s) so each sees the others' changes well within a
second. Changes made through this instance wake its watchers at once.

Tables (records stored as the same JSON both backends use)::

    meta(key, value)                       -- 'revision', 'schema'
    tenants(tenant)
    versions(tenant, name, version, status, data)
    transitions(id, tenant, name, data)    -- append-only, id orders them
    relaxed(tenant, builtin)
    relax_requests(tenant, builtin, data)  -- pending relax requests (RelaxRequest JSON)
    tenant_info(tenant, data)              -- tenants created by an admin (TenantInfo JSON)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from pdp.policy.store.base import BuiltinFn, MutateFn, PolicyStore, TenantState
from pdp.policy.store.errors import StoreUnavailable
from pdp.policy.store.records import (
    BuiltinChange,
    Mutation,
    PolicyRecord,
    RelaxRequest,
    TenantInfo,
    Transition,
    VersionRecord,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0), ('schema', 1);
CREATE TABLE IF NOT EXISTS tenants (tenant TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS versions (
    tenant TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
    status TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (tenant, name, version)
);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_name ON transitions (tenant, name, id);
CREATE TABLE IF NOT EXISTS relaxed (
    tenant TEXT NOT NULL, builtin TEXT NOT NULL, PRIMARY KEY (tenant, builtin)
);
CREATE TABLE IF NOT EXISTS relax_requests (
    tenant TEXT NOT NULL, builtin TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (tenant, builtin)
);
CREATE TABLE IF NOT EXISTS tenant_info (tenant TEXT PRIMARY KEY, data TEXT NOT NULL);
"""

POLL_INTERVAL = 0.2

log = structlog.get_logger("pdp.policy")



#: How long a write waits for another writer's lock before failing ("database is locked").
#: Writers here hold it for milliseconds; a longer wait means something else holds the file.
#: The one worker thread is busy while it waits, and the store's reachability probe (2 s)
#: and every other call queue behind it: 10 s made a lock held from outside look like an
#: outage (decisions denied once stale), and outlasted the CLI's 5 s timeout.
LOCK_WAIT_S = 1.0

class SqlitePolicyStore(PolicyStore):
    def __init__(self, path: str | Path, *, poll_interval: float = POLL_INTERVAL,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = str(path)
        self.poll_interval = poll_interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdp-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._ident: tuple[int, int] | None = None  # the open database file (dev, inode)
        self._closed = False
        self._waiters: set[asyncio.Event] = set()

    # ------------------------------------------------------------------ plumbing

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # Owner-only when pdp creates it (SQLite gives its -wal/-shm files the same
            # mode): it holds every tenant's policies, literal notify secrets included.
            if self.path != ":memory:" and not self.path.startswith("file:"):
                with contextlib.suppress(OSError):  # (connect says what is wrong)
                    os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            conn = sqlite3.connect(self.path, timeout=LOCK_WAIT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT_S * 1000)}")
            try:
                conn.executescript(SCHEMA)  # idempotent
                st = os.stat(self.path)
            except BaseException:
                conn.close()
                raise
            self._ident = (st.st_dev, st.st_ino)
            self._conn = conn
        return self._conn

    def _check_file(self) -> None:
        """The path must still name the open database file. Removed while open (``rm``),
        the connection would go on reading and writing an unlinked file: changes made
        from then on vanish at restart, and readiness said all was well. So a removed file
        is the store being unavailable (readiness fails; past --policy-store-stale-s
        decisions deny) until one is back at the path; a file put in its place (a restored
        copy) is opened instead, and the reloader judges its revision (one that went back
        is a lost store)."""
        if self._conn is None or self.path == ":memory:":
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise StoreUnavailable(
                f"policy store {self.path} was removed while pdp had it open: changes would"
                " be lost; put the file back (or restart pdp to start a new one)") from None
        if (st.st_dev, st.st_ino) == self._ident:
            return
        log.warning("policy_store_file_replaced", path=self.path)
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._conn = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the policy store is closed")

        def call() -> T:
            self._check_file()
            return fn(self._connection())

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"policy store {self.path}: {exc}") from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def tx(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        result = await self._run(tx)
        for waiter in self._waiters:
            waiter.set()
        return result

    @staticmethod
    def _bump(conn: sqlite3.Connection, tenant: str) -> None:
        conn.execute("INSERT OR IGNORE INTO tenants (tenant) VALUES (?)", (tenant,))
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")

    @staticmethod
    def _record(conn: sqlite3.Connection, tenant: str, name: str,
                transitions: bool = True) -> PolicyRecord:
        versions = tuple(VersionRecord.from_json(row[0]) for row in conn.execute(
            "SELECT data FROM versions WHERE tenant = ? AND name = ? ORDER BY version",
            (tenant, name)))
        trans: tuple[Transition, ...] = ()
        if transitions:
            trans = tuple(Transition.from_json(row[0]) for row in conn.execute(
                "SELECT data FROM transitions WHERE tenant = ? AND name = ? ORDER BY id",
                (tenant, name)))
        return PolicyRecord(tenant, name, versions, trans)

    @staticmethod
    def _tenant(conn: sqlite3.Connection, tenant: str) -> TenantState:
        by_name: dict[str, list[VersionRecord]] = {}
        for (data,) in conn.execute(
                "SELECT data FROM versions WHERE tenant = ? ORDER BY name, version", (tenant,)):
            v = VersionRecord.from_json(data)
            by_name.setdefault(v.name, []).append(v)
        relaxed = frozenset(row[0] for row in conn.execute(
            "SELECT builtin FROM relaxed WHERE tenant = ?", (tenant,)))
        pending = {row[0]: RelaxRequest.from_json(row[1]) for row in conn.execute(
            "SELECT builtin, data FROM relax_requests WHERE tenant = ?", (tenant,))}
        return TenantState({n: PolicyRecord(tenant, n, tuple(vs)) for n, vs in by_name.items()},
                           relaxed, pending)

    # ------------------------------------------------------------------ primitives

    async def _mutate(self, tenant: str, name: str, fn: MutateFn) -> Mutation | None:
        def tx(conn: sqlite3.Connection) -> Mutation | None:
            mutation = fn(self._record(conn, tenant, name))
            if mutation is None:
                return None
            for v in mutation.versions:
                conn.execute(
                    "INSERT INTO versions (tenant, name, version, status, data)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, name, version)"
                    " DO UPDATE SET status = excluded.status, data = excluded.data",
                    (v.tenant, v.name, v.version, v.status.value, v.to_json()))
            for t in mutation.transitions:
                conn.execute("INSERT INTO transitions (tenant, name, data) VALUES (?, ?, ?)",
                             (t.tenant, t.name, t.to_json()))
            self._bump(conn, tenant)
            return mutation

        return await self._write(tx)

    async def _update_builtin(self, tenant: str, builtin: str,
                              fn: BuiltinFn) -> BuiltinChange | None:
        def tx(conn: sqlite3.Connection) -> BuiltinChange | None:
            relaxed = conn.execute("SELECT 1 FROM relaxed WHERE tenant = ? AND builtin = ?",
                                   (tenant, builtin)).fetchone() is not None
            row = conn.execute("SELECT data FROM relax_requests WHERE tenant = ? AND"
                               " builtin = ?", (tenant, builtin)).fetchone()
            change = fn(relaxed, None if row is None else RelaxRequest.from_json(row[0]))
            if change is None:
                return None
            if change.relaxed:
                conn.execute("INSERT OR IGNORE INTO relaxed (tenant, builtin) VALUES (?, ?)",
                             (tenant, builtin))
            else:
                conn.execute("DELETE FROM relaxed WHERE tenant = ? AND builtin = ?",
                             (tenant, builtin))
            conn.execute("DELETE FROM relax_requests WHERE tenant = ? AND builtin = ?",
                         (tenant, builtin))
            if change.pending is not None:
                conn.execute("INSERT INTO relax_requests (tenant, builtin, data)"
                             " VALUES (?, ?, ?)", (tenant, builtin, change.pending.to_json()))
            conn.execute("INSERT INTO transitions (tenant, name, data) VALUES (?, ?, ?)",
                         (tenant, builtin, change.transition.to_json()))
            self._bump(conn, tenant)
            return change

        return await self._write(tx)

    async def _create_tenant(self, info: TenantInfo) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("INSERT OR IGNORE INTO tenant_info (tenant, data) VALUES (?, ?)",
                               (info.name, info.to_json()))
            if cur.rowcount == 0:
                return False
            conn.execute("INSERT OR IGNORE INTO tenants (tenant) VALUES (?)", (info.name,))
            self._bump(conn, info.name)
            return True

        return await self._write(tx)

    async def _tenant_infos(self) -> dict[str, TenantInfo]:
        return await self._run(lambda conn: {row[0]: TenantInfo.from_json(row[1]) for row in
                                             conn.execute("SELECT tenant, data FROM"
                                                          " tenant_info")})

    async def _read_record(self, tenant: str, name: str) -> PolicyRecord:
        return await self._run(lambda conn: self._record(conn, tenant, name))

    async def _read_tenant(self, tenant: str) -> TenantState:
        return await self._run(lambda conn: self._tenant(conn, tenant))

    async def _read_all(self) -> tuple[int, dict[str, TenantState]]:
        def read(conn: sqlite3.Connection) -> tuple[int, dict[str, TenantState]]:
            conn.execute("BEGIN")  # one read transaction: a consistent view
            try:
                revision = self._revision(conn)
                tenants = [row[0] for row in conn.execute(
                    "SELECT tenant FROM tenants ORDER BY tenant")]
                return revision, {t: self._tenant(conn, t) for t in tenants}
            finally:
                conn.execute("COMMIT")

        return await self._run(read)

    @staticmethod
    def _revision(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0])

    async def revision(self) -> int:
        return await self._run(self._revision)

    async def tenants(self) -> list[str]:
        return await self._run(lambda conn: [row[0] for row in conn.execute(
            "SELECT tenant FROM tenants ORDER BY tenant")])

    async def watch_revisions(self, since: int | None = None) -> AsyncIterator[int]:
        wake = asyncio.Event()
        self._waiters.add(wake)
        try:
            last = await self.revision() if since is None else since
            while not self._closed:
                try:
                    current = await self.revision()
                except StoreUnavailable:  # e.g. locked for long: keep watching
                    if self._closed:
                        return
                    await asyncio.sleep(self.poll_interval)
                    continue
                if current != last:
                    last = current
                    yield current
                    continue
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.poll_interval)
        finally:
            self._waiters.discard(wake)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for waiter in self._waiters:
            waiter.set()

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)
