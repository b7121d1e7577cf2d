"""What an operator walking through the README meets: the lifecycle block as written, tokens
made by `pdp admin token new`, error texts naming flags, client variables that must not break
`pdp serve` or `--help`, a closed stdout, and the anchor key file's mode."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pdp.admin_cli import cli_error_text
from pdp.cli import main
from pdp.server.app import warn_ineffective
from pdp.server.credentials import hash_token, load_tokens
from pdp.settings import Settings, load_settings
from tests.support.pdpserver import ROOT, PdpServer

POLICY = """\
tenant: acme
name: my-policy
description: no debug exporter
rule:
  cel:
    deny: '"debug" in config.exporters'
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def pdp(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pdp.cli", *argv], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=120)


# --- pdp admin token new ----------------------------------------------------------------------

def test_token_new_prints_the_token_once_and_its_entry(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert main(["admin", "token", "new", "--identity", "alice", "--role", "acme:author",
                 "--role", "acme:checker"]) == 0
    out = capsys.readouterr().out.splitlines()
    token = out[1]
    [entry] = yaml.safe_load("\n".join(out[3:]))
    assert entry == {"sha256": hash_token(token), "identity": "alice",
                     "roles": {"acme": ["author", "checker"]}}
    assert token not in "\n".join(out[2:])


def test_token_new_appends_entries_the_server_loads(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    tokens = tmp_path / "tokens.yaml"
    made = {}
    for who, role in (("alice", "acme:author"), ("carol", "*:admin")):
        assert main(["admin", "token", "new", "--identity", who, "--role", role,
                     "--append", str(tokens)]) == 0
        made[who] = capsys.readouterr().out.strip()
    assert tokens.stat().st_mode & 0o777 == 0o600
    loaded = {e.principal.identity: e for e in load_tokens(str(tokens))}
    assert set(loaded) == {"alice", "carol"}
    for who, token in made.items():
        assert loaded[who].digest.hex() == hash_token(token)
        assert token not in tokens.read_text()
    assert loaded["carol"].principal.roles == {"*": frozenset({"admin"})}


def test_token_new_appends_to_a_list_at_column_zero(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    tokens = tmp_path / "tokens.yaml"
    first = hash_token("first")
    tokens.write_text(f"# ours\ntokens:\n- sha256: {first}\n  identity: ci\n  roles: {{}}\n")
    tokens.chmod(0o640)
    assert main(["admin", "token", "new", "--identity", "bob", "--append", str(tokens)]) == 0
    token = capsys.readouterr().out.strip()
    assert [e.digest.hex() for e in load_tokens(str(tokens))] == [first, hash_token(token)]
    assert tokens.read_text().startswith("# ours\n")
    assert tokens.stat().st_mode & 0o777 == 0o640


def test_token_new_refuses_a_file_it_cannot_extend(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("identities: {}\n")
    assert main(["admin", "token", "new", "--identity", "bob", "--append", str(tokens)]) == 2
    assert "add it by hand" in capsys.readouterr().err
    assert tokens.read_text() == "identities: {}\n"


def test_token_new_refuses_an_unknown_role(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "token", "new", "--identity", "x", "--role", "acme:boss"]) == 2
    assert "--role 'acme:boss' is not TENANT:ROLE" in capsys.readouterr().err


# --- texts and variables ----------------------------------------------------------------------

def test_server_texts_name_the_cli_flags() -> None:
    text = cli_error_text("ABORTED", "policy 'p' of tenant 'acme' already exists (latest"
                                     " version 1); pass expected_version 1 to add a new draft")
    assert "pass --expected-version 1 to add" in text and "expected_version" not in text
    text = cli_error_text("UNAUTHENTICATED", "send 'authorization: Bearer <token>' metadata")
    assert text.endswith("(give a token with --token or PDP_TOKEN)")
    assert cli_error_text("NOT_FOUND", "no such policy") == "no such policy"


def test_serve_tolerates_the_test_suite_variable() -> None:
    load_settings(env={"PDP_ALLOW_MISSING_CONFORMANCE": "1", "PDP_TOKEN": "t"})


def test_a_bad_pdp_timeout_fails_only_where_it_is_used(tmp_path: Path) -> None:
    assert pdp("--help", cwd=tmp_path, PDP_TIMEOUT="x").returncode == 0
    assert pdp("policy", "lint", "--help", cwd=tmp_path, PDP_TIMEOUT="x").returncode == 0
    for argv in (["health", "--address", "127.0.0.1:1"],
                 ["policy", "list", "--tenant", "acme", "--address", "127.0.0.1:1"]):
        out = pdp(*argv, cwd=tmp_path, PDP_TIMEOUT="x")
        assert out.returncode == 2, out
        assert "PDP_TIMEOUT: expected seconds, got 'x'" in out.stderr
        assert "Traceback" not in out.stderr


def test_workers_without_redis_name_the_flags(tmp_path: Path) -> None:
    out = pdp("serve", "--workers", "2", cwd=tmp_path)
    assert out.returncode == 2
    assert "--workers: more than one worker needs --redis-url (shared counters)" in out.stderr


def _closed_stdout(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run pdp with a stdout whose reader is already gone (as `| head` after its lines)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "pdp.cli", *argv], cwd=cwd,
                              env=_env(**env), stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)


def test_a_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    out = _closed_stdout("admin", "token", "new", "--identity", "x", cwd=tmp_path)
    assert (out.returncode, out.stderr) == (141, "")
    out = _closed_stdout("serve", "--help", cwd=tmp_path)  # argparse ignores it: exit 0
    assert out.returncode in (0, 141) and out.stderr == ""


# --- the anchor key file's mode ---------------------------------------------------------------

@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False)])
def test_an_anchor_key_others_may_read_is_warned_about(
        tmp_path: Path, mode: int, warned: bool, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pdp.logging import configure_logging

    key = tmp_path / "key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    key.chmod(mode)
    # As the server logs (JSON lines on stderr): structlog's capture_logs would miss a
    # logger another test in this process has already used (loggers are cached).
    configure_logging("warning", "json")
    capsys.readouterr()
    warn_ineffective(Settings(audit_anchor_key_file=str(key)))
    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines()
            if line.startswith("{")]
    found = [e for e in logs if e.get("event") == "AUDIT_KEY_FILE_READABLE_BY_OTHERS"]
    assert bool(found) == warned
    if warned:
        assert found[0]["fix"] == f"chmod 600 {key} (readable by pdp's user only)"


