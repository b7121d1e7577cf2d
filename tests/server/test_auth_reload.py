"""SIGHUP reloads the tokens file on a real `pdp serve`: a revoked token is refused from then
on, without a restart; a broken file keeps the tokens in force (never "no authentication")."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from pdp.client import push_request
from pdp.server.auth import new_token
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer
from tests.support.wait import wait_until


def _write(path: Path, *digests: tuple[str, str]) -> None:
    path.write_text(yaml.safe_dump({"tokens": [
        {"sha256": digest, "identity": identity, "roles": {"*": ["checker"]}}
        for identity, digest in digests]}))


def _code(server: PdpServer, token: str) -> grpc.StatusCode:
    with server.channel() as ch:
        try:
            dgrpc.DecisionServiceStub(ch).CheckPush(
                push_request("acme", "a1", config_yaml="a: 1"), timeout=10,
                metadata=(("authorization", f"Bearer {token}"),))
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[PdpServer, Path, dict[str, tuple[str, str]]]]:
    tokens = {name: new_token() for name in ("revoked", "kept")}
    path = tmp_path / "tokens.yaml"
    _write(path, *((name, digest) for name, (_, digest) in tokens.items()))
    server = PdpServer(tmp_path, args=["--auth-tokens-file", str(path)]).start()
    try:
        yield server, path, tokens
    finally:
        server.stop()


def _hup(server: PdpServer) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)


def test_sighup_revokes_a_removed_token_at_once(
        server: tuple[PdpServer, Path, dict[str, tuple[str, str]]]) -> None:
    srv, path, tokens = server
    revoked, kept = tokens["revoked"][0], tokens["kept"][0]
    assert _code(srv, revoked) == grpc.StatusCode.OK
    assert _code(srv, kept) == grpc.StatusCode.OK
    _write(path, ("kept", tokens["kept"][1]))
    _hup(srv)
    wait_until(lambda: _code(srv, revoked) == grpc.StatusCode.UNAUTHENTICATED,
               "the removed token refused after SIGHUP")
    assert _code(srv, kept) == grpc.StatusCode.OK
    assert "auth_reloaded" in srv.log()
    assert srv.proc is not None and srv.proc.poll() is None  # SIGHUP did not stop it


def test_sighup_with_a_broken_file_keeps_the_old_tokens(
        server: tuple[PdpServer, Path, dict[str, tuple[str, str]]]) -> None:
    srv, path, tokens = server
    revoked, kept = tokens["revoked"][0], tokens["kept"][0]
    path.write_text("tokens: [ {sha256: \n")  # invalid YAML
    _hup(srv)
    wait_until(lambda: "auth_reload_failed" in srv.log(), "the failed reload logged")
    assert _code(srv, revoked) == grpc.StatusCode.OK
    assert _code(srv, kept) == grpc.StatusCode.OK
    assert _code(srv, "never-issued") == grpc.StatusCode.UNAUTHENTICATED  # still checked
    with srv.channel() as ch, pytest.raises(grpc.RpcError) as err:  # no token: still refused
        dgrpc.DecisionServiceStub(ch).CheckPush(push_request("acme", "a1"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A valid entry that is not a token digest is refused whole, too.
    path.write_text(yaml.safe_dump({"tokens": [{"sha256": "plaintext", "identity": "x"}]}))
    _hup(srv)
    wait_until(lambda: srv.log().count("auth_reload_failed") >= 2, "the second failure logged")
    assert _code(srv, kept) == grpc.StatusCode.OK
    # And a good file afterwards is picked up.
    _write(path, ("kept", tokens["kept"][1]))
    _hup(srv)
    wait_until(lambda: _code(srv, revoked) == grpc.StatusCode.UNAUTHENTICATED,
               "the good file picked up after the broken ones")
    assert _code(srv, kept) == grpc.StatusCode.OK


def test_sighup_to_the_workers_parent_reloads_every_worker(tmp_path: Path) -> None:
    """With --workers the parent passes SIGHUP on (left at its default, it would end the
    parent and orphan the workers): each worker reloads, and the parent keeps running."""
    from tests.support.procs import redis_server

    tokens = {name: new_token() for name in ("revoked", "kept")}
    path = tmp_path / "tokens.yaml"
    _write(path, *((name, digest) for name, (_, digest) in tokens.items()))
    with redis_server() as redis:
        srv = PdpServer(tmp_path, args=["--auth-tokens-file", str(path), "--workers", "2",
                                        "--redis-url", redis.url]).start()
        try:
            # both workers serving (start() returns once one answers): a worker still
            # starting ignores SIGHUP (its default would end it) and reads the file anyway
            wait_until(lambda: srv.log().count('"event": "started"') >= 2,
                       "both workers started", timeout=120)  # each imports pdp anew
            _write(path, ("kept", tokens["kept"][1]))
            _hup(srv)
            wait_until(lambda: srv.log().count("auth_reloaded") >= 2, "both workers reloaded")
            assert srv.proc is not None and srv.proc.poll() is None
            for _ in range(20):  # new connections: the kernel spreads them over the workers
                assert _code(srv, tokens["revoked"][0]) == grpc.StatusCode.UNAUTHENTICATED
                assert _code(srv, tokens["kept"][0]) == grpc.StatusCode.OK
            assert srv.terminate(timeout=30) == 0, srv.log()[-4000:]
        finally:
            srv.stop()
