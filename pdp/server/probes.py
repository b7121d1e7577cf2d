"""HTTP probes and metrics for Kubernetes, and the interceptor that times every RPC.

One address (``http_listen``) serves:

* ``/healthz`` (liveness): 200 while the event loop runs. The HTTP server answers on its own
  thread, so it asks the loop to run a callback and waits for it (``loop_timeout_s``): a loop
  that is wedged (a call that never yields, a deadlock) fails the probe, and the kubelet
  restarts the process; one that is only busy answers late, within the probe's timeout.
* ``/readyz`` (readiness): 200 when this process can decide, 503 with the failing checks
  otherwise. Ready means: policies are loaded (the endpoint starts after they are), the
  server is not draining (SIGTERM: it turns not-ready at once, before the port closes), the
  policy store was reached within ``policy_store_stale_s`` (past it, every decision denies
  POLICY_STORE_UNAVAILABLE), the counter store answers a PING when one is configured
  (without it every counter rule denies COUNTER_STORE_UNAVAILABLE), and the audit file takes
  writes (without it calls fail UNAVAILABLE: no decision without its record). pdp fails
  closed, so a replica that is not ready would still answer, but only with denies (or
  refusals) another replica need not give. The body lists each check
  (``ok name: detail`` / ``fail name: detail``).
* ``/metrics``: the server's Prometheus registry (:mod:`pdp.telemetry.registry`): process
  and per-RPC metrics always, decision metrics with telemetry on.

The gRPC health service stays as it was (``pdp health``, gRPC load balancers); these are the
same facts in the form the kubelet and Prometheus read. The HTTP server is the standard
library's, threaded, with ``prometheus_client``'s WSGI app for ``/metrics``: scraping never
runs on the event loop that decides.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app

from pdp.server.wrapping import WrappingInterceptor
from pdp.telemetry.registry import (
    BIDI_STREAM,
    CLIENT_STREAM,
    SERVER_STREAM,
    UNARY,
    RpcMetrics,
)

log = structlog.get_logger("pdp.server")

#: (name, ok, detail) of one readiness check.
Check = tuple[str, bool, str]
ReadyFn = Callable[[], Coroutine[Any, Any, list[Check]]]
StartResponse = Callable[..., Any]


class ProbeBindError(OSError):
    """The probe address cannot be bound; the message names it."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds up the exit


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    """No access log on stderr: the kubelet probes every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class ProbeServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``address`` (HOST:PORT, port 0 = any
    free one, see :attr:`port`)."""

    def __init__(self, address: str, registry: CollectorRegistry, ready: ReadyFn,
                 loop: asyncio.AbstractEventLoop, *, reuse_port: bool = False,
                 loop_timeout_s: float = 5.0) -> None:
        self.address = address
        self.ready = ready
        self.loop = loop
        self.loop_timeout_s = loop_timeout_s
        self._metrics = make_wsgi_app(registry)
        host, port = split_host_port(address)
        server_class: type[_Server] = _Server6 if ":" in host else _Server
        # --workers: every worker binds the same port, as they do the gRPC one.
        server_class = type("ProbeWSGIServer", (server_class,),
                            {"allow_reuse_port": reuse_port})
        try:
            self._httpd = make_server(host, port, self._app, server_class=server_class,
                                      handler_class=_Quiet)
        except OSError as exc:
            raise ProbeBindError(f"cannot bind {address}: {exc.strerror or exc}") from None
        self.port = int(self._httpd.server_port)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="pdp-probes",
                                        daemon=True)

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port (blocks for at most one poll interval)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ handlers (thread)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "GET only\n")
        if path in ("/healthz", "/livez"):
            ok, detail = self._loop_alive()
            return _text(start_response, "200 OK" if ok else "503 Service Unavailable",
                         f"{'ok' if ok else 'fail'} event_loop: {detail}\n")
        if path == "/readyz":
            checks = self._checks()
            ok = all(passed for _, passed, _ in checks)
            lines = "".join(f"{'ok' if passed else 'fail'} {name}: {detail}\n"
                            for name, passed, detail in checks)
            return _text(start_response, "200 OK" if ok else "503 Service Unavailable",
                         lines + ("ready\n" if ok else "not ready\n"))
        return _text(start_response, "404 Not Found",
                     "not found: /healthz, /readyz and /metrics are served here\n")

    def _loop_alive(self) -> tuple[bool, str]:
        ran: concurrent.futures.Future[None] = concurrent.futures.Future()
        try:
            self.loop.call_soon_threadsafe(ran.set_result, None)
            ran.result(timeout=self.loop_timeout_s)
        except RuntimeError:
            return False, "closed"
        except concurrent.futures.TimeoutError:
            return False, f"did not run a callback within {self.loop_timeout_s:g} s"
        return True, "running"

    def _checks(self) -> list[Check]:
        try:
            future: concurrent.futures.Future[list[Check]] = asyncio.run_coroutine_threadsafe(
                self.ready(), self.loop)
        except RuntimeError:
            return [("event_loop", False, "closed")]
        try:
            return future.result(timeout=self.loop_timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return [("event_loop", False, "the readiness checks did not finish within"
                                          f" {self.loop_timeout_s:g} s")]
        except Exception as exc:  # a check that raises is a failed check, not a 500
            return [("checks", False, f"{type(exc).__name__}: {exc}")]


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store")])
    return [data]


# ---------------------------------------------------------------------- RPC metrics


def _code_of(context: grpc.aio.ServicerContext[Any, Any], default: str = "OK") -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):  # some grpc versions keep the raw value
        with contextlib.suppress(ValueError):
            return str(next(c.name for c in grpc.StatusCode if c.value[0] == code))
    return default