# --- the README's lifecycle block against a real server ---------------------------------------

@pytest.fixture
def lifecycle(tmp_path: Path) -> Iterator[tuple[PdpServer, dict[str, str], Path]]:
    tokens = tmp_path / "tokens.yaml"
    people = {}
    for who, role in (("alice", "acme:author"), ("bob", "acme:approver"),
                      ("carol", "acme:admin"), ("dave", "acme:admin"),
                      ("engine", "acme:rollout-engine")):
        out = pdp("admin", "token", "new", "--identity", who, "--role", role, "--append",
                  str(tokens), cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        people[who] = out.stdout.strip()
    (tmp_path / "none").mkdir()
    (tmp_path / "my-policy.yaml").write_text(POLICY)
    work = tmp_path / "server"
    work.mkdir()
    server = PdpServer(work, policy_dir=tmp_path / "none",
                       args=["--auth-tokens-file", str(tokens)]).start()
    try:
        yield server, people, tmp_path
    finally:
        server.stop()


def test_the_readme_lifecycle_block_works_as_written(
        lifecycle: tuple[PdpServer, dict[str, str], Path]) -> None:
    server, people, cwd = lifecycle

    def run(who: str | None, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {"PDP_ADDRESS": server.address}
        if who is not None:
            env["PDP_TOKEN"] = people[who]
        return pdp(*argv, cwd=cwd, **env)

    def ok(who: str, *argv: str) -> str:
        out = run(who, *argv)
        assert out.returncode == 0, (argv, out.stderr)
        return out.stdout

    assert "my-policy v1 Draft" in ok("alice", "policy", "put", "my-policy.yaml")
    again = run("alice", "policy", "put", "my-policy.yaml")
    assert again.returncode == 1
    assert "--expected-version 1" in again.stderr and "expected_version" not in again.stderr
    assert "v1 Approved" in ok("bob", "policy", "approve", "--tenant", "acme", "my-policy", "1")
    assert "v1 Active" in ok("carol", "policy", "activate", "--tenant", "acme", "my-policy",
                             "1")
    assert "my-policy v2 Draft" in ok("alice", "policy", "put", "--expected-version", "1",
                                      "my-policy.yaml")
    ok("alice", "policy", "history", "--tenant", "acme", "my-policy")
    ok("alice", "policy", "summary", "--tenant", "acme")

    ok("carol", "policy", "relax", "--tenant", "acme", "default-deny-exporter-removal",
       "--why", "migration")
    listing = ok("alice", "policy", "list", "--tenant", "acme")
    [line] = [x for x in listing.splitlines() if x.startswith("default-deny-exporter-removal")]
    assert "Active" in line and "relax requested by carol: migration" in line
    assert "relax requested by carol" in ok("alice", "policy", "summary", "--tenant", "acme")
    ok("dave", "policy", "approve-relax", "--tenant", "acme", "default-deny-exporter-removal")
    listing = ok("alice", "policy", "list", "--tenant", "acme")
    [line] = [x for x in listing.splitlines() if x.startswith("default-deny-exporter-removal")]
    assert "Relaxed" in line and "relax requested" not in line

    # creating a tenant takes an admin of "*", and the refusal names the command that was run
    refused = run("carol", "policy", "tenant", "create", "beta", "--why", "new team")
    assert refused.returncode == 1
    assert refused.stderr.startswith("pdp policy tenant create: PERMISSION_DENIED:")
    assert "admin of '*'" in refused.stderr

    # without a token: the CLI says how to give one
    request = ROOT / "examples" / "requests" / "push-allow.yaml"
    for argv in (["check", str(request)], ["policy", "list", "--tenant", "acme"]):
        out = run(None, *argv)
        assert "UNAUTHENTICATED" in out.stderr, out.stderr
        assert "(give a token with --token or PDP_TOKEN)" in out.stderr
    assert run("engine", "check", str(request)).returncode == 0

    # `pdp policy list | head`: no "[Errno 32] Broken pipe"
    closed = _closed_stdout("policy", "list", "--tenant", "acme", cwd=cwd,
                            PDP_ADDRESS=server.address, PDP_TOKEN=people["alice"])
    assert closed.returncode == 141 and closed.stderr == ""


def test_new_tokens_can_be_passed_as_a_flag_value() -> None:
    """A token starting with ``-`` would be read by ``--token`` as another option (a random
    urlsafe token does so one time in 64): minted tokens start with ``pdp_``."""
    from pdp.server.credentials import new_token
    for _ in range(200):
        token, digest = new_token()
        assert token.startswith("pdp_") and len(token) >= 40 and digest == hash_token(token)
