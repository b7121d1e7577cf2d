"""The server's outer edge: what every call goes through before anything else sees it.

:class:`EdgeInterceptor` is the outermost interceptor. It

* decodes requests itself: a request the protobuf runtime refuses (invalid UTF-8 in a string
  field, a malformed message) is INVALID_ARGUMENT saying so, where grpc's own deserializer
  would answer UNKNOWN; a decoded request with a field over its limit
  (:mod:`pdp.server.limits`) is INVALID_ARGUMENT naming the field, before authentication,
  the engine or the audit log spend anything on it;
* turns any exception a handler lets escape into INTERNAL with a short text (grpc would
  answer UNKNOWN with the exception's full text), and cuts every status text to fit;
* drains on shutdown (:meth:`EdgeInterceptor.drain`): calls already being handled run to
  their real answer, calls that start afterwards are refused at once with UNAVAILABLE (so a
  client retries elsewhere instead of waiting out the grace period), open server streams
  end with UNAVAILABLE, and :meth:`wait_idle` says when the last call in flight is done.

Health and reflection calls are decoded the same way but neither counted nor refused while
draining: load balancers must keep seeing NOT_SERVING until the port closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from pdp.engine.request import InvalidRequest
from pdp.server.auth import is_public
from pdp.server.ceilings import Ceilings, too_large
from pdp.server.ending import end
from pdp.server.lanes import BulkLane
from pdp.server.limits import (
    abort_invalid,
    check_limits,
    decode_violation,
    internal_text,
)
from pdp.server.sweep import Sweeper
from pdp.server.wirescan import WireScanner
from pdp.server.wrapping import WrappingInterceptor

log = structlog.get_logger("pdp.server")

SHUTTING_DOWN = "server is shutting down; retry on another instance"


class Refused:
    """What the deserializer returns instead of a request it cannot accept (raising there
    would make grpc answer UNKNOWN); the handler answers INVALID_ARGUMENT naming ``field``
    ("" = the whole request) and the ``problem``, with ``text`` as the status message when
    given (see :func:`abort_invalid`)."""

    __slots__ = ("field", "problem", "text")

    def __init__(self, field: str, problem: str, text: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.text = text


class Deferred:
    """A large request, not decoded yet: the handler decodes it (``deferred()``) when it is
    its turn in the bulk lane (lanes.py), instead of grpc decoding it on arrival."""

    __slots__ = ("data", "decode")

    def __init__(self, data: bytes, decode: Callable[[bytes], Any]) -> None:
        self.data = data
        self.decode = decode

    def __call__(self) -> Any:
        """The request, or :class:`Refused`."""
        return self.decode(self.data)


def safe_deserializer(deserialize: Callable[[bytes], Any] | None,
                      ceilings: Ceilings | None = None,
                      sweeper: Sweeper | None = None,
                      defer_bytes: int | None = None) -> Callable[[bytes], Any] | None:
    """``deserialize`` returning :class:`Refused` instead of raising, and checking the
    field limits of pdp's own messages: a request longer than any valid one of its type
    (``ceilings``) is refused before it is decoded, so is a large one with a field over its
    limit on the wire (wirescan.py), and a settings-bounded list (the agents of a batch) is
    counted before its elements are checked. Every request's length is told to
    ``sweeper`` (sweep.py: large requests' garbage is collected by the bytes). A request of
    ``defer_bytes`` or more (when given) comes back as :class:`Deferred`."""
    if deserialize is None:
        return None
    desc = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    limited = desc is not None and desc.full_name.startswith("pdp.")
    ceiling: int | None = None
    counted: list[tuple[str, int]] = []
    scanner: WireScanner | None = None
    if ceilings is not None and limited and desc is not None:
        ceiling = ceilings.of(desc)
        scanner = WireScanner(ceilings)
        scanner.plan(desc)  # built now, not on the first large call
        counted = [(f.name, ceilings.items[f.full_name]) for f in desc.fields
                   if f.full_name in ceilings.items]

    def decode(data: bytes) -> Any:
        if sweeper is not None:
            sweeper.note(len(data))
        if ceiling is not None and len(data) > ceiling:
            return Refused("", too_large(len(data), ceiling, desc))
        if scanner is not None and desc is not None:
            over = scanner.scan(data, desc)
            if over is not None:
                return Refused(over.path, over.problem)
        try:
            msg = deserialize(data)
        except Exception:  # DecodeError, and whatever else the runtime may raise
            field, problem = decode_violation(data, desc)
            return Refused(field, problem, problem)  # the text names the field already
        if limited:
            for name, most in counted:
                n = len(getattr(msg, name))
                if n > most:
                    return Refused(name, f"{n} entries is more than the limit of {most}")
            try:
                check_limits(msg)
            except InvalidRequest as exc:
                return Refused(exc.field, exc.problem)
        return msg
    if defer_bytes is None:
        return decode
    least = defer_bytes

    def deferring(data: bytes) -> Any:
        return Deferred(data, decode) if len(data) >= least else decode(data)
    return deferring


class EdgeInterceptor(WrappingInterceptor):
    """See the module docstring. Put it first in the server's interceptor list."""

    def __init__(self, ceilings: Ceilings | None = None, lane: BulkLane | None = None) -> None:
        self.ceilings = ceilings
        self.sweeper = Sweeper()
        self.lane = lane  # large unary requests take turns (lanes.py; the server's stack)
        self.draining = False
        self.in_flight = 0
        self._drained = asyncio.Event()  # set once draining starts
        self._idle = asyncio.Event()
        self._idle.set()
        self.arrivals = 0  # counted calls that reached the edge, refused ones included
        super().__init__()

    def drain(self) -> None:
        """Refuse calls from now on; open server streams end after their current answer."""
        log.info("draining", in_flight=self.in_flight)
        self.draining = True
        self._drained.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no counted call is in flight; False if ``timeout`` ran out first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def wait_quiet(self, quiet_s: float, timeout: float) -> bool:
        """True once no counted call has reached the edge for ``quiet_s``; False if
        ``timeout`` ran out first.

        Why, after ``wait_idle``: calls the server has received but not yet handed to a
        handler (a backlog while the event loop was busy, e.g. under a flood of steps) are
        in gRPC's queue, not in flight. Stopping the gRPC server resets every one of them
        (the caller sees CANCELLED, not "retry elsewhere"), so the server stays up until
        they have all come through here and been refused UNAVAILABLE, each at once."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while True:
            seen = self.arrivals
            left = until - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(quiet_s, left))
            if self.arrivals == seen:
                return True

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        counted = not is_public(method)
        kwargs = {"request_deserializer": safe_deserializer(handler.request_deserializer,
                                                            self.ceilings, self.sweeper),
                  "response_serializer": handler.response_serializer}

        async def admit(context: grpc.aio.ServicerContext[Any, Any], request: Any) -> None:
            if counted:
                self.arrivals += 1
            if counted and self.draining:
                log.debug("call_refused", method=method, reason="draining")
                await end(context, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            log.debug("call_started", method=method)  # filtered out below debug: ~free
            if isinstance(request, Refused):
                await abort_invalid(context, request.field, request.problem, request.text)

        async def failed(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
            log.exception("call_failed", method=method, error=repr(exc)[:1000])
            await end(context, grpc.StatusCode.INTERNAL, internal_text(exc))

        async def requests_of(requests: AsyncIterator[Any],
                              context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async for request in self._until_drained(requests, context):
                if isinstance(request, Refused):
                    await abort_invalid(context, request.field, request.problem,
                                        request.text)
                yield request

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                                  ) -> Any:
                await admit(context, request)
                if counted:
                    self._enter()
                try:
                    return await inner_uu(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await failed(context, exc)
                finally:
                    if counted:
                        self._leave()
            return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)

        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any],
                                   context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await admit(context, None)
                if counted:
                    self._enter()
                try:
                    return await inner_su(requests_of(requests, context), context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await failed(context, exc)
                finally:
                    if counted:
                        self._leave()
            return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)

        async def streamed(result: Any, context: grpc.aio.ServicerContext[Any, Any],
                           interruptible: bool) -> AsyncIterator[Any]:
            """The handler's responses; with ``interruptible`` (server streams: their
            requests are all in) waiting for the next one stops when draining starts."""
            if counted:
                self._enter()
            try:
                if not hasattr(result, "__aiter__"):  # a coroutine writing with context.write
                    await result
                    return
                source = (self._until_drained(result, context) if interruptible and counted
                          else result)
                async for response in source:
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await failed(context, exc)
            finally:
                if counted:
                    self._leave()

        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                                   ) -> AsyncIterator[Any]:
                await admit(context, request)
                async for response in streamed(inner_us(request, context), context, True):
                    yield response
            return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)

        inner_ss = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any],
                                context: grpc.aio.ServicerContext[Any, Any]
                                ) -> AsyncIterator[Any]:
            await admit(context, None)
            # A bidi stream is drained by its requests: the batch being decided is answered,
            # and the stream ends when the handler asks for the next request.
            result = inner_ss(requests_of(requests, context) if counted else requests, context)
            async for response in streamed(result, context, False):
                yield response
        return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)

    async def _until_drained(self, items: AsyncIterator[Any],
                             context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        """``items`` until draining starts; then UNAVAILABLE. Waiting for the next item is
        raced against the drain, so an idle stream does not hold the shutdown up. Each item
        is awaited in a task of its own, all of them in one shared context, so context
        variables set by the handler (the caller's principal) carry from item to item."""
        it = aiter(items)

        async def step() -> Any:
            return await anext(it)

        if self._drained.is_set():
            await end(context, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        loop = asyncio.get_running_loop()
        shared = contextvars.copy_context()
        waiter = loop.create_task(self._drained.wait())
        task: asyncio.Task[Any] | None = None
        try:
            while True:
                task = loop.create_task(step(), context=shared)
                await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                    await end(context, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            waiter.cancel()
            if task is not None:
                # the call was cancelled while waiting for the next item: the step may still
                # end with an error (the stream's end, a reset); take it, or asyncio prints
                # "Task exception was never retrieved" for every cancelled stream
                if not task.done():
                    task.cancel()
                task.add_done_callback(_retrieved)


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Take a finished task's outcome so that nothing reports it as never retrieved."""
    if not task.cancelled():
        task.exception()
