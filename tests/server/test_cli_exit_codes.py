"""`pdp check` / `pdp health` exit codes: 2 and one line for every input or transport problem.

Exit 1 means *deny* to a pipeline: a request file pdp cannot read must never look like one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdp.cli import main as cli_main
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
NOBODY = "127.0.0.1:1"  # refused at once: nothing listens on port 1 here

BAD_FILES = {
    "bad-yaml": ("kind: push\ntenant: acme\n  bad: [\n", "not valid YAML"),
    "unknown-field": ("kind: push\ntenant: acme\nbogus: 1\n", 'no field named "bogus"'),
    "non-numeric-step": ("kind: push\ntenant: acme\nrollout: {stepPercent: abc}\n",
                         "stepPercent"),
    "wrong-shape": ("kind: push\ntenant: acme\nrollout: 5\n", "rollout"),
    "unknown-kind": ("kind: deploy\ntenant: acme\n", "kind must be one of"),
    "not-a-mapping": ("- kind: push\n", "expected a mapping"),
    "numeric-key": ("kind: push\n1: 2\n", ""),
    "empty": ("", "expected a mapping"),
}


def _check(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    code = cli_main(["check", "--address", NOBODY, "--timeout", "5", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_naming(err: str, path: Path) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pdp check: bad request file: ") and str(path) in lines[0], err
    return lines[0]


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_every_bad_request_file_exits_2_with_one_line(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, needle = BAD_FILES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    code, out, err = _check(capsys, path)
    assert code == 2 and out == ""
    assert needle in _one_line_naming(err, path)


def test_unreadable_request_files_exit_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    code, _, err = _check(capsys, missing)
    assert code == 2 and "cannot read" in _one_line_naming(err, missing)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00kind")
    code, _, err = _check(capsys, binary)
    assert code == 2 and "not UTF-8" in _one_line_naming(err, binary)
    code, _, err = _check(capsys, tmp_path)  # a directory
    assert code == 2 and "cannot read" in _one_line_naming(err, tmp_path)


def test_a_missing_config_file_is_named_by_its_resolved_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "requests").mkdir()
    path = tmp_path / "requests" / "push.yaml"
    path.write_text("kind: push\ntenant: acme\nagent: {id: a}\nconfig_file: ../configs/c.yaml\n")
    code, _, err = _check(capsys, path)
    line = _one_line_naming(err, path)
    assert code == 2 and "config_file" in line
    assert str((tmp_path / "configs" / "c.yaml").resolve()) in line


def test_the_examples_read_and_an_absent_server_is_exit_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A good file gets as far as the call; no server there is an error, not a deny."""
    code, out, err = _check(capsys, ROOT / "examples" / "requests" / "push-allow.yaml")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("pdp check: UNAVAILABLE: ") and "Traceback" not in err


def test_health_without_a_server_is_one_clean_line_and_exit_2() -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    out = subprocess.run([sys.executable, "-m", "pdp.cli", "health", "--address", address,
                          "--timeout", "5"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 2 and out.stdout == ""
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"pdp health: {address}: UNAVAILABLE: ")
    assert "UNAVAILABLE: UNAVAILABLE" not in line


def test_a_bad_request_file_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: push\n  tenant: [\n")
    out = subprocess.run([sys.executable, "-m", "pdp.cli", "check", "--address", NOBODY,
                          str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_second_serve_in_the_same_directory_exits_2_naming_the_first(tmp_path: Path) -> None:
    """As with the README's first command run twice in one checkout: default relative paths."""
    from tests.support.pdpserver import PdpServer

    first = PdpServer(tmp_path, args=["--audit-file", "var/audit/audit.jsonl"]).start()
    try:
        assert first.proc is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        out = subprocess.run(
            [sys.executable, "-m", "pdp.cli", "serve", "--listen", f"127.0.0.1:{free_port()}",
             "--policy-dir", str(ROOT / "examples" / "policies")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        [line] = out.stderr.strip().splitlines()
        assert "another process is writing this audit log" in line
        assert f"held by pid {first.proc.pid}" in line
        assert first.proc.poll() is None  # the first one is unharmed
    finally:
        first.stop()
