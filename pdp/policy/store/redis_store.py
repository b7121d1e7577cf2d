"""Redis policy store: one shared store for a fleet of sidecars.

Keys (records are the same JSON the SQLite store keeps)::

    pdp:{tenant}:policy:rev            tenant change counter (the WATCH target)
    pdp:{tenant}:policy:names          set of custom policy names
    pdp:{tenant}:policy:v:<name>       hash: version number -> VersionRecord JSON
    pdp:{tenant}:policy:t:<name>       list: Transition JSON, append-only, in order
    pdp:{tenant}:policy:relaxed        set of relaxed built-ins
    pdp:{tenant}:policy:relax_requests hash: built-in -> pending RelaxRequest JSON
    pdp:{pdp-policy}:revision          store revision (every change increments it)
    pdp:{pdp-policy}:tenants           set of tenants with stored state (or created)
    pdp:{pdp-policy}:tenant_info       hash: tenant -> TenantInfo JSON (created by an admin)

Atomicity: a change WATCHes the tenant's ``rev`` key, reads the policy, applies the shared
lifecycle rule in Python and writes everything — versions, transitions, both counters — in
one MULTI/EXEC. A concurrent change of the same tenant makes EXEC fail and the change is
retried on fresh data; a rule violation raises before MULTI, so nothing is written.

Notification: after each change the new revision is PUBLISHed on ``pdp:policy:changes``;
``watch_revisions`` listens there and also polls the revision key every 0.5 s, so a lost
message (or a reconnect) delays a reload by at most that long.

Deployment: the tenant keys are hash-tagged per tenant, but one change also touches the two
global ``{pdp-policy}`` keys in the same transaction, which Redis Cluster would reject as
CROSSSLOT: this store needs a single Redis (or a primary with replicas / Sentinel).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

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

GLOBAL = "pdp:{pdp-policy}"
CHANNEL = "pdp:policy:changes"
POLL_INTERVAL = 0.5


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisPolicyStore(PolicyStore):
    def __init__(self, client: aioredis.Redis, *, owns_client: bool = False,
                 poll_interval: float = POLL_INTERVAL, channel: str = CHANNEL,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.owns_client = owns_client
        self.poll_interval = poll_interval
        self.channel = channel
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisPolicyStore:
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0,
                                         socket_connect_timeout=5.0)
        return cls(client, owns_client=True, **kwargs)

    # ------------------------------------------------------------------ keys

    @staticmethod
    def _p(tenant: str) -> str:
        return f"pdp:{{{tenant}}}:policy"

    async def _guard(self, call: Awaitable[T]) -> T:
        if self._closed:
            if asyncio.iscoroutine(call):
                call.close()
            raise StoreUnavailable("the policy store is closed")
        try:
            return await call
        except RedisError as exc:
            raise StoreUnavailable(f"policy store (Redis): {exc}") from exc

    # ------------------------------------------------------------------ primitives

    async def _transaction(self, tenant: str,
                           body: Callable[[Any], Awaitable[bool]]) -> int | None:
        """WATCH the tenant, run ``body(pipe)`` (reads immediately; returns False to write
        nothing, or queues writes after ``pipe.multi()``), bump counters, EXEC, PUBLISH."""
        p = self._p(tenant)
        async with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(f"{p}:rev")
                    if not await body(pipe):
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return None
                    pipe.incr(f"{p}:rev")
                    pipe.sadd(f"{GLOBAL}:tenants", tenant)
                    pipe.incr(f"{GLOBAL}:revision")
                    result = await pipe.execute()
                    revision = int(result[-1])
                    break
                except WatchError:
                    continue
        with contextlib.suppress(RedisError):  # watchers poll the revision as a safety net
            await self.client.publish(self.channel, str(revision))
        return revision

    async def _mutate(self, tenant: str, name: str, fn: MutateFn) -> Mutation | None:
        p = self._p(tenant)
        out: list[Mutation] = []

        async def body(pipe: Any) -> bool:
            out.clear()
            mutation = fn(await self._record_from(pipe, tenant, name))
            if mutation is None:
                return False
            pipe.multi()
            for v in mutation.versions:
                pipe.hset(f"{p}:v:{name}", str(v.version), v.to_json())
            for t in mutation.transitions:
                pipe.rpush(f"{p}:t:{name}", t.to_json())
            pipe.sadd(f"{p}:names", name)
            out.append(mutation)
            return True

        await self._guard(self._transaction(tenant, body))
        return out[0] if out else None

    async def _update_builtin(self, tenant: str, builtin: str,
                              fn: BuiltinFn) -> BuiltinChange | None:
        p = self._p(tenant)
        out: list[BuiltinChange] = []

        async def body(pipe: Any) -> bool:
            out.clear()
            relaxed = bool(await pipe.sismember(f"{p}:relaxed", builtin))
            raw = await pipe.hget(f"{p}:relax_requests", builtin)
            change = fn(relaxed, None if raw is None else RelaxRequest.from_json(_s(raw)))
            if change is None:
                return False
            pipe.multi()
            if change.relaxed:
                pipe.sadd(f"{p}:relaxed", builtin)
            else:
                pipe.srem(f"{p}:relaxed", builtin)
            if change.pending is not None:
                pipe.hset(f"{p}:relax_requests", builtin, change.pending.to_json())
            else:
                pipe.hdel(f"{p}:relax_requests", builtin)
            pipe.rpush(f"{p}:t:{builtin}", change.transition.to_json())
            out.append(change)
            return True

        await self._guard(self._transaction(tenant, body))
        return out[0] if out else None

    async def _create_tenant(self, info: TenantInfo) -> bool:
        async def body(pipe: Any) -> bool:
            if await pipe.sismember(f"{GLOBAL}:tenants", info.name):
                return False
            pipe.multi()
            pipe.hset(f"{GLOBAL}:tenant_info", info.name, info.to_json())
            return True

        # The tenant set itself is written by _transaction, with the revisions.
        return await self._guard(self._transaction(info.name, body)) is not None

    async def _tenant_infos(self) -> dict[str, TenantInfo]:
        raw = await self._guard(self.client.hgetall(f"{GLOBAL}:tenant_info"))
        return {_s(k): TenantInfo.from_json(_s(v)) for k, v in raw.items()}

    async def _record_from(self, r: Any, tenant: str, name: str,
                           transitions: bool = True) -> PolicyRecord:
        p = self._p(tenant)
        raw = await r.hgetall(f"{p}:v:{name}")
        versions = sorted((VersionRecord.from_json(_s(v)) for v in raw.values()),
                          key=lambda v: v.version)
        trans: tuple[Transition, ...] = ()
        if transitions:
            trans = tuple(Transition.from_json(_s(t))
                          for t in await r.lrange(f"{p}:t:{name}", 0, -1))
        return PolicyRecord(tenant, name, tuple(versions), trans)

    async def _read_record(self, tenant: str, name: str) -> PolicyRecord:
        return await self._guard(self._record_from(self.client, tenant, name))

    async def _tenant_state(self, tenant: str) -> TenantState:
        p = self._p(tenant)
        names = sorted(_s(n) for n in await self.client.smembers(f"{p}:names"))
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(f"{p}:v:{name}")
            pipe.smembers(f"{p}:relaxed")
            pipe.hgetall(f"{p}:relax_requests")
            results = await pipe.execute()
        records = {}
        for name, raw in zip(names, results[:-2], strict=True):
            versions = sorted((VersionRecord.from_json(_s(v)) for v in raw.values()),
                              key=lambda v: v.version)
            records[name] = PolicyRecord(tenant, name, tuple(versions))
        pending = {_s(b): RelaxRequest.from_json(_s(v)) for b, v in results[-1].items()}
        return TenantState(records, frozenset(_s(b) for b in results[-2]), pending)

    async def _consistent(self, key: str, read: Callable[[], Awaitable[T]]) -> T:
        """``read()`` with a guarantee that ``key`` did not change meanwhile (WATCH it, read,
        then EXEC an empty transaction; retry if it fails)."""
        async with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    value = await read()
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.exists(key)
                    await pipe.execute()
                    return value
                except WatchError:
                    continue

    async def _read_tenant(self, tenant: str) -> TenantState:
        return await self._guard(self._consistent(
            f"{self._p(tenant)}:rev", lambda: self._tenant_state(tenant)))

    async def _read_all(self) -> tuple[int, dict[str, TenantState]]:
        async def read() -> tuple[int, dict[str, TenantState]]:
            revision = int(await self.client.get(f"{GLOBAL}:revision") or 0)
            tenants = sorted(_s(t) for t in await self.client.smembers(f"{GLOBAL}:tenants"))
            return revision, {t: await self._tenant_state(t) for t in tenants}

        return await self._guard(self._consistent(f"{GLOBAL}:revision", read))

    async def revision(self) -> int:
        return int(await self._guard(self.client.get(f"{GLOBAL}:revision")) or 0)

    async def tenants(self) -> list[str]:
        members = await self._guard(self.client.smembers(f"{GLOBAL}:tenants"))
        return sorted(_s(t) for t in members)

    async def watch_revisions(self, since: int | None = None) -> AsyncIterator[int]:
        last = await self.revision() if since is None else since
        pubsub: Any = None
        try:
            while not self._closed:
                try:
                    if pubsub is None:
                        pubsub = self.client.pubsub()
                        await pubsub.subscribe(self.channel)
                    current = await self.revision()
                    if current != last:
                        last = current
                        yield current
                        continue
                    # wakes on a PUBLISH, or after poll_interval at the latest
                    await pubsub.get_message(ignore_subscribe_messages=True,
                                             timeout=self.poll_interval)
                except (RedisError, StoreUnavailable, OSError):
                    if pubsub is not None:
                        with contextlib.suppress(Exception):
                            await pubsub.aclose()
                        pubsub = None
                    await asyncio.sleep(self.poll_interval)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.owns_client:
            await self.client.aclose()
