"""Load generation and process plumbing for the suite.

* Servers run as real processes (``pdp serve`` or bench/floor_server.py) on free ports; their
  CPU time and RSS are read from /proc for the whole process tree (``--workers`` forks).
* Clients run in separate processes (multiprocessing, spawn), each with its own grpc.aio
  channel(s) (local subchannel pools, so every channel is its own TCP connection and
  SO_REUSEPORT can spread them over workers). Requests are pre-serialized bytes and replies
  stay bytes: the client does no protobuf work in the timed loop.
* Every throughput window reports the CPU used by the clients next to the server's, so the
  reader can see whether the load generator, not the server, was the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.procs import RedisServer, free_port  # noqa: E402

CHECK_PUSH = "/pdp.v1.DecisionService/CheckPush"
CHECK_PUSH_BATCH = "/pdp.v1.DecisionService/CheckPushBatch"
TICK = os.sysconf("SC_CLK_TCK")

__all__ = ["RedisServer", "Server", "free_port", "latency", "throughput"]


# -- /proc ---------------------------------------------------------------------------------

def proc_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_seconds(pid: int, tree: bool = True) -> float:
    total = 0
    for p in proc_tree(pid) if tree else [pid]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / TICK


def wait_idle(pid: int, quiet_s: float = 0.05, limit_s: float = 2.0) -> None:
    """Return once ``pid`` (and its children) used no CPU for ``quiet_s`` (or after
    ``limit_s``): e.g. a server finished writing the audit records of its last answer."""
    end = time.monotonic() + limit_s
    last = cpu_seconds(pid)
    while time.monotonic() < end:
        time.sleep(quiet_s)
        now = cpu_seconds(pid)
        if now == last:
            return
        last = now


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def listeners(port: int) -> int:
    """Sockets in LISTEN state on ``port`` (one per SO_REUSEPORT worker that has bound)."""
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].rsplit(":", 1)[1] == f"{port:04X}" and parts[3] == "0A":
                        n += 1
        except OSError:
            pass
    return n


# -- servers -------------------------------------------------------------------------------

@dataclass
class Server:
    """`pdp serve` (``policy_dir`` set) or the floor server (``policy_dir`` None)."""

    workdir: Path
    policy_dir: Path | None = None
    args: list[str] = field(default_factory=list)
    workers: int = 1
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: The checkout whose pdp runs (another commit's worktree for an A/B, bench/ab_unary.py).
    root: Path = ROOT

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
        env["PYTHONPATH"] = os.pathsep.join([str(self.root),
                                             *filter(None, [env.get("PYTHONPATH")])])
        if self.policy_dir is None:
            cmd = [sys.executable, str(ROOT / "bench" / "floor_server.py"),
                   "--listen", self.address]
        else:
            # the probe port on a free port: several servers run side by side (a tree from
            # before the probes has no such flag)
            probe = (["--http-listen", f"127.0.0.1:{free_port()}"]
                     if "http_listen" in (self.root / "pdp" / "settings.py").read_text()
                     else [])
            cmd = [sys.executable, "-m", "pdp.cli", "serve", "--listen", self.address,
                   "--policy-dir", str(self.policy_dir),
                   "--audit-file", str(self.workdir / "audit" / "audit.jsonl"),
                   "--log-level", "warning", "--workers", str(self.workers),
                   *probe, *self.args]
        self._log = open(self.workdir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def wait(self, timeout: float = 120.0) -> Server:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if (r.status == health_pb2.HealthCheckResponse.SERVING
                            and listeners(self.port) >= self.workers):
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"server not serving after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        p = self.workdir / "server.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                for p in reversed(proc_tree(self.proc.pid)):
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if hasattr(self, "_log"):
            self._log.close()


# -- clients -------------------------------------------------------------------------------

def _channel(address: str) -> Any:
    import grpc

    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


async def _sequential(address: str, method: str, payloads: list[bytes], n: int,
                      warmup: int) -> list[float]:
    async with _channel(address) as ch:
        call = ch.unary_unary(method)
        for i in range(warmup):
            await call(payloads[i % len(payloads)], timeout=10)
        out = []
        pc = time.perf_counter
        for i in range(n):
            t0 = pc()
            await call(payloads[i % len(payloads)], timeout=10)
            out.append(pc() - t0)
        return out


def _latency_child(args: tuple[str, str, list[bytes], int, int]) -> list[float]:
    return asyncio.run(_sequential(*args))


async def _window(address: str, method: str, payloads: list[bytes], concurrency: int,
                  channels: int, start_at: float, duration: float) -> dict[str, Any]:
    chans = [_channel(address) for _ in range(channels)]
    calls = [c.unary_unary(method) for c in chans]
    for c in calls:  # connect and warm up every channel
        for _ in range(20):
            await c(payloads[0], timeout=10)
    done = 0
    errors = 0
    lat: list[float] = []
    stop_at = start_at + duration
    pc = time.perf_counter

    async def worker(k: int) -> None:
        nonlocal done, errors
        call = calls[k % len(calls)]
        i = k
        while time.time() < start_at:  # everybody keeps warm until the window opens
            await call(payloads[i % len(payloads)], timeout=10)
            i += concurrency
        while True:
            t0 = pc()
            try:
                await call(payloads[i % len(payloads)], timeout=10)
            except Exception:
                errors += 1
            now = time.time()
            if now >= stop_at:
                return
            lat.append(pc() - t0)
            done += 1
            i += concurrency

    await asyncio.sleep(max(0.0, start_at - 0.3 - time.time()))
    cpu0 = None

    async def mark() -> None:
        nonlocal cpu0
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = time.process_time()

    await asyncio.gather(mark(), *(worker(k) for k in range(concurrency)))
    cpu = time.process_time() - (cpu0 or 0.0)
    for c in chans:
        await c.close()
    return {"done": done, "errors": errors, "cpu": cpu, "lat": lat}


def _window_child(args: tuple[Any, ...]) -> dict[str, Any]:
    return asyncio.run(_window(*args))


_POOL: Any = None


def pool(size: int) -> Any:
    """A spawn-context process pool reused across measurements (client start-up is slow)."""
    global _POOL
    if _POOL is None or _POOL._processes < size:
        if _POOL is not None:
            _POOL.terminate()
        _POOL = multiprocessing.get_context("spawn").Pool(size)
    return _POOL


def close_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.terminate()
        _POOL.join()
        _POOL = None


def latency(address: str, method: str, payloads: list[bytes], n: int,
            warmup: int = 50) -> list[float]:
    """``n`` sequential calls (one in flight) from one client process; seconds each."""
    return pool(1).apply(_latency_child, ((address, method, payloads, n, warmup),))


@dataclass
class Window:
    calls_per_s: float
    p50: float
    p99: float
    errors: int
    client_cpu: float  # cores used by all client processes together
    server_cpu: float  # cores used by the server process tree
    other_cpu: float  # cores used by helpers (redis-server)
    duration: float


def throughput(server_pid: int, address: str, method: str, payloads: list[bytes], *,
               procs: int, concurrency: int, channels: int, duration: float,
               helper_pids: tuple[int, ...] = ()) -> Window:
    """Closed-loop load from ``procs`` client processes x ``concurrency`` calls in flight."""
    p = pool(procs)
    start_at = time.time() + 1.5 + 0.1 * procs
    args = (address, method, payloads, concurrency, channels, start_at, duration)
    res = p.map_async(_window_child, [args] * procs, chunksize=1)
    time.sleep(max(0.0, start_at - time.time()))
    s0 = cpu_seconds(server_pid)
    h0 = sum(cpu_seconds(h) for h in helper_pids)
    time.sleep(duration)
    s1 = cpu_seconds(server_pid)
    h1 = sum(cpu_seconds(h) for h in helper_pids)
    parts = res.get(timeout=duration + 120)
    done = sum(x["done"] for x in parts)
    lat = sorted(v for x in parts for v in x["lat"])
    return Window(
        calls_per_s=done / duration,
        p50=lat[len(lat) // 2] if lat else float("nan"),
        p99=lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        errors=sum(x["errors"] for x in parts),
        client_cpu=sum(x["cpu"] for x in parts) / duration,
        server_cpu=(s1 - s0) / duration, other_cpu=(h1 - h0) / duration, duration=duration)


def have_h2load() -> bool:
    """h2load (Debian/Ubuntu package ``nghttp2-client``): an HTTP/2 load generator in C."""
    import shutil

    return shutil.which("h2load") is not None


def h2load_throughput(server_pid: int, address: str, method: str, payload: bytes, *,
                      connections: int, streams: int, duration: float,
                      helper_pids: tuple[int, ...] = (), warmup: float = 1.0) -> Window:
    """Closed-loop load from h2load: ``connections`` HTTP/2 connections x ``streams`` calls in
    flight, every call the same gRPC request. Used where the server's own scaling is measured:
    it costs a few percent of a core where the Python clients cost about half of one.

    h2load reads HTTP status only, not the gRPC status in the trailers: check the payload with
    a real call first. Latency percentiles are not reported (NaN); use ``latency`` for those.
    """
    import re
    import struct
    import tempfile

    duration, warmup = max(1, round(duration)), max(1, round(warmup))  # whole seconds only
    with tempfile.NamedTemporaryFile(suffix=".grpc", delete=False) as f:
        f.write(b"\x00" + struct.pack(">I", len(payload)) + payload)  # one gRPC message frame
        body = f.name
    cmd = ["h2load", "-D", str(duration), "--warm-up-time", str(warmup),
           "-c", str(connections), "-m", str(streams), "-t", "1", "-d", body,
           "-H", "content-type: application/grpc", "-H", "te: trailers",
           f"http://{address}{method}"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(warmup + 0.5)  # connected and warmed up
        window = max(0.5, duration - 1.0)
        s0, c0 = cpu_seconds(server_pid), cpu_seconds(proc.pid)
        h0 = sum(cpu_seconds(h) for h in helper_pids)
        time.sleep(window)
        s1, c1 = cpu_seconds(server_pid), cpu_seconds(proc.pid)
        h1 = sum(cpu_seconds(h) for h in helper_pids)
        out = proc.communicate(timeout=duration + 60)[0].decode(errors="replace")
    finally:
        os.unlink(body)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if rate is None or done is None:
        raise RuntimeError(f"h2load output not understood:\n{out}")
    return Window(calls_per_s=float(rate.group(1)), p50=float("nan"), p99=float("nan"),
                  errors=int(done.group(1)) - int(done.group(2)),
                  client_cpu=(c1 - c0) / window, server_cpu=(s1 - s0) / window,
                  other_cpu=(h1 - h0) / window, duration=window)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


@contextlib.contextmanager
def old_and_new(ref: str, write_policies: Callable[[Path], None], *, redis: bool
                ) -> Iterator[dict[str, Server]]:
    """Two servers serving (and waited for) side by side: ``old`` from a git worktree of
    ``ref``, ``new`` from this checkout, on the same policies (``write_policies`` fills their
    directory), each with its own redis-server when ``redis``; all stopped and the worktree
    removed afterwards. For A/B benchmarks read within one run (ab_unary.py, ab_step.py)."""
    with tempfile.TemporaryDirectory(prefix="pdp-ab-") as tmp:
        base = Path(tmp)
        old_tree = base / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f",
                        str(old_tree), ref], check=True, capture_output=True)
        stores: dict[str, RedisServer] = {}
        servers: dict[str, Server] = {}
        try:
            policies = base / "policies"
            write_policies(policies)
            for name, tree in (("old", old_tree), ("new", ROOT)):
                extra: list[str] = []
                if redis:
                    stores[name] = RedisServer().start()
                    extra = ["--redis-url", stores[name].url]
                servers[name] = Server(base / f"s-{name}", policies, extra, root=tree).start()
            for s in servers.values():
                s.wait()
            yield servers
        finally:
            for s in servers.values():
                s.stop()
            for r in stores.values():
                r.stop()
            close_pool()
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(old_tree)], capture_output=True)
