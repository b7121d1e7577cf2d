"""Redis / Redis Cluster counter store: one Lua call per decision, fail-closed.

Whose clock counts
    The Redis server's. The scripts read ``TIME`` and use it for every comparison and
    every TTL, so cooldowns, sliding windows and day boundaries are judged on one clock
    for the whole fleet: a sidecar whose clock is minutes off can neither skip a cooldown
    nor open tomorrow's daily cap early. Lua has no timezone database, so for DAILY_CAP
    the sidecar passes a table of the local midnights around *its* now (computed with
    zoneinfo, DST-correct); the script picks the day containing the server's now. Only a
    sidecar more than a day off fails, and it fails closed (``CounterStoreUnavailable``).

One round trip
    ``reserve`` and ``reserve_batch`` are one ``EVALSHA`` of ``reserve.lua``: every rule of
    every item is checked and, per item, consumed only if all pass; Redis runs a script
    atomically, so racing sidecars cannot both take the last slot. Scripts are loaded with
    ``SCRIPT LOAD`` on first use (or :meth:`load_scripts`) and reloaded on ``NOSCRIPT``
    (a restarted or failed-over server has an empty script cache).

Cluster
    Keys are ``pdp:{tenant}:...``; the script receives ``pdp:{tenant}`` as its only
    declared key and derives the rest, all in the same hash slot, so the client routes the
    call to the node that owns the tenant and the same script works on a Cluster.

Lost state
    A Redis restart without persistence, or a failover to an empty replica, silently
    resets caps and cooldowns. Each tenant's slot therefore holds an epoch marker
    (``pdp:{tenant}:epoch``, no TTL), created on first use and checked by the reservation
    script itself (no extra round trip). The store remembers, in memory, the marker it saw
    per tenant; when the script finds it gone (or replaced by another first-use marker),
    nothing is reserved and :class:`CounterStateLost` is raised: the engine denies with
    ``COUNTER_STATE_LOST``. The loss is logged, handed to ``on_state_lost`` (a metric) and
    ``on_audit_event`` (an audit event), and flagged in the tenant's slot
    (``pdp:{tenant}:lost``) so that sidecars started later deny too. It ends when an admin
    runs ``pdp counters ack`` (a fresh ``a`` marker, adopted by every sidecar on its next
    call) or, with ``state_lost="wait"``, once the longest counter window has passed since
    the loss was noticed (the store writes a fresh marker itself).

    Limits: a loss that no running sidecar noticed before every sidecar restarted looks
    like a brand-new store (nothing remembers the old marker), and a restore from an old
    snapshot that still holds the current marker is not a loss by this test.

Failure
    Every call runs under the caller's ``timeout`` (from the decision deadline). A refused
    connection, a hung or slow server, a failover or a script error all surface as
    :class:`CounterStoreUnavailable` within that timeout. Broken connections are dropped
    and the pool reconnects on later calls, so the store heals by itself. A call that timed
    out may still have been executed by the server; that can only consume a slot that was
    reported as denied (stricter, never looser).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import importlib.resources
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from pdp.counters import keys, messages
from pdp.counters.clock import Clock, SystemClock
from pdp.counters.common import (
    EVENT_CODE,
    distinct,
    keep_count,
    keep_ms,
    to_ms,
    validate_items,
)
from pdp.counters.days import day_table
from pdp.counters.fastredis import FastRedis, InFlight, ReplyError, arg, pack
from pdp.counters.lateness import Lateness
from pdp.counters.model import (
    CounterEventKind,
    CounterKind,
    CounterRule,
    CounterStateChange,
    CounterStateLost,
    CounterStoreUnavailable,
    ReserveResult,
)
from pdp.counters.settings import (
    DEFAULT_EVENT_BUCKET_SECONDS,
    DEFAULT_EVENT_RETENTION_SECONDS,
    DEFAULT_HISTORY_SECONDS,
    CounterSettings,
)

_KIND_CODE = {
    CounterKind.DAILY_CAP: 1,
    CounterKind.COOLDOWN: 2,
    CounterKind.VELOCITY: 3,
    CounterKind.ROLLBACK_RATE: 4,
    CounterKind.MIN_STEP_DURATION: 5,
}

RedisClient = aioredis.Redis | RedisCluster
_JSON = json.JSONEncoder(separators=(",", ":"))
log = logging.getLogger("pdp.counters")

# A DAILY_CAP key lives until local midnight: at most a day, 25 hours across a DST change.
_LONGEST_DAY_MS = 25 * 3600 * 1000


@dataclass(slots=True)
class _Loss:
    """A loss noticed for one tenant: since when (sidecar clock, ms), what had been seen."""

    noticed_ms: int
    previous: str
    found: str


class _Script:
    """A Lua script shipped as package data, addressed by its SHA1."""

    def __init__(self, name: str) -> None:
        self.text = importlib.resources.files("pdp.counters").joinpath(name).read_text()
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()
        self.load_cmd = pack(b"SCRIPT", b"LOAD", self.text.encode())
        # "EVALSHA <sha> 1": the fixed part of every call, pre-packed (fast path)
        self._tail = b"$7\r\nEVALSHA\r\n$40\r\n%b\r\n$1\r\n1\r\n" % self.sha.encode()
        self._head7 = b"*7\r\n" + self._tail

    def call(self, key: str, args: Sequence[str | int]) -> bytes:
        """The RESP bytes of ``EVALSHA sha 1 key *args`` (fast path)."""
        head = self._head7 if len(args) == 3 else b"*%d\r\n%b" % (len(args) + 4, self._tail)
        return head + b"".join([b"$%d\r\n%b\r\n" % (len(p), p) for p in map(arg, (key, *args))])


RESERVE = _Script("reserve.lua")
RECORD = _Script("record.lua")


class RedisCounterStore:
    """The :class:`~pdp.counters.base.CounterStore` shared by a fleet through Redis."""

    def __init__(
        self,
        client: RedisClient,
        *,
        clock: Clock | None = None,
        event_bucket_seconds: int = DEFAULT_EVENT_BUCKET_SECONDS,
        event_retention_seconds: int = DEFAULT_EVENT_RETENTION_SECONDS,
        max_concurrency: int = 50,
        server_time_offset: Callable[[], float] | None = None,
        fast_path: bool = True,
        state_lost: str = "deny",
        on_state_lost: Callable[[CounterStateChange], None] | None = None,
        on_audit_event: Callable[[dict[str, Any]], None] | None = None,
        history_seconds: int = DEFAULT_HISTORY_SECONDS,
    ) -> None:
        """``clock`` is the sidecar's clock: used only to centre DAILY_CAP day tables.

        ``server_time_offset`` shifts the Redis clock as the scripts see it (seconds);
        it exists for tests, which cannot move a real server's time. ``max_concurrency``
        caps calls in flight so a burst waits (within its timeout) for a pooled connection
        instead of failing because the pool is exhausted.

        ``fast_path`` (default) sends the standalone client's calls through
        :class:`~pdp.counters.fastredis.FastRedis`, built from ``client``'s own connection
        settings; Redis Cluster (and anything FastRedis does not handle) stays on redis-py.

        ``state_lost`` (``deny`` or ``wait``), ``on_state_lost`` and ``on_audit_event``: see
        "Lost state" above. The hooks are called synchronously from the call that noticed
        the change and must not block; an exception they raise is logged and swallowed.

        ``history_seconds``: how long cooldown and velocity pushes are kept at least,
        whatever the rule's window (``CounterSettings.history_seconds``; the same in the
        in-process store).
        """
        if state_lost not in ("deny", "wait"):
            raise ValueError(f"state_lost must be deny or wait: {state_lost!r}")
        self.client = client
        self.clock: Clock = clock or SystemClock()
        self.event_bucket_seconds = event_bucket_seconds
        self.event_retention_seconds = event_retention_seconds
        self.history_seconds = history_seconds
        self._history_ms = history_seconds * 1000
        self._bucket_ms = event_bucket_seconds * 1000
        self._retention_ms = event_retention_seconds * 1000
        self._offset = server_time_offset
        self._slots = asyncio.Semaphore(max_concurrency)
        self._fast = FastRedis.from_client(client, max_concurrency) if fast_path else None
        self._op_timeout = self._fast.op_timeout if self._fast else None
        self._loaded = False
        self._day_cache: dict[str, tuple[int, int, list[int | str]]] = {}
        # single-decision request templates: rule shapes -> (valid from, valid until,
        # JSON up to the item, definition index per rule); see _encode_one
        self._templates: dict[tuple[Any, ...], tuple[int, int, str, list[int]]] = {}
        self.state_lost = state_lost
        self.on_state_lost = on_state_lost
        self.on_audit_event = on_audit_event
        # per tenant prefix: the epoch check to send ("=<marker seen>"), losses in force
        self._marks: dict[str, str] = {}
        self._losses: dict[str, _Loss] = {}
        self._id = secrets.token_hex(6)
        self._unknown_mark = "?" + self._id
        # how long ``wait`` mode waits (ms): the longest window of any rule this process has
        # sent, and at least a day (a DAILY_CAP it has not seen yet may exist)
        self._longest_ms = _LONGEST_DAY_MS
        # when a reservation's caller gives up, on each tenant's Redis clock
        self._late = Lateness()
        self._calls = 0  # script calls made: with ``_id``, each call's id (_call_id)
        #: Why Redis refuses writes (READONLY replica, OOM, ...), from the last script call
        #: it answered; None once a call went through. PING still answers while Redis
        #: refuses every reservation, so readiness asks this too (see ping).
        self.refusing: str | None = None

    @classmethod
    def from_settings(
        cls,
        settings: CounterSettings,
        *,
        clock: Clock | None = None,
        on_state_lost: Callable[[CounterStateChange], None] | None = None,
        on_audit_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> RedisCounterStore:
        if not settings.url:
            raise ValueError("RedisCounterStore needs settings.url")
        return cls(
            make_client(settings),
            clock=clock,
            event_bucket_seconds=settings.event_bucket_seconds,
            event_retention_seconds=settings.event_retention_seconds,
            max_concurrency=settings.pool_size,
            state_lost=settings.state_lost,
            on_state_lost=on_state_lost,
            on_audit_event=on_audit_event,
            history_seconds=settings.history_seconds,
        )

    # -- the interface ---------------------------------------------------------------

    async def reserve(
        self, tenant: str, rules: Sequence[CounterRule], *, timeout: float
    ) -> ReserveResult:
        return (await self.reserve_batch(tenant, [rules], timeout=timeout))[0]

    async def reserve_batch(
        self, tenant: str, items: Sequence[Sequence[CounterRule]], *, timeout: float
    ) -> list[ReserveResult]:
        if len(items) == 1:
            args = self._encode_one(items[0])  # validates on a template miss
        else:
            validate_items(items, self.event_retention_seconds)
            if not items:
                return []
            args = self._encode(items)
        prefix = keys.tenant_prefix(tenant)
        args.append(self._marks.get(prefix) or self._mark(prefix))
        args.append("0")
        reply = await self._reserve_in_time(prefix, args, timeout)
        if reply[2] in (b"=", "="):
            return self._decode_repeated(items, reply)
        if reply[2]:
            self._epoch_note(tenant, prefix, reply[2])
        elif self._losses:
            self._marker_back(tenant, prefix)
        return self._decode(items, reply)

    async def _reserve_in_time(self, prefix: str, args: list[str | int], timeout: float
                               ) -> Any:
        """The reservation script, told when its caller gives up (see lateness.py): once
        more when it was refused as late while the caller still waited (a clock jump)."""
        if self._op_timeout is not None and self._op_timeout < timeout:
            timeout = self._op_timeout  # what _run waits at most
        call = self._call_id()
        for attempt in (1, 2):
            sent = time.monotonic()
            reply = await self._run(RESERVE, prefix,
                                    [*args, self._late.expires(prefix, sent, timeout), call],
                                    timeout)
            late = reply[2] in (b"~", "~")
            self._late.observe(prefix, sent, int(reply[0]), stale=late)
            if not late:
                return reply
            timeout -= time.monotonic() - sent
            if attempt == 2 or timeout <= 0:
                break
        raise CounterStoreUnavailable("counter store: Redis ran the reservation only after"
                                      " the caller's time was up; nothing was reserved")

    def _call_id(self) -> str:
        """An id for one script call, sent with it: the script does the call's work once,
        however often the call reaches Redis (a client retries a request whose connection
        failed, and the request may have run: reserve.lua, record.lua)."""
        self._calls += 1
        return f"{self._id}.{self._calls}"

    @staticmethod
    def _decode_repeated(items: Sequence[Sequence[CounterRule]], reply: Any
                         ) -> list[ReserveResult]:
        """The reply of a reservation Redis had run already (its first reply was lost with
        its connection): the items it allowed are allowed (and were counted once); the
        reasons of those it denied are not kept, so they are denied as unknown."""
        flags = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        if len(flags) != len(items):
            raise ValueError(f"reserve script answered {len(flags)} items for {len(items)}")
        return [ReserveResult.allow() if f == "1" else ReserveResult(
            False, rules[0].rule_id if rules else None, "COUNTER_STORE_UNAVAILABLE",
            "counter store: the reply to this reservation was lost with its connection and"
            " the retry found it denied; its reason is not known") for rules, f in
            zip(items, flags, strict=True)]

    async def peek(
        self, tenant: str, rules: Sequence[CounterRule], *, timeout: float
    ) -> ReserveResult:
        """The verdict ``reserve`` would give, consuming nothing (the script's dry run)."""
        prefix = keys.tenant_prefix(tenant)
        args = [*self._encode_one(rules), self._marks.get(prefix) or self._mark(prefix), "1"]
        reply = await self._run(RESERVE, prefix, args, timeout)
        if reply[2]:
            self._epoch_note(tenant, prefix, reply[2])
        elif self._losses:
            self._marker_back(tenant, prefix)
        return self._decode([rules], reply)[0]

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
        within the event retention: False when every scope given had it already ("" is no
        key). See record.lua."""
        scopes = [keys.esc(s) for s in distinct(scope_keys)]
        if not scopes:
            return False
        prefix = keys.tenant_prefix(tenant)
        code = EVENT_CODE[kind]
        idem = keys.esc(event_key) if event_key else ""
        args: list[str | int] = [
            self._offset_ms(), code, self._bucket_ms, self._retention_ms, idem,
            self._call_id(), *scopes
        ]
        return bool(await self._run(RECORD, prefix, args, timeout))

    async def ping(self, *, timeout: float = 1.0) -> bool:
        """True when Redis answers (and the scripts are loaded); never raises. While the
        last reservation was refused (``refusing``), a write is tried too: a read-only
        replica or a Redis out of memory answers PING yet denies every counter rule."""
        try:
            async with asyncio.timeout(timeout):
                if self._fast is not None:
                    pong = await self._fast.call(_PING)
                    if isinstance(pong, ReplyError):
                        return False
                else:
                    await self.client.ping()
                if not self._loaded:
                    await self._load()
                if self.refusing is not None:
                    await self._probe_write()
            return True
        except (TimeoutError, RedisError, OSError, ReplyError):
            return False

    async def _probe_write(self) -> None:
        """A write that expires at once (its own key, never a counter's): raises while Redis
        still refuses writes, clears ``refusing`` once it takes them again."""
        key = f"pdp:{{pdp-ready}}:{self._id}"
        try:
            if self._fast is not None:
                reply = await self._fast.call(pack(b"SET", key.encode(), b"1", b"PX", b"1000"))
                if isinstance(reply, ReplyError):
                    raise reply
            else:
                await self.client.set(key, "1", px=1000)
        except (RedisError, ReplyError) as e:
            self._note_refusal(e)
            raise
        self.refusing = None

    def _note_refusal(self, e: Exception) -> None:
        """Remember a reply that says Redis will not write now (see ``refusing``)."""
        text = _reply_text(e)
        if text.startswith(_REFUSALS):
            self.refusing = text[:200]

    async def eviction_policy(self, *, timeout: float = 1.0) -> str | None:
        """Redis's ``maxmemory-policy`` when it may evict keys (a ``maxmemory`` is set and
        the policy is not ``noeviction``), ``"noeviction"`` when it may not, None when it
        cannot be read (from INFO, which managed services that block CONFIG still answer;
        on a cluster, the first node that may evict decides). Eviction drops counter keys
        under memory pressure (the ``volatile-*`` policies too: counter keys have a TTL),
        which reopens caps and cooldowns without a trace: the epoch marker has no TTL and
        stays, so no loss is noticed. Without a ``maxmemory`` Redis never evicts."""
        try:
            async with asyncio.timeout(timeout):
                info = await self.client.info("memory")
        except (TimeoutError, RedisError, OSError):
            return None
        sections = [info] if "maxmemory_policy" in info else [
            v for v in info.values() if isinstance(v, dict)]
        policies = [str(v["maxmemory_policy"]) for v in sections if "maxmemory_policy" in v]
        evicting = [str(v["maxmemory_policy"]) for v in sections
                    if v.get("maxmemory_policy", "noeviction") != "noeviction"
                    and int(v.get("maxmemory", 0) or 0) > 0]
        if evicting:
            return evicting[0]
        return "noeviction" if policies else None

    async def load_scripts(self, *, timeout: float) -> None:
        """Load the scripts now (at start-up) instead of on the first decision."""
        try:
            async with asyncio.timeout(timeout):
                await self._load()
        except (TimeoutError, RedisError, OSError, ReplyError) as e:
            raise CounterStoreUnavailable(f"counter store: cannot load scripts: {e}") from e

    async def close(self) -> None:
        if self._fast is not None:
            await self._fast.close()
        await self.client.aclose()

    # -- the epoch marker ------------------------------------------------------------------

    def _mark(self, prefix: str) -> str:
        """The epoch check to send when none is cached: first use, or a loss in force."""
        loss = self._losses.get(prefix)
        if loss is None:
            return self._unknown_mark
        if self.state_lost == "wait" and self._now_ms() >= loss.noticed_ms + self._longest_ms:
            return f"^{loss.previous} {self._id}"
        return "=" + loss.previous if loss.previous else self._unknown_mark

    def _epoch_note(self, tenant: str, prefix: str, note: bytes | str) -> None:
        """Act on the script's epoch note: remember a new marker, or raise on a loss."""
        text = note.decode() if isinstance(note, bytes) else str(note)
        if text[0] == "+":
            marker = text[1:]
            self._marks[prefix] = "=" + marker
            loss = self._losses.pop(prefix, None)
            if loss is not None:
                how = "wait" if marker.startswith("w:") else "ack"
                self._restored(tenant, loss, marker, how)
            return
        found = text[1:]
        loss = self._losses.get(prefix)
        if loss is None:
            previous = self._marks.pop(prefix, "=")[1:]
            loss = self._losses[prefix] = _Loss(self._now_ms(), previous, found)
            self._noticed(tenant, loss)
        raise CounterStateLost(self._lost_message(tenant, loss), tenant=tenant)

    def _marker_back(self, tenant: str, prefix: str) -> None:
        """A call in a loss passed the check unchanged: the marker seen is back."""
        loss = self._losses.pop(prefix, None)
        if loss is not None:
            self._marks[prefix] = "=" + loss.previous
            self._restored(tenant, loss, loss.previous, "marker_back")

    def _resumes_at(self, loss: _Loss) -> float | None:
        if self.state_lost != "wait":
            return None
        return (loss.noticed_ms + self._longest_ms) / 1000

    def _lost_message(self, tenant: str, loss: _Loss) -> str:
        what = "no longer holds" if not loss.found else "holds a new marker instead of"
        head = (f"counter state lost for tenant {tenant!r}: the counter store {what} the"
                " epoch marker this sidecar saw (a Redis restart without persistence or a"
                " failover to an empty replica?), so caps and cooldowns may have been reset;")
        resumes = self._resumes_at(loss)
        if resumes is not None:
            when = _iso(resumes)
            return (f"{head} counter-bound rules deny until {when} (state_lost=wait: the"
                    " longest counter window) or until an admin runs `pdp counters ack"
                    " --redis-url URL`")
        return (f"{head} counter-bound rules deny until an admin checks the store and runs"
                " `pdp counters ack --redis-url URL` (add --cluster for Redis Cluster)")

    def _noticed(self, tenant: str, loss: _Loss) -> None:
        change = CounterStateChange(
            "lost", tenant, loss.noticed_ms / 1000, loss.previous, loss.found,
            self.state_lost, resumes_at=self._resumes_at(loss),
        )
        log.error("%s", self._lost_message(tenant, loss))
        self._emit(change, metric=True)

    def _restored(self, tenant: str, loss: _Loss, marker: str, how: str) -> None:
        change = CounterStateChange(
            "restored", tenant, self._now_ms() / 1000, loss.previous, marker,
            self.state_lost, how=how,
        )
        log.warning("counter state for tenant %r accepted again (%s): counter-bound rules"
                    " apply from the store's current counts", tenant, how)
        self._emit(change, metric=False)

    def _emit(self, change: CounterStateChange, *, metric: bool) -> None:
        hooks: list[Callable[[], object]] = []
        if metric and self.on_state_lost is not None:
            hooks.append(functools.partial(self.on_state_lost, change))
        if self.on_audit_event is not None:
            hooks.append(functools.partial(self.on_audit_event, change.audit_event()))
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("counter state hook failed")

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def state_losses(self) -> dict[str, float]:
        """Tenants whose counter state loss is in force -> when it was noticed (seconds)."""
        return {keys.unesc(p[5:-1]): loss.noticed_ms / 1000 for p, loss in self._losses.items()}

    # -- encoding -----------------------------------------------------------------------

    def _offset_ms(self) -> int:
        return round(self._offset() * 1000) if self._offset else 0

    def _encode_one(self, rules: Sequence[CounterRule]) -> list[str | int]:
        """:meth:`_encode` of one decision, from a cached template of its rule shapes.

        Decisions repeat the same rules with other scopes, so everything but the scopes
        (rule definitions, day tables, validation) is built once per rule shape and reused
        until the day tables it holds go stale.
        """
        key = tuple(map(_shape, rules))
        now_ms = int(self.clock.now() * 1000)
        hit = self._templates.get(key)
        if hit is None or not hit[0] <= now_ms < hit[1]:
            hit = self._template(rules, key, now_ms)
        return [
            self._offset_ms(),
            hit[2] + ",".join([
                f"{i},{_json_str(keys.esc(r.scope_key))}"
                for i, r in zip(hit[3], rules, strict=True)
            ]) + "]]]",
        ]

    def _template(
        self, rules: Sequence[CounterRule], key: tuple[Any, ...], now_ms: int
    ) -> tuple[int, int, str, list[int]]:
        validate_items([rules], self.event_retention_seconds)
        tz_index, defs, body = self._parts([rules])
        self._note_longest(defs)
        tzs = [self._days(name) for name in tz_index]
        start, end = -(2**63), 2**63
        for name in tz_index:
            day = self._day_cache[name]
            start, end = max(start, day[0]), min(end, day[1])
        head = _JSON.encode([self._bucket_ms, tzs, defs])[:-1] + ",[["
        hit = (min(start, now_ms), end, head, [int(i) for i in body[0][0::2]])
        if len(self._templates) >= 4096:
            self._templates.clear()
        self._templates[key] = hit
        return hit

    def _encode(self, items: Sequence[Sequence[CounterRule]]) -> list[str | int]:
        """``[offset_ms, json]``: distinct rule definitions once, then (definition, scope)."""
        tz_index, defs, body = self._parts(items)
        self._note_longest(defs)
        tzs = [self._days(name) for name in tz_index]
        payload = _JSON.encode([self._bucket_ms, tzs, defs, body])
        return [self._offset_ms(), payload]

    def _note_longest(self, defs: list[tuple[Any, ...]]) -> None:
        """Keep the longest rule window seen: ``wait`` mode waits at least that long."""
        longest = max((int(d[3]) for d in defs), default=0)
        if longest > self._longest_ms:
            self._longest_ms = longest

    def _parts(
        self, items: Sequence[Sequence[CounterRule]]
    ) -> tuple[dict[str, int], list[tuple[Any, ...]], list[list[Any]]]:
        """Timezones in use, distinct rule definitions, per item (definition, scope)."""
        tz_index: dict[str, int] = {}
        def_index: dict[tuple[Any, ...], int] = {}
        defs: list[tuple[Any, ...]] = []
        body: list[list[Any]] = []
        # The agents of a step mostly carry the very same rule objects: each is worked out
        # once (its definition index and escaped scope), keyed by identity (held alive by
        # ``items`` for the whole call). Per-agent rules (a cooldown per agent) are distinct
        # objects of a few shapes: the definition is worked out once per shape.
        seen: dict[int, tuple[int, str]] = {}
        by_shape: dict[tuple[Any, ...], int] = {}
        for rules in items:
            flat: list[Any] = []
            for r in rules:
                hit = seen.get(id(r))
                if hit is None:
                    shape = _shape(r)
                    i = by_shape.get(shape)
                    if i is None:
                        d = _definition(r, self._history_ms)
                        if r.kind is CounterKind.DAILY_CAP:
                            d = (*d[:-1], tz_index.setdefault(r.timezone, len(tz_index) + 1))
                        i = def_index.get(d)
                        if i is None:
                            i = def_index[d] = len(def_index) + 1
                            defs.append(d)
                        by_shape[shape] = i
                    hit = seen[id(r)] = (i, keys.esc(r.scope_key))
                flat.extend(hit)
            body.append(flat)
        return tz_index, defs, body

    def _days(self, tz: str) -> list[int | str]:
        """The day table for ``tz`` as the script wants it, cached until the day ends."""
        now_ms = int(self.clock.now() * 1000)
        hit = self._day_cache.get(tz)
        if hit is not None and hit[0] <= now_ms < hit[1]:
            return hit[2]
        table = day_table(tz, now_ms / 1000)
        located = table.locate(now_ms)
        assert located is not None
        start = table.bounds_ms[table.labels.index(located[0])]
        flat: list[int | str] = [*table.bounds_ms, *table.labels]
        self._day_cache[tz] = (start, located[1], flat)
        return flat

    def _decode(self, items: Sequence[Sequence[CounterRule]], reply: Any) -> list[ReserveResult]:
        now = int(reply[0])
        flags = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        if len(flags) != len(items):
            raise ValueError(f"reserve script answered {len(flags)} items for {len(items)}")
        denied = iter(reply[3:])
        out: list[ReserveResult] = []
        allow = ReserveResult.allow()
        for rules, flag in zip(items, flags, strict=True):
            if flag == "1":
                out.append(allow)
                continue
            r = next(denied)
            rule = rules[int(r[0]) - 1]
            retry = int(r[1])
            label = r[4].decode() if isinstance(r[4], bytes) else str(r[4])
            out.append(
                messages.deny(rule, now, None if retry < 0 else retry, int(r[2]), int(r[3]), label)
            )
        return out

    # -- calling Redis --------------------------------------------------------------------

    async def _load(self) -> None:
        for s in (RESERVE, RECORD):
            if self._fast is not None:
                reply = await self._fast.call(s.load_cmd)
                if isinstance(reply, ReplyError):
                    raise reply
            else:
                await self.client.execute_command("SCRIPT LOAD", s.text)
        self._loaded = True
        # the Redis clock, for reservations of tenants not called yet (lateness.py)
        sent = time.monotonic()
        if self._fast is not None:
            t = await self._fast.call(_TIME)
        else:
            t = await self.client.execute_command("TIME")
        if isinstance(t, list | tuple) and len(t) == 2:
            self._late.observe_server(sent, int(t[0]) * 1000 + int(t[1]) // 1000
                                      + self._offset_ms())

    async def _fast_evalsha(self, fast: FastRedis, script: _Script, data: bytes,
                            sent: InFlight | None = None) -> Any:
        if not self._loaded:
            await self._load()
        reply = await fast.call(data, sent)
        if isinstance(reply, ReplyError):
            if str(reply).startswith("NOSCRIPT"):
                self._loaded = False
                await self._load()
                reply = await fast.call(data, sent)
            if isinstance(reply, ReplyError):
                raise reply
        return reply

    async def _evalsha(self, script: _Script, key: str, args: list[str | int]) -> Any:
        if not self._loaded:
            await self._load()
        try:
            return await self.client.execute_command("EVALSHA", script.sha, 1, key, *args)
        except NoScriptError:
            self._loaded = False
            await self._load()
            return await self.client.execute_command("EVALSHA", script.sha, 1, key, *args)

    @staticmethod
    async def _late_reply(sent: InFlight) -> tuple[bool, Any]:
        """After a timeout: the reply, if it was there or comes within LATE_GRACE_S (a loop
        that was stopped reads its sockets only on its next turns; a call Redis resumed
        right at the give-up instant lateness.py sent commits, and answers, just after it).
        Either is a reservation made: taken, it is not a denied push that used up a slot."""
        try:
            arrived, reply = sent.arrived()
            if not arrived and sent.listening:
                until = time.monotonic() + LATE_GRACE_S
                turns = 0
                while True:  # a few bare turns (what is in the socket), then short naps
                    await asyncio.sleep(0 if turns < 3 else 0.0005)
                    turns += 1
                    arrived, reply = sent.arrived()
                    if arrived or not sent.listening or time.monotonic() >= until:
                        break
            return arrived, reply
        finally:
            sent.release()

    async def _run(self, script: _Script, key: str, args: list[str | int], timeout: float) -> Any:
        """One script call, bounded by ``timeout``; every failure is CounterStoreUnavailable."""
        if timeout <= 0:
            raise CounterStoreUnavailable("counter store: no time left in the decision deadline")
        fast = self._fast
        if fast is not None:
            # one timeout for the whole call (pool, connect, round trip); op_timeout is
            # the backstop for callers that allow more
            op = self._op_timeout
            if op is not None and op < timeout:
                timeout = op
            data = script.call(key, args)
            sent = InFlight()
            try:
                async with asyncio.timeout(timeout):
                    reply = await self._fast_evalsha(fast, script, data, sent)
                self.refusing = None
                return reply
            except TimeoutError as e:
                arrived, reply = await self._late_reply(sent)
                if arrived and not isinstance(reply, ReplyError):
                    return reply  # in time; only this loop was late to see it (InFlight)
                raise CounterStoreUnavailable(
                    f"counter store: Redis did not answer within {timeout * 1000:.0f} ms"
                ) from e
            except ReplyError as e:
                self._note_refusal(e)
                raise CounterStoreUnavailable(
                    f"counter store: Redis unavailable: ResponseError: {_reply_text(e)}"
                ) from e
            except OSError as e:
                raise CounterStoreUnavailable(f"counter store: Redis unreachable: {e}") from e
        try:
            async with asyncio.timeout(timeout):
                async with self._slots:
                    reply = await self._evalsha(script, key, args)
            self.refusing = None
            return reply
        except TimeoutError as e:
            raise CounterStoreUnavailable(
                f"counter store: Redis did not answer within {timeout * 1000:.0f} ms"
            ) from e
        except RedisError as e:
            self._note_refusal(e)
            raise CounterStoreUnavailable(
                f"counter store: Redis unavailable: {type(e).__name__}: {_reply_text(e)}"
            ) from e
        except OSError as e:
            raise CounterStoreUnavailable(f"counter store: Redis unreachable: {e}") from e


_PING = pack(b"PING")
#: Error replies of a Redis that answers but will not write (a replica, out of memory,
#: persistence failing, too few replicas, a replica cut off from its master).
_REFUSALS = ("READONLY", "OOM", "MISCONF", "NOREPLICAS", "MASTERDOWN")
#: How long a timed-out call listens for its reply (see RedisCounterStore._late_reply).
LATE_GRACE_S = 0.003
_TIME = pack(b"TIME")


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
_json_str = json.encoder.encode_basestring_ascii


def _shape(r: CounterRule) -> tuple[Any, ...]:
    """Everything of a rule that the request encodes, except its scope."""
    return (r.kind._value_, r.rule_id, r.counter_id, r.max_count, r.window_seconds,
            r.min_interval_seconds, r.timezone, r.threshold_percent, r.min_deployments,
            r.history_seconds)


def _reply_text(e: Exception) -> str:
    text = str(e)
    return text.removeprefix("PDPSKEW ") if text.startswith("PDPSKEW") else text


_WINDOWED = (CounterKind.VELOCITY, CounterKind.ROLLBACK_RATE)


_KEPT = (CounterKind.COOLDOWN, CounterKind.VELOCITY)


@functools.lru_cache(maxsize=4096)
def _definition(r: CounterRule, history_ms: int) -> tuple[Any, ...]:
    """What the script needs of a rule (its scope aside); rules repeat, so cache it.
    The last entry is the time zone's index (set by the caller for DAILY_CAP)."""
    dur = r.window_seconds if r.kind in _WINDOWED else r.min_interval_seconds
    keep = keep_ms(r, history_ms) if r.kind in _KEPT else to_ms(dur)
    most = keep_count(r) if r.kind is CounterKind.VELOCITY else 0
    return (
        _KIND_CODE[r.kind], keys.esc(r.counter), r.max_count, to_ms(dur),
        float(r.threshold_percent), r.min_deployments, keep, most, 0,
    )


def make_client(settings: CounterSettings) -> RedisClient:
    """A redis-py asyncio client (standalone or cluster) for ``settings``.

    No client-side retries beyond one immediate reconnect: the decision deadline is short,
    and a stale pooled connection (after a Redis restart) should cost one fast retry,
    not a failed decision.
    """
    url = settings.url
    assert url is not None
    common: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.op_timeout,
    }
    if not url.startswith("unix://"):
        common["socket_keepalive"] = True  # notice a silently dead peer (TCP only)
    if url.startswith("rediss://"):
        if settings.tls_ca_file:
            common["ssl_ca_certs"] = settings.tls_ca_file
        if settings.tls_cert_file:
            common["ssl_certfile"] = settings.tls_cert_file
        if settings.tls_key_file:
            common["ssl_keyfile"] = settings.tls_key_file
    if settings.cluster:
        if url.startswith("unix://"):
            raise ValueError("Redis Cluster cannot be reached over a unix socket URL")
        return RedisCluster.from_url(
            url,
            max_connections=settings.pool_size,
            retry=Retry(NoBackoff(), 1),
            **common,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.pool_size,
        timeout=settings.op_timeout,
        retry=Retry(NoBackoff(), 1),
        **common,
    )
    return aioredis.Redis(connection_pool=pool)
