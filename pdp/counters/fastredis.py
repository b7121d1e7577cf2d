"""A minimal RESP2 client for the counter store's hot path on a single Redis node.

Why not redis-py here
    A reservation is one ``EVALSHA``. Through redis-py asyncio that costs, besides the
    round trip, generic command packing, a pool checkout and release, several nested
    timeouts and the parser's stream reads -- together about as much as the round trip
    itself. This module keeps only what one script call needs: a small pool of plain
    asyncio transports, hiredis (the same C parser redis-py uses) fed straight from
    ``data_received``, and requests the caller packs itself.

What it keeps from redis-py
    The connection parameters: :meth:`FastRedis.from_client` reads them from a redis-py
    client's own pool (host/port, unix socket path, TLS context, username/password, db,
    timeouts, keepalive), so a URL means exactly what it means to redis-py. Anything it
    does not handle (Redis Cluster, credential providers, client names, unknown connection
    classes) makes ``from_client`` return None and the store stays on redis-py.

Failure
    The caller bounds each call with its own ``asyncio.timeout``. A connection whose call
    was cancelled, timed out or failed in any way is closed, never reused (a late reply
    would otherwise be read as the next call's). A connection that the server closed
    while it sat idle is noticed by ``connection_lost`` and skipped; a call that fails on
    a reused connection before any reply is retried once on a fresh one (as redis-py's
    ``Retry(NoBackoff(), 1)`` does). New connections are opened lazily, so the pool heals
    by itself when Redis comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import (
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)

ReplyError = hiredis.ReplyError


def pack(*parts: bytes) -> bytes:
    """RESP array of bulk strings (arguments already encoded)."""
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%b\r\n" % (len(p), p))
    return b"".join(out)


def arg(value: str | int | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return b"%d" % value


class _Conn(asyncio.Protocol):
    """One connection: at most one request in flight, its reply parsed by hiredis."""

    __slots__ = ("closed", "late", "reader", "transport", "used", "waiter")

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Any] | None = None
        self.closed = False
        self.used = False  # has completed a call (a failure on it may be a stale socket)
        self.late: InFlight | None = None  # a timed-out call still listening (InFlight)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        w = self.waiter
        if w is None:  # nothing asked: the stream is out of step, never trust it again
            self.close()
            return
        self.reader.feed(data)
        try:
            reply = self.reader.gets()
        except hiredis.ProtocolError as e:
            self.waiter = None
            if not w.done():
                w.set_exception(ConnectionError(f"Redis protocol error: {e}"))
            self.close()
            return
        if reply is False:
            return
        self.waiter = None
        if not w.done():
            w.set_result(reply)
        elif self.late is not None:  # its caller timed out; it listens a moment longer
            self.late.late_reply = (reply,)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self.waiter
        self.waiter = None
        if w is not None and not w.done():
            w.set_exception(ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def request(self, data: bytes) -> asyncio.Future[Any]:
        """Send one packed command; the future resolves to its reply."""
        assert self.transport is not None
        fut = asyncio.get_running_loop().create_future()
        self.waiter = fut
        self.transport.write(data)
        return fut

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class InFlight:
    """Where a call's request future is kept, so a caller whose timeout fired can still
    take a reply that had arrived: when the event loop runs late (a GC pause, CPU
    throttling), the reply and the timeout fall due in the same turn, the timeout cancels
    the waiting task, and the reply (of a reservation Redis made, in time) would be lost."""

    __slots__ = ("conn", "fut", "late_reply", "pool")

    def __init__(self) -> None:
        self.fut: asyncio.Future[Any] | None = None
        # After a timeout the connection is kept (out of the pool) until ``release``: a
        # reply already in the socket (a loop stopped, SIGSTOP/SIGCONT: the wait for events
        # returns EINTR and the timer runs first) is read on the loop's next turns.
        self.conn: _Conn | None = None
        self.pool: FastRedis | None = None
        self.late_reply: tuple[Any] | None = None

    def arrived(self) -> tuple[bool, Any]:
        """(True, reply) when the reply had arrived, else (False, None)."""
        if self.late_reply is not None:
            return True, self.late_reply[0]
        fut = self.fut
        if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
            return False, None
        return True, fut.result()

    @property
    def listening(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def release(self) -> None:
        """Done listening: the kept connection is closed (its stream may be mid-reply)."""
        conn, pool = self.conn, self.pool
        self.conn = self.pool = None
        if conn is not None and pool is not None:
            conn.late = None
            pool._discard(conn)


class FastRedis:
    """A pool of up to ``max_size`` connections to one Redis node.

    Calls never wait on a semaphore when a connection is idle; when all are busy and the
    pool is full they queue (FIFO) for the next one released, within the caller's timeout.
    """

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 6379,
        path: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        max_size: int = 50,
        connect_timeout: float | None = 1.0,
        op_timeout: float | None = 1.0,
        keepalive_options: dict[int, int] | None = None,
    ) -> None:
        if (host is None) == (path is None):
            raise ValueError("FastRedis needs exactly one of host or path")
        self.host, self.port, self.path = host, port, path
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout
        self.keepalive_options = keepalive_options
        self.max_size = max_size
        hello: list[bytes] = []
        if password is not None:
            auth = [b"AUTH", *([arg(username)] if username else []), arg(password)]
            hello.append(pack(*auth))
        if db:
            hello.append(pack(b"SELECT", arg(db)))
        self._hello = hello
        self._idle: list[_Conn] = []
        self._size = 0  # connections open or opening
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._closed = False

    @classmethod
    def from_client(cls, client: object, max_size: int) -> FastRedis | None:
        """Mirror a standalone redis-py asyncio client's connection settings, or None."""
        from redis.asyncio import Redis

        if type(client) is not Redis:
            return None
        pool = client.connection_pool
        kind = pool.connection_class
        if kind not in (Connection, SSLConnection, UnixDomainSocketConnection):
            return None
        c = kind(**pool.connection_kwargs)
        if c.credential_provider is not None or c.client_name:
            return None
        pool_max = getattr(pool, "max_connections", max_size) or max_size
        common: dict[str, Any] = {
            "username": c.username,
            "password": c.password,
            "db": int(c.db or 0),
            "max_size": max(1, min(max_size, pool_max)),
            "connect_timeout": c.socket_connect_timeout,
            "op_timeout": c.socket_timeout,
        }
        if isinstance(c, UnixDomainSocketConnection):
            return cls(path=c.path, **common)
        assert isinstance(c, Connection)
        opts: dict[int, int] = c.socket_keepalive_options  # type: ignore[assignment]
        keepalive = dict(opts) if c.socket_keepalive else None
        ctx = c.ssl_context.get() if isinstance(c, SSLConnection) else None
        return cls(host=c.host, port=int(c.port), ssl_context=ctx,
                   keepalive_options=keepalive, **common)

    # -- calls ----------------------------------------------------------------------------

    async def call(self, data: bytes, sent: InFlight | None = None) -> Any:
        """Send one packed command and return its reply (an error reply is returned as a
        :class:`ReplyError` value, not raised). Run it under the caller's timeout; with
        ``sent``, the request's future is kept there (see :class:`InFlight`)."""
        idle = self._idle
        conn = None
        while idle:
            c = idle.pop()
            if not c.closed:
                conn = c
                break
            self._forget()
        if conn is None:
            conn = await self._acquire()
        try:
            fut = conn.request(data)
            if sent is not None:
                sent.fut = fut
            reply = await fut
        except ConnectionError:
            self._discard(conn)
            if not conn.used or self._closed:
                raise
            conn = await self._acquire()  # one retry: the idle socket was stale
            try:
                fut = conn.request(data)
                if sent is not None:
                    sent.fut = fut
                reply = await fut
            except BaseException:
                self._discard(conn)
                raise
        except asyncio.CancelledError:
            if sent is not None and not conn.closed and conn.waiter is not None:
                conn.late, sent.conn, sent.pool = sent, conn, self  # kept: see InFlight
            else:
                self._discard(conn)
            raise
        except BaseException:
            self._discard(conn)
            raise
        conn.used = True
        self._release(conn)
        return reply

    async def close(self) -> None:
        self._closed = True
        for c in self._idle:
            c.close()
        self._idle.clear()
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_exception(ConnectionError("counter store closed"))

    # -- the pool -------------------------------------------------------------------------

    async def _acquire(self) -> _Conn:
        while True:
            if self._closed:
                raise ConnectionError("counter store closed")
            while self._idle:
                c = self._idle.pop()
                if not c.closed:
                    return c
                self._forget()
            if self._size < self.max_size:
                self._size += 1
                try:
                    return await self._open()
                except BaseException:
                    self._forget()
                    raise
            fut: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                conn = await fut
            except BaseException:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    handed = fut.result()  # handed over just as we were cancelled: pass on
                    if handed is not None:
                        self._release(handed)
                    else:
                        self._wake()
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(fut)
                raise
            if conn is not None and not conn.closed:
                return conn
            if conn is not None:
                self._forget()  # handed a connection that died meanwhile
            # None: a slot was freed; loop and open one

    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            if self.path is not None:
                _, conn = await loop.create_unix_connection(_Conn, self.path)
            else:
                assert self.host is not None
                _, conn = await loop.create_connection(
                    _Conn, self.host, self.port, ssl=self.ssl_context
                )
                self._tune(conn)
            try:
                for cmd in self._hello:
                    reply = await conn.request(cmd)
                    if isinstance(reply, ReplyError):
                        raise ConnectionError(f"Redis refused the connection setup: {reply}")
            except BaseException:
                conn.close()
                raise
        return conn

    def _tune(self, conn: _Conn) -> None:
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        if sock is None:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.keepalive_options is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for k, v in self.keepalive_options.items():
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_TCP, k, v)

    def _release(self, conn: _Conn) -> None:
        if self._closed or conn.closed:
            self._discard(conn)
            return
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return
        self._idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        conn.close()
        self._forget()

    def _forget(self) -> None:
        """One connection fewer: let a queued caller open a replacement."""
        self._size -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return
