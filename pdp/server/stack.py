"""The three interceptors of ``pdp serve`` as one: RPC metrics, auth, then the edge.

Why: each interceptor wraps a call in its own coroutine, and on a unary call (the decisions:
``CheckPush``, ``CheckPushBatch``) those layers cost more together than one by one (measured
in bench/README.md, "Sixth pass"). :class:`ServerStack` does for a unary call what those
three interceptors' wrappers do (metrics outermost, then auth, then the edge), in one
coroutine with the per-method work (metric children, the method's split name) done once:

* the call is counted and timed by method, type and final status (:mod:`pdp.server.probes`);
* the call's arrival is marked (its decision's budget counts from there, arrival.py);
* the caller is authenticated first: one who cannot say who they are is refused before
  anything about the request is told (:mod:`pdp.server.auth`);
* the request is decoded by the edge's deserializer (a refused one is INVALID_ARGUMENT), a
  large one only when it has its turn in the bulk lane (lanes.py), a
  call that starts while draining is UNAVAILABLE, an exception the handler lets escape is
  INTERNAL (:mod:`pdp.server.edges`);
* an answer nobody authorised is not sent.

Streaming calls and the public services (health, reflection) go through the three
interceptors' own wrappers, composed in the same order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from pdp.server.arrival import WATCH, mark, unmark
from pdp.server.auth import AuthInterceptor, abort_auth_error, wrap_handler
from pdp.server.edges import (
    SHUTTING_DOWN,
    Deferred,
    EdgeInterceptor,
    Refused,
    safe_deserializer,
)
from pdp.server.ending import CallEnded, end, ends_here, release
from pdp.server.limits import abort_invalid, internal_text
from pdp.server.probes import RpcMetricsInterceptor, _code_of
from pdp.server.roles import AuthError, begin_call, is_public
from pdp.server.wrapping import WrappingInterceptor
from pdp.telemetry.registry import UNARY, split_method

log = structlog.get_logger("pdp.server")


class ServerStack(WrappingInterceptor):
    """``metrics``, ``edges`` and ``auth`` in one interceptor (see the module docstring)."""

    def __init__(self, metrics: RpcMetricsInterceptor, edges: EdgeInterceptor,
                 auth: AuthInterceptor) -> None:
        self.metrics = metrics
        self.edges = edges
        self.auth = auth
        super().__init__()

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` as the three interceptors would leave it."""
        if handler.unary_unary is not None and not is_public(method):
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method),
                request_deserializer=safe_deserializer(handler.request_deserializer,
                                                       self.edges.ceilings,
                                                       self.edges.sweeper,
                                                       None if self.edges.lane is None
                                                       else self.edges.lane.large_bytes),
                response_serializer=handler.response_serializer)
        if is_public(method):
            return self.metrics.wrap(self.edges.wrap(handler, method), method)
        # auth outside the edge: an unauthenticated caller is refused before the edge
        # says anything about the request (its limits, draining)
        inner = wrap_handler(self.edges.wrap(handler, method), method, self.auth.authenticator)
        return self.metrics.wrap(inner, method)

    def _unary(self, inner: Callable[..., Awaitable[Any]], method: str
               ) -> Callable[..., Awaitable[Any]]:
        edges, authenticator, lane = self.edges, self.auth.authenticator, self.edges.lane
        rpc = self.metrics.metrics
        service, name = split_method(method)
        # The labelled children are looked up once per method, not per call.
        started_child = rpc._child(rpc._started, (UNARY, service, name))
        seconds_child = rpc._child(rpc._seconds, (UNARY, service, name))
        handled: dict[str, Any] = {}

        def done(context: grpc.aio.ServicerContext[Any, Any], started: float,
                 default: str) -> None:
            code = _code_of(context, default)
            child = handled.get(code)
            if child is None:
                child = handled[code] = rpc._child(rpc._handled, (UNARY, service, name, code))
            child.inc()
            seconds_child.observe(time.perf_counter() - started)

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started_child.inc()
            started = time.perf_counter()
            # The decision's budget counts from here, or from the start of a stall of
            # the event loop this call may have waited through (arrival.py).
            arrived = mark(WATCH.arrival(time.monotonic()))
            default = "UNKNOWN"
            token = ends_here()  # a status ends the call as CallEnded, set here (ending.py)
            turn = False
            try:
                # the edge: draining, undecodable or over-limit requests
                edges.arrivals += 1  # (a drain waits for these to stop: wait_quiet)
                if edges.draining:
                    log.debug("call_refused", method=method, reason="draining")
                    await end(context, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                edges._enter()
                try:
                    # auth first: who is calling (the servicer authorises). A caller who
                    # cannot say who they are learns nothing about the request's limits
                    # and takes no turn in the bulk lane.
                    try:
                        principal = authenticator.authenticate(context)
                    except AuthError as exc:
                        await abort_auth_error(context, exc)
                        raise
                    if type(request) is Deferred:  # large: decoded when it is its turn
                        assert lane is not None
                        turn = await lane.enter(context.time_remaining())
                        await asyncio.sleep(0)  # small calls already waiting go first
                        request = request()
                    if isinstance(request, Refused):
                        await abort_invalid(context, request.field, request.problem,
                                            request.text)
                    log.debug("call_started", method=method)  # filtered out below debug
                    state = begin_call(principal, method)
                    response = await inner(request, context)
                    if not state.checked:
                        log.error("rpc_without_authorization", method=method)
                        await end(context, grpc.StatusCode.INTERNAL, f"{method}: the service"
                                  " did not authorise this call; refused")
                    default = "OK"
                    return response
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    log.exception("call_failed", method=method, error=repr(exc)[:1000])
                    await end(context, grpc.StatusCode.INTERNAL, internal_text(exc))
                finally:
                    if turn:
                        assert lane is not None
                        lane.leave()
                    edges._leave()
            except CallEnded as ended:
                ended.apply(context)
                return None  # with a status other than OK, grpc sends no message
            except asyncio.CancelledError:
                default = "CANCELLED"
                raise
            finally:
                release(token)
                unmark(arrived)
                done(context, started, default)
        return call
