"""Start the real `pdp serve` as a subprocess on a free port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]


class PdpServer:
    def __init__(self, workdir: Path, *, policy_dir: Path | None = None,
                 env: dict[str, str] | None = None, args: list[str] | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 file_size_limit: int | None = None) -> None:
        self._port_retries = 0
        self._pick_ports()
        self.workdir = workdir
        self.audit_file = workdir / "audit" / "audit.jsonl"
        self.log_file = workdir / "server.log"
        self.policy_dir = policy_dir or ROOT / "examples" / "policies"
        self.env = env or {}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.credentials = credentials  # TLS servers: how the health probe connects
        # RLIMIT_FSIZE of the server process: a write past it fails (EFBIG, "File too
        # large"), as on a full disk, without a small file system to fill (no root needed).
        self.file_size_limit = file_size_limit

    def _pick_ports(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Its own probe port too: never the default one a server in the checkout may hold.
        self.http_port = free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, self.credentials,
                                   options=[("grpc.ssl_target_name_override", "localhost")])

    def start(self, wait: bool = True) -> PdpServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # this checkout's pdp
        env.update(self.env)
        launch = [sys.executable, "-m", "pdp.cli"]
        if self.file_size_limit is not None:  # set in the child itself, then exec pdp
            launch = [sys.executable, "-c", (
                "import os, resource, sys; n = int(sys.argv[1]);"
                " resource.setrlimit(resource.RLIMIT_FSIZE, (n, n));"
                " os.execv(sys.executable, [sys.executable, '-m', 'pdp.cli', *sys.argv[2:]])"),
                str(self.file_size_limit)]
        cmd = [*launch, "serve", "--listen", self.address,
               "--policy-dir", str(self.policy_dir), "--audit-file", str(self.audit_file),
               "--http-listen", f"127.0.0.1:{self.http_port}",
               "--log-level", "debug", *self.args]
        self._log = open(self.log_file, "ab")  # noqa: SIM115 - closed in stop()
        logged = self.log_file.stat().st_size
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        if wait:
            try:
                self.wait_serving()
            except RuntimeError:
                # A port found free a moment ago can be taken by another process before
                # the server binds it: that is the harness's race, not the server's
                # behaviour, so pick fresh ports and start again (a few times at most).
                tail = self.log_file.read_bytes()[logged:]
                if b"Address already in use" not in tail or self._port_retries >= 5:
                    raise
                self._port_retries += 1
                self._log.close()
                self._pick_ports()
                return self.start(wait=True)
        return self

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.channel() as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"server not serving after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def readyz(self) -> tuple[int, str]:
        """``/readyz``: its status code and body (503 is an answer, not an error)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.http_url}/readyz", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if hasattr(self, "_log"):
            self._log.close()
