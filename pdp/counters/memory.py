"""In-process counter store: the embedded default for a single sidecar.

All state sits in dictionaries keyed exactly like the Redis keys (see ``keys.py``), each
entry with an expiry instant, so memory stays bounded the same way Redis TTLs bound it:
expired entries are treated as absent at once and dropped by a sweep that runs at most
once per ``sweep_interval`` of clock time (and on demand via :meth:`sweep`).

No epoch marker: this store cannot lose its state without pdp itself restarting, and a
restarted pdp starts from nothing either way (the Redis store's loss detection is for a
store that outlives and is shared by sidecars).

Time is the injected clock, in whole milliseconds, so tests move it by hand. A reservation
never awaits while it holds state, so within one event loop it is atomic; a lock also makes
it safe across threads.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pdp.counters import keys, messages
from pdp.counters.clock import Clock, SystemClock
from pdp.counters.common import (
    EVENT_CODE,
    distinct,
    keep_count,
    keep_ms,
    rollback_verdict,
    to_ms,
    validate_items,
)
from pdp.counters.days import day_table
from pdp.counters.model import (
    CounterEventKind,
    CounterKind,
    CounterRule,
    ReserveResult,
)
from pdp.counters.settings import (
    DEFAULT_EVENT_BUCKET_SECONDS,
    DEFAULT_EVENT_RETENTION_SECONDS,
    DEFAULT_HISTORY_SECONDS,
)
from pdp.turns import Turns


@dataclass(slots=True)
class _Stamp:
    """COOLDOWN / MIN_STEP_DURATION: one instant."""

    t_ms: int
    expires_ms: int


@dataclass(slots=True)
class _Count:
    """DAILY_CAP: one day's count."""

    n: int
    expires_ms: int


@dataclass(slots=True)
class _Window:
    """VELOCITY: reserve instants, oldest first: those inside the sliding window and, for a
    version of the policy with a longer one, older ones (``common.keep_ms``/``keep_count``)."""

    # A list, not a deque: the window's edge is found by bisection, and indexing the middle
    # of a deque is not O(1) (a set may hold HISTORY_MAX_ENTRIES pushes).
    times: list[int] = field(default_factory=list)
    expires_ms: int = 0


@dataclass(slots=True)
class _Events:
    """ROLLBACK_RATE: ``bucket index -> [deploys, rollbacks]``."""

    buckets: dict[int, list[int]] = field(default_factory=dict)
    expires_ms: int = 0


_Entry = _Stamp | _Count | _Window | _Events
_E = TypeVar("_E", _Stamp, _Count, _Window, _Events)