class RpcMetricsInterceptor(WrappingInterceptor):
    """Counts and times every call (:class:`~pdp.telemetry.RpcMetrics`) by method, type
    and final status. Put it first, outside the edge interceptor, so that calls the edge
    refuses (draining, undecodable requests) are counted with their status too."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics
        super().__init__()

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        metrics = self.metrics
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        grpc_type = {(False, False): UNARY, (True, False): CLIENT_STREAM,
                     (False, True): SERVER_STREAM, (True, True): BIDI_STREAM}[
            (handler.request_streaming, handler.response_streaming)]

        def done(context: grpc.aio.ServicerContext[Any, Any], started: float,
                 default: str) -> None:
            metrics.handled(method, grpc_type, _code_of(context, default),
                            time.perf_counter() - started)

        # grpc.aio runs a behaviour on the loop only when it is a coroutine (or async
        # generator) function: each wrapper must be one itself, not a lambda around one.
        def unary_response(inner: Any) -> Callable[..., Awaitable[Any]]:
            async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                metrics.started(method, grpc_type)
                started = time.perf_counter()
                default = "UNKNOWN"
                try:
                    response = await inner(request, context)
                    default = "OK"
                    return response
                except asyncio.CancelledError:
                    default = "CANCELLED"
                    raise
                finally:
                    done(context, started, default)
            return call

        def stream_response(inner: Any) -> Callable[..., AsyncIterator[Any]]:
            async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                           ) -> AsyncIterator[Any]:
                metrics.started(method, grpc_type)
                started = time.perf_counter()
                default = "UNKNOWN"
                try:
                    async for response in inner(request, context):
                        yield response
                    default = "OK"
                except asyncio.CancelledError:
                    default = "CANCELLED"
                    raise
                finally:
                    done(context, started, default)
            return call

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                unary_response(handler.unary_unary), **kwargs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                unary_response(handler.stream_unary), **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                stream_response(handler.unary_stream), **kwargs)
        return grpc.stream_stream_rpc_method_handler(
            stream_response(handler.stream_stream), **kwargs)
