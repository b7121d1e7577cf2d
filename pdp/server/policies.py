"""Keep the engine's policy set in step with the policy store.

At start: open the store, seed it from the YAML directory, compile a snapshot. Then follow the
store's revisions (change notification, with the store's own polling as a safety net) and swap
in a freshly compiled set within a second of any change. Compiled policies are re-used by
(tenant, name, version, status, content hash), so a reload compiles only what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from pdp.cel import Environment, ProgramCache
from pdp.cel.env import new_pdp_environment
from pdp.policy.builtins import builtin_policies
from pdp.policy.compiled import CompiledPolicy, compile_or_broken
from pdp.policy.model import Policy, PolicyError
from pdp.policy.policyset import PolicySet
from pdp.policy.store import (
    PolicyStore,
    RedisPolicyStore,
    SqlitePolicyStore,
    compile_validator,
    seed_from_directory,
)
from pdp.settings import Settings

log = structlog.get_logger("pdp.policies")

Key = tuple[str, str, int, str, str]


def cel_environment(settings: Settings) -> Environment:
    """pdp's CEL environment with the configured hard caps on built values (admission and
    evaluation use the same one, so what is admitted is what runs)."""
    return new_pdp_environment(max_string_bytes=settings.cel_max_string_bytes,
                               max_list_size=settings.cel_max_list_size)


def open_policy_store(settings: Settings, on_event: Callable[[dict[str, Any]], None],
                      cache: ProgramCache | None = None,
                      env: Environment | None = None) -> PolicyStore:
    """The configured store; its admission check compiles into ``cache`` (shared with the
    engine, so a policy admitted here is not compiled again when it is loaded)."""
    validate = compile_validator(settings.cel_max_cost_estimate, cache,
                                 env if env is not None else cel_environment(settings))
    if settings.policy_store.startswith("sqlite:"):
        path = Path(settings.policy_store.removeprefix("sqlite:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqlitePolicyStore(path, validate=validate, on_event=on_event)
    # On the same Redis Cluster as the counters (--redis-cluster) when it is that URL;
    # otherwise the URL's own ?cluster=true says so.
    same = settings.redis_cluster and settings.policy_store == settings.redis_url
    return RedisPolicyStore.from_url(settings.policy_store, cluster=True if same else None,
                                     validate=validate, on_event=on_event)


async def seed(store: PolicyStore, settings: Settings) -> None:
    """Raises PolicyError (file:line:column) if the directory holds an invalid policy."""
    directory = Path(settings.policy_dir)
    if not directory.is_dir():
        if settings.policy_dir != Settings.policy_dir:
            raise PolicyError(f"{settings.policy_dir} is not a directory", field_path="policy_dir")
        log.warning("policy_dir_missing", policy_dir=settings.policy_dir,
                    note="the policy store and the built-ins apply")
        return
    result = await seed_from_directory(store, directory)
    if result.created:
        log.info("policies_seeded", created=len(result.created), skipped=len(result.skipped))
    for tenant, name, source, version in result.differs:
        log.warning("policy_file_differs_from_store", tenant=tenant, policy=name,
                    file=source, store_version=version,
                    effect="the store's version stays in force: an edited file is not"
                           " applied on restart; submit it with `pdp policy put"
                           f" --expected-version {version} FILE` (then approve, activate)")


class AdminAudit:
    """The policy store's audit events, written to disk before an admin call is answered.

    Why: the store reports a committed change (``Policy.Activated``...) through the audit
    log's queue; a crash in the milliseconds after the answer lost the record of a change
    the caller was told had happened. ``settle`` (awaited by the admin service before it
    answers) waits until every event emitted so far is fsync'd, bounded: a disk that cannot
    be written must not hang the call whose change is already committed (it is logged)."""

    SETTLE_S = 5.0

    def __init__(self, emit: Callable[[Mapping[str, Any]], object],
                 flush: Callable[[], Awaitable[None]]) -> None:
        self._emit, self._flush = emit, flush
        self.emitted = 0
        self.settled = 0

    def emit(self, event: Mapping[str, Any]) -> None:
        self.emitted += 1
        self._emit(event)

    async def settle(self) -> None:
        target = self.emitted
        if self.settled >= target:
            return
        try:
            async with asyncio.timeout(self.SETTLE_S):
                await self._flush()
        except TimeoutError:
            log.error("policy_change_not_yet_on_disk", waited_s=self.SETTLE_S,
                      effect="the change is committed; its audit record is queued, not yet"
                             " fsync'd (see the audit log's errors)")
            return
        self.settled = max(self.settled, target)


class PolicyReloader:
    def __init__(self, store: PolicyStore, env: Environment, cache: ProgramCache,
                 max_cost: int | None, stale_after_s: float = 60.0) -> None:
        self.store = store
        self.stale_after_s = stale_after_s
        self.last_ok = time.monotonic()
        self._probe: asyncio.Task[None] | None = None
        self.env = env
        self.cache = cache
        self.max_cost = max_cost
        self.revision = -1
        # Set when the store's revision went backwards (wiped, or restored from an older
        # copy): its contents are not what this set was built from (see _follow).
        self.lost: str | None = None
        self._compiled: dict[Key, CompiledPolicy] = {}
        self._builtins = [compile_or_broken(p, env, cache) for p in builtin_policies()]
        self._task: asyncio.Task[None] | None = None

    def _compile(self, p: Policy) -> CompiledPolicy:
        key = (p.tenant, p.name, p.version, p.status.value, p.content_hash)
        found = self._compiled.get(key)
        if found is None:
            found = compile_or_broken(p, self.env, self.cache, max_cost=self.max_cost)
            if found.broken:
                log.error("policy_does_not_compile", policy=p.name, tenant=p.tenant,
                          error=found.broken, effect="denies every request it applies to")
        return found

    async def load(self) -> PolicySet:
        snap = await self.store.snapshot()
        compiled = {}
        for p in snap.policies():
            c = self._compile(p)
            compiled[(p.tenant, p.name, p.version, p.status.value, p.content_hash)] = c
        self._compiled = compiled
        self.revision = snap.revision
        return PolicySet(list(compiled.values()), self._builtins, snap.relaxed(),
                         known_tenants=snap.known())

    def start(self, apply: Callable[[PolicySet], None]) -> None:
        self._task = asyncio.create_task(self._follow(apply), name="pdp-policy-reload")
        self._probe = asyncio.create_task(self._check_reachable(), name="pdp-policy-probe")

    def stale_reason(self) -> str | None:
        """Why the policies in force can no longer be trusted, or None (checked per decision).

        A short store outage keeps the last good set (sidecars ride out a blip); past
        ``stale_after_s`` without reaching the store, decisions deny: a change made meanwhile
        (say, an emergency freeze) might not be in force here.
        """
        age = time.monotonic() - self.last_ok
        if age <= self.stale_after_s:
            return None
        if self.lost is not None:
            return f"{self.lost} {age:.0f} s ago; the policies in force may be out of date"
        return (f"policy store unreachable for {age:.0f} s (more than {self.stale_after_s:g} s):"
                " the policies in force may be out of date")

    def problem(self) -> str | None:
        """For readiness: the store's trouble at once (a lost store from the moment it is
        seen, an outage once it is stale), or None."""
        return self.lost or self.stale_reason()

    async def _check_reachable(self) -> None:
        while True:
            try:
                async with asyncio.timeout(2.0):
                    await self.store.revision()
                if self.lost is None:  # reachable, but lost is not trusted again
                    self.last_ok = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("policy_store_unreachable", error=repr(exc))
            await asyncio.sleep(1.0)

    async def _follow(self, apply: Callable[[PolicySet], None]) -> None:
        while True:
            try:
                async for revision in self.store.watch_revisions(since=self.revision):
                    if revision == self.revision or self.lost is not None:
                        continue
                    if 0 <= revision < self.revision:
                        # Revisions only grow. Going back means the store was wiped or
                        # restored from an older copy: taking it would drop policies (and
                        # with no policies left, let through what they denied). Keep the
                        # last set, as in an outage: stale after policy_store_stale_s.
                        self.lost = (f"policy store revision went back from {self.revision}"
                                     f" to {revision} (wiped or restored from an older copy;"
                                     " restart pdp to take the store as it is now)")
                        log.error("policy_store_lost", revision=revision,
                                  previous=self.revision, error=self.lost,
                                  effect="the last policy set stays in force until"
                                         " policy_store_stale_s, then decisions deny")
                        continue
                    policies = await self.load()
                    apply(policies)
                    log.info("policies_reloaded", revision=self.revision,
                             policies=len(policies.policies))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the last good set; try again shortly
                log.error("policy_reload_failed", error=repr(exc),
                          effect="the previous policy set stays in force")
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        for task in (self._task, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