class MemoryCounterStore:
    """The :class:`~pdp.counters.base.CounterStore` kept in this process."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        event_bucket_seconds: int = DEFAULT_EVENT_BUCKET_SECONDS,
        event_retention_seconds: int = DEFAULT_EVENT_RETENTION_SECONDS,
        sweep_interval: float = 60.0,
        history_seconds: int = DEFAULT_HISTORY_SECONDS,
    ) -> None:
        """``history_seconds``: how long cooldown and velocity pushes are kept at least,
        whatever the rule's window (``CounterSettings.history_seconds``)."""
        self.clock: Clock = clock or SystemClock()
        self.history_seconds = history_seconds
        self._history_ms = history_seconds * 1000
        self.event_bucket_seconds = event_bucket_seconds
        self.event_retention_seconds = event_retention_seconds
        self._bucket_ms = event_bucket_seconds * 1000
        self._retention_ms = event_retention_seconds * 1000
        self._sweep_ms = to_ms(sweep_interval)
        self._next_sweep = 0
        self._data: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- the interface ---------------------------------------------------------------

    async def reserve(
        self, tenant: str, rules: Sequence[CounterRule], *, timeout: float
    ) -> ReserveResult:
        return (await self.reserve_batch(tenant, [rules], timeout=timeout))[0]

    async def reserve_batch(
        self, tenant: str, items: Sequence[Sequence[CounterRule]], *, timeout: float
    ) -> list[ReserveResult]:
        validate_items(items, self.event_retention_seconds)
        prefix = keys.tenant_prefix(tenant)
        # A large step is reserved in slices with turns for the event loop in between (other
        # calls are not held for all of it). Each agent's reservation is whole (checked and
        # committed under the lock without a turn), so no cap is ever overshot; another
        # call may reserve between two agents of the step, as it could between two steps.
        out: list[ReserveResult] = []
        turns = Turns()
        now = self._now()
        for i, rules in enumerate(items):
            if turns.due(i):
                await turns.take()
                now = self._now()  # the step's clock moves on only where others could run
            with self._lock:
                out.append(self._reserve_one(prefix, rules, now))
        return out

    async def peek(
        self, tenant: str, rules: Sequence[CounterRule], *, timeout: float
    ) -> ReserveResult:
        """The verdict ``reserve`` would give, consuming nothing."""
        validate_items([rules], self.event_retention_seconds)
        prefix = keys.tenant_prefix(tenant)
        with self._lock:
            now = self._now()
            for rule in rules:
                denied = self._check(prefix, rule, now, {})
                if denied is not None:
                    return denied
        return ReserveResult.allow()

    async def record_event(
        self,
        tenant: str,
        kind: CounterEventKind,
        scope_keys: Sequence[str],
        *,
        timeout: float,
        event_key: str | None = None,
    ) -> bool:
        """Record the event; with ``event_key``, at most once per key (and kind) and scope
        within the event retention: False when it was recorded under every scope given
        already ("" is no key). Per scope, so a later report naming more (the rollout
        engine's, with the agent, after EvaluateHealth's) adds what was missing."""
        scopes = distinct(scope_keys)
        if not scopes:
            return False
        prefix = keys.tenant_prefix(tenant)
        with self._lock:
            now = self._now()
            if event_key:
                fresh = []
                for scope in scopes:
                    seen = keys.event_id_key(prefix, EVENT_CODE[kind], event_key, scope)
                    if self._get(seen, _Stamp, now) is None:
                        self._data[seen] = _Stamp(now, now + self._retention_ms)
                        fresh.append(scope)
                if not fresh:
                    return False
                scopes = fresh
            for scope in scopes:
                if kind is CounterEventKind.STEP_ADVANCE:
                    self._data[keys.step_key(prefix, scope)] = _Stamp(
                        now, now + self._retention_ms
                    )
                    continue
                ev = self._get(keys.events_key(prefix, scope), _Events, now)
                if ev is None:
                    ev = _Events()
                    self._data[keys.events_key(prefix, scope)] = ev
                counts = ev.buckets.setdefault(now // self._bucket_ms, [0, 0])
                counts[0 if kind is CounterEventKind.DEPLOY else 1] += 1
                ev.expires_ms = now + self._retention_ms + self._bucket_ms
                oldest = (now - self._retention_ms) // self._bucket_ms
                for b in [b for b in ev.buckets if b < oldest]:
                    del ev.buckets[b]
        return True

    async def ping(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        self._closed = True

    # -- introspection (tests, metrics) ----------------------------------------------

    def keys(self) -> list[str]:
        """Live (unexpired) keys, like ``KEYS pdp:*`` on Redis."""
        with self._lock:
            now = self._now()
            return sorted(k for k, e in self._data.items() if e.expires_ms > now)

    def sweep(self) -> int:
        """Drop every expired entry now; returns how many remain."""
        with self._lock:
            self._sweep(int(self.clock.now() * 1000))
            return len(self._data)

    # -- internals --------------------------------------------------------------------

    def _now(self) -> int:
        now = int(self.clock.now() * 1000)
        if now >= self._next_sweep:
            self._sweep(now)
            self._next_sweep = now + self._sweep_ms
        return now

    def _sweep(self, now: int) -> None:
        for k in [k for k, e in self._data.items() if e.expires_ms <= now]:
            del self._data[k]

    def _get(self, key: str, typ: type[_E], now: int) -> _E | None:
        e = self._data.get(key)
        if e is None:
            return None
        if e.expires_ms <= now or not isinstance(e, typ):
            del self._data[key]
            return None
        return e

    def _reserve_one(self, prefix: str, rules: Sequence[CounterRule], now: int) -> ReserveResult:
        commits: dict[str, tuple[CounterRule, str, int]] = {}
        for rule in rules:
            denied = self._check(prefix, rule, now, commits)
            if denied is not None:
                return denied
        for key, (rule, _day, end_ms) in commits.items():
            self._commit(key, rule, now, end_ms)
        return ReserveResult.allow()

    def _check(
        self,
        prefix: str,
        rule: CounterRule,
        now: int,
        commits: dict[str, tuple[CounterRule, str, int]],
    ) -> ReserveResult | None:
        """None if ``rule`` passes (and note what to consume), else the deny."""
        k = rule.kind
        if k is CounterKind.DAILY_CAP:
            located = day_table(rule.timezone, now / 1000).locate(now)
            assert located is not None  # the table is centred on this very instant
            day, end_ms = located
            key = keys.cap_key(prefix, rule.counter, rule.scope_key, day)
            c = self._get(key, _Count, now)
            n = c.n if c else 0
            if n >= rule.max_count:
                retry = None if rule.max_count == 0 else end_ms - now
                return messages.deny(rule, now, retry, a=n, label=day)
            commits.setdefault(key, (rule, day, end_ms))
        elif k is CounterKind.COOLDOWN:
            key = keys.cooldown_key(prefix, rule.counter, rule.scope_key)
            s = self._get(key, _Stamp, now)
            interval = to_ms(rule.min_interval_seconds)
            if s is not None and now - s.t_ms < interval:
                return messages.deny(rule, now, s.t_ms + interval - now, a=s.t_ms)
            commits.setdefault(key, (rule, "", now + keep_ms(rule, self._history_ms)))
        elif k is CounterKind.VELOCITY:
            key = keys.velocity_key(prefix, rule.counter, rule.scope_key)
            window = to_ms(rule.window_seconds)
            w = self._get(key, _Window, now)
            times = w.times if w else []
            keep = keep_ms(rule, self._history_ms)
            old = bisect.bisect_right(times, now - keep)
            if old:
                del times[:old]
            total = len(times)
            # in the window: after now - window (a push exactly one window old is out)
            n = total - bisect.bisect_right(times, now - window)
            if n >= rule.max_count:
                # free again when the max_count-th newest push leaves the window
                retry = (None if rule.max_count == 0
                         else times[total - rule.max_count] + window - now)
                return messages.deny(rule, now, retry, a=n)
            commits.setdefault(key, (rule, "", now + keep))
        elif k is CounterKind.ROLLBACK_RATE:
            ev = self._get(keys.events_key(prefix, rule.scope_key), _Events, now)
            buckets = {b: (c[0], c[1]) for b, c in ev.buckets.items()} if ev else {}
            deny, rb, dep, retry = rollback_verdict(
                buckets, now, to_ms(rule.window_seconds), self._bucket_ms,
                rule.threshold_percent, rule.min_deployments,
            )
            if deny:
                return messages.deny(rule, now, retry, a=rb, b=dep)
        else:
            s = self._get(keys.step_key(prefix, rule.scope_key), _Stamp, now)
            interval = to_ms(rule.min_interval_seconds)
            if s is not None and now - s.t_ms < interval:
                return messages.deny(rule, now, s.t_ms + interval - now, a=s.t_ms)
        return None

    def _commit(self, key: str, rule: CounterRule, now: int, expires_ms: int) -> None:
        k = rule.kind
        if k is CounterKind.DAILY_CAP:
            c = self._get(key, _Count, now)
            if c is None:
                self._data[key] = _Count(1, expires_ms)
            else:
                c.n += 1
                c.expires_ms = max(c.expires_ms, expires_ms)  # see reserve.lua
        elif k is CounterKind.COOLDOWN:
            self._data[key] = _Stamp(now, expires_ms)
        elif k is CounterKind.VELOCITY:
            w = self._get(key, _Window, now)
            if w is None:
                w = _Window()
                self._data[key] = w
            w.times.append(now)
            extra = len(w.times) - keep_count(rule)
            if extra > 0:
                del w.times[:extra]
            w.expires_ms = expires_ms
