"""Real endpoints on loopback: an HTTP receiver (thread) and an SMTP server (aiosmtpd)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.support.procs import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """Records every POST; answers with the next scripted status for its path (else 200)."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    delay_s: float = 0.0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def wait_for(self, n: int, path: str | None = None, timeout: float = 10.0) -> list[Received]:
        def got() -> list[Received]:
            return self.requests if path is None else self.on(path)

        with self.cond:
            self.cond.wait_for(lambda: len(got()) >= n, timeout)
            return list(got())


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    with serve_http() as rec:
        yield rec


@contextlib.contextmanager
def serve_http(port: int = 0) -> Iterator[HttpReceiver]:
    """An :class:`HttpReceiver` on ``port`` (0: any free one), e.g. one that was down."""
    rec = HttpReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if rec.delay_s:
                time.sleep(rec.delay_s)
            n = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(n)
            with rec.cond:
                rec.requests.append(Received(self.path, {k.lower(): v for k, v in
                                                         self.headers.items()}, body))
                queue = rec.script.get(self.path)
                status = queue.pop(0) if queue else 200
                rec.cond.notify_all()
            payload = b'{"status":"ok"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    rec.port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


@dataclass
class SmtpSink:
    port: int
    messages: list[Message] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.cond:
            self.messages.append(message_from_bytes(envelope.original_content))
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.cond.notify_all()
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink(port=free_port())
    ctl = Controller(sink, hostname="127.0.0.1", port=sink.port)
    ctl.start()
    try:
        yield sink
    finally:
        ctl.stop()


@contextlib.contextmanager
def hanging_receiver() -> Iterator[str]:
    """A URL whose server accepts connections and never answers (nor reads)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/hang"
    finally:
        srv.close()
