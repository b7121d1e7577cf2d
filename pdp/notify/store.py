"""Where notifications wait and where the daily email slots live: a SQLite file (the
embedded default, or in memory) or Redis (a fleet). Both keep the same two things:

* an outbox: per channel, a FIFO of :class:`Delivery` records. Only a channel's head is
  ever attempted (that keeps a channel's notifications in order), by one holder at a time
  (Redis: a lock key with a lease, so sidecars share the work; SQLite: one process);
* email slots: per (tenant, policy, UTC day), ``sending`` (leased by one attempt) or
  ``sent``. A slot becomes ``sent`` only after the mail went out; a failed attempt frees
  it, and a crashed one's lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

T = TypeVar("T")

# Answers of claim_email.
CLAIMED = "claimed"  # this attempt holds the slot: send, then confirm or release
ALREADY_SENT = "sent"  # a mail went out today: suppress
BUSY = "busy"  # another attempt is sending right now: look again later


class StateUnavailable(Exception):
    """The store could not be read or written (Redis down, disk error)."""


@dataclass(slots=True)
class Delivery:
    """One notification for one channel, rendered (what goes on the wire is fixed when it
    is made, so every attempt sends the same bytes and the same signature)."""

    id: str
    channel: str  # "<kind>:<hash>": the ordering key
    kind: str
    tenant: str
    policy: str
    decision_id: str
    trace_id: str
    created: float  # epoch seconds
    give_up_at: float
    request: dict[str, Any]
    attempts: int = 0
    next_at: float = 0.0
    error: str = ""

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @staticmethod
    def loads(text: str | bytes) -> Delivery:
        return Delivery(**json.loads(text))


def end_of_utc_day(day: str) -> float:
    """Epoch seconds at which the UTC day ``YYYY-MM-DD`` ends."""
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return (start + timedelta(days=1)).timestamp()


class NotifyState(Protocol):
    """What the notifier needs of its store; every method may raise StateUnavailable."""

    #: other processes add to the outbox too: poll it, not only when woken locally
    shared: bool

    async def push(self, items: Sequence[Delivery]) -> None: ...

    async def heads(self, now: float, holder: str, lease_s: float, busy: Collection[str],
                    limit: int) -> tuple[list[Delivery], float | None]:
        """Up to ``limit`` due channel heads (channels in ``busy`` skipped), now held by
        ``holder``; and the earliest ``next_at`` of the heads not due yet."""
        ...

    async def finish(self, d: Delivery, holder: str) -> None:
        """Remove ``d`` (its channel's head) and let the channel go."""
        ...

    async def retry_later(self, d: Delivery, holder: str) -> None:
        """Store ``d``'s new attempts / next_at / error in place, and let the channel go."""
        ...

    async def backlog(self) -> dict[str, int]:
        """Deliveries waiting, by channel kind."""
        ...

    async def claim_email(self, tenant: str, policy: str, day: str, token: str,
                          lease_s: float) -> str: ...

    async def confirm_email(self, tenant: str, policy: str, day: str, token: str) -> None: ...

    async def release_email(self, tenant: str, policy: str, day: str, token: str) -> None: ...

    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_channel ON outbox (channel, seq);
CREATE TABLE IF NOT EXISTS email_slots (
    tenant TEXT NOT NULL,
    policy TEXT NOT NULL,
    day TEXT NOT NULL,
    state TEXT NOT NULL,
    token TEXT NOT NULL,
    lease_until REAL NOT NULL,
    PRIMARY KEY (tenant, policy, day)
);
"""


class SqliteNotifyState:
    """The embedded default: one SQLite file (``":memory:"``: not durable).

    Calls run in a thread (the disk is never waited for on the event loop), one at a time.
    The file is created owner-only: rendered deliveries carry the channels' credentials
    (webhook signatures' inputs, routing keys, chat URLs).
    """

    shared = False

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=5.0)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    async def _run(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return fn()
                except sqlite3.Error as e:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise StateUnavailable(f"notification store {self.path}: {e}") from None
        return await asyncio.to_thread(locked)

    async def push(self, items: Sequence[Delivery]) -> None:
        rows = [(d.id, d.channel, d.kind, d.dumps()) for d in items]

        def run() -> None:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox (id, channel, kind, data) VALUES (?, ?, ?, ?)",
                rows)
            self._db.execute("COMMIT")
        await self._run(run)

    async def heads(self, now: float, holder: str, lease_s: float, busy: Collection[str],
                    limit: int) -> tuple[list[Delivery], float | None]:
        def run() -> tuple[list[Delivery], float | None]:
            rows = self._db.execute(
                "SELECT o.channel, o.data FROM outbox o JOIN (SELECT MIN(seq) AS s FROM"
                " outbox GROUP BY channel) h ON o.seq = h.s ORDER BY o.seq").fetchall()
            due: list[Delivery] = []
            later: float | None = None
            for channel, data in rows:
                if channel in busy:
                    continue
                d = Delivery.loads(data)
                if d.next_at > now:
                    later = d.next_at if later is None else min(later, d.next_at)
                elif len(due) < limit:
                    due.append(d)
            return due, later
        return await self._run(run)

    async def finish(self, d: Delivery, holder: str) -> None:
        await self._run(lambda: self._db.execute("DELETE FROM outbox WHERE id = ?", (d.id,)))

    async def retry_later(self, d: Delivery, holder: str) -> None:
        data = d.dumps()
        await self._run(lambda: self._db.execute(
            "UPDATE outbox SET data = ? WHERE id = ?", (data, d.id)))

    async def backlog(self) -> dict[str, int]:
        def run() -> dict[str, int]:
            return {k: int(n) for k, n in self._db.execute(
                "SELECT kind, COUNT(*) FROM outbox GROUP BY kind")}
        return await self._run(run)

    async def claim_email(self, tenant: str, policy: str, day: str, token: str,
                          lease_s: float) -> str:
        def run() -> str:
            now = time.time()
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM email_slots WHERE day < ?", (day,))  # earlier days
            row = self._db.execute(
                "SELECT state, token, lease_until FROM email_slots WHERE tenant = ? AND"
                " policy = ? AND day = ?", (tenant, policy, day)).fetchone()
            if row is not None and row[0] == "sent":
                answer = ALREADY_SENT
            elif row is not None and row[1] != token and row[2] > now:
                answer = BUSY
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO email_slots VALUES (?, ?, ?, 'sending', ?, ?)",
                    (tenant, policy, day, token, now + lease_s))
                answer = CLAIMED
            self._db.execute("COMMIT")
            return answer
        return await self._run(run)

    async def confirm_email(self, tenant: str, policy: str, day: str, token: str) -> None:
        await self._run(lambda: self._db.execute(
            "INSERT OR REPLACE INTO email_slots VALUES (?, ?, ?, 'sent', ?, 0)",
            (tenant, policy, day, token)))

    async def release_email(self, tenant: str, policy: str, day: str, token: str) -> None:
        await self._run(lambda: self._db.execute(
            "DELETE FROM email_slots WHERE tenant = ? AND policy = ? AND day = ? AND"
            " state = 'sending' AND token = ?", (tenant, policy, day, token)))

    async def close(self) -> None:
        with self._lock:
            self._db.close()


# -- Redis ---------------------------------------------------------------------------------
# Keys: "pdp:notify:channels" (sorted set of channels that had deliveries, scored by the
# last push); per channel "pdp:notify:{<channel>}:q" (list, head first) and
# "pdp:notify:{<channel>}:lock" (holder, with a lease) — one hash slot per channel, so the
# scripts also run on a Redis Cluster; per email slot "pdp:notify:email:<day>:<tenant>:<policy>".

_HEAD = """
local h = redis.call('LINDEX', KEYS[1], 0)
if not h then return {0, ''} end
local cur = redis.call('GET', KEYS[2])
if cur and cur ~= ARGV[1] then return {1, ''} end
local d = cjson.decode(h)
if tonumber(d.next_at) > tonumber(ARGV[3]) then return {2, tostring(d.next_at)} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {3, h}
"""

# ARGV: holder, id, replacement ('' = remove the head)
_SETTLE = """
local h = redis.call('LINDEX', KEYS[1], 0)
if h and cjson.decode(h).id == ARGV[2] then
  if ARGV[3] == '' then redis.call('LPOP', KEYS[1]) else redis.call('LSET', KEYS[1], 0, ARGV[3]) end
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

_PRUNE = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) < tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
"""

_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v == 'sent' then return 'sent' end
if v and v ~= ARGV[1] then return 'busy' end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'claimed'
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

_CHANNELS = "pdp:notify:channels"
_IDLE_PRUNE_S = 3600.0  # an empty channel is forgotten after this long without a push


def _q(channel: str) -> str:
    return "pdp:notify:{" + channel + "}:q"


def _lock(channel: str) -> str:
    return "pdp:notify:{" + channel + "}:lock"


def _slot(tenant: str, policy: str, day: str) -> str:
    return f"pdp:notify:email:{day}:{tenant}:{policy}"


class RedisNotifyState:
    """A fleet's store: every sidecar pushes to and delivers from the same lists."""

    shared = True

    def __init__(self, url: str, *, cluster: bool = False, timeout_s: float = 2.0) -> None:
        opts: dict[str, Any] = {"socket_timeout": timeout_s,
                                "socket_connect_timeout": timeout_s}
        self._r: aioredis.Redis | RedisCluster = (
            RedisCluster.from_url(url, **opts) if cluster else aioredis.Redis.from_url(url,
                                                                                       **opts))

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as e:
            raise StateUnavailable(f"notification store (Redis): {type(e).__name__}: {e}"
                                   ) from None

    async def _eval(self, script: str, keys: Sequence[str], *args: Any) -> Any:
        return await self._call(self._r.eval(script, len(keys), *keys, *args))

    async def push(self, items: Sequence[Delivery]) -> None:
        pipe = self._r.pipeline(transaction=False)
        now = time.time()
        for d in items:
            pipe.rpush(_q(d.channel), d.dumps())
        for channel in dict.fromkeys(d.channel for d in items):  # after the pushes (prune)
            pipe.zadd(_CHANNELS, {channel: now})
        await self._call(pipe.execute())

    async def _channels(self) -> list[str]:
        raw = await self._call(self._r.zrange(_CHANNELS, 0, -1))
        return [c.decode() if isinstance(c, bytes) else str(c) for c in raw]

    async def heads(self, now: float, holder: str, lease_s: float, busy: Collection[str],
                    limit: int) -> tuple[list[Delivery], float | None]:
        due: list[Delivery] = []
        later: float | None = None
        for channel in await self._channels():
            if channel in busy or len(due) >= limit:
                continue
            state, value = await self._eval(_HEAD, [_q(channel), _lock(channel)], holder,
                                            int(lease_s * 1000), repr(now))
            if state == 0:
                await self._eval(_PRUNE, [_CHANNELS], channel, repr(now - _IDLE_PRUNE_S))
            elif state == 2:
                at = float(value)
                later = at if later is None else min(later, at)
            elif state == 3:
                due.append(Delivery.loads(value))
        return due, later

    async def finish(self, d: Delivery, holder: str) -> None:
        await self._eval(_SETTLE, [_q(d.channel), _lock(d.channel)], holder, d.id, "")

    async def retry_later(self, d: Delivery, holder: str) -> None:
        await self._eval(_SETTLE, [_q(d.channel), _lock(d.channel)], holder, d.id, d.dumps())

    async def backlog(self) -> dict[str, int]:
        channels = await self._channels()
        if not channels:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for c in channels:
            pipe.llen(_q(c))
        lengths = await self._call(pipe.execute())
        out: dict[str, int] = {}
        for c, n in zip(channels, lengths, strict=True):
            kind = c.partition(":")[0]
            out[kind] = out.get(kind, 0) + int(n)
        return out

    async def claim_email(self, tenant: str, policy: str, day: str, token: str,
                          lease_s: float) -> str:
        answer = await self._eval(_CLAIM, [_slot(tenant, policy, day)], "sending:" + token,
                                  int(lease_s * 1000))
        return answer.decode() if isinstance(answer, bytes) else str(answer)

    async def confirm_email(self, tenant: str, policy: str, day: str, token: str) -> None:
        # kept a minute past the day's end: a clock a little behind still finds it
        ttl = max(60, int(end_of_utc_day(day) - time.time()) + 60)
        await self._call(self._r.set(_slot(tenant, policy, day), "sent", ex=ttl))

    async def release_email(self, tenant: str, policy: str, day: str, token: str) -> None:
        await self._eval(_RELEASE, [_slot(tenant, policy, day)], "sending:" + token)

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._r.aclose()


def open_state(path: str | None, redis_url: str | None, *, cluster: bool = False,
               timeout_s: float = 2.0) -> NotifyState:
    """Redis when a URL is given (a fleet), else the SQLite file, else memory."""
    if redis_url:
        return RedisNotifyState(redis_url, cluster=cluster, timeout_s=timeout_s)
    return SqliteNotifyState(path or ":memory:")


__all__ = [
    "ALREADY_SENT",
    "BUSY",
    "CLAIMED",
    "Delivery",
    "NotifyState",
    "RedisNotifyState",
    "SqliteNotifyState",
    "StateUnavailable",
    "end_of_utc_day",
    "open_state",
]
