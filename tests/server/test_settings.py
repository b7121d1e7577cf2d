"""Settings: read once, typed, unknown or invalid ones stop start-up naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdp.settings import FIELDS, Settings, SettingsError, load_settings


def test_defaults_are_the_embedded_default() -> None:
    s = load_settings(env={})
    assert s == Settings()
    assert s.listen == "127.0.0.1:50051" and s.redis_url is None and s.deadline_ms == 50


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "pdp.yaml"
    f.write_text("deadline_ms: 10\nlog_level: debug\naudit_mask_paths: [config.secret]\n")
    s = load_settings(config_file=str(f), env={"PDP_DEADLINE_MS": "20"}, overrides={})
    assert (s.deadline_ms, s.log_level, s.audit_mask_paths) == (20, "debug", ("config.secret",))
    s = load_settings(config_file=str(f), env={"PDP_DEADLINE_MS": "20"},
                      overrides={"deadline_ms": "30"})
    assert s.deadline_ms == 30


@pytest.mark.parametrize(("env", "message"), [
    ({"PDP_DEADLINE": "5"}, "PDP_DEADLINE: unknown setting"),
    ({"PDP_DEADLINE_MS": "soon"}, "deadline_ms: expected an integer"),
    ({"PDP_DEADLINE_MS": "0"}, "deadline_ms: must be > 0"),
    ({"PDP_AUDIT_DURABILITY": "maybe"}, "audit_durability: 'maybe' is not one of async, sync"),
    ({"PDP_REDIS_URL": "http://x"}, "redis_url:"),
    ({"PDP_LISTEN": "nowhere"}, "listen:"),
    ({"PDP_REFLECTION": "perhaps"}, "reflection: expected true or false"),
])
def test_invalid_settings_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(env=env)
    assert str(err.value).startswith(message)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    f = tmp_path / "pdp.yaml"
    f.write_text("deadline_msec: 10\n")
    with pytest.raises(SettingsError, match="deadline_msec: unknown setting"):
        load_settings(config_file=str(f), env={})


def _serve(cwd: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """`pdp serve` in ``cwd`` (a temp dir: its default var/ paths must not meet those of a
    server someone runs in the checkout)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    root = str(Path(__file__).resolve().parents[2])
    base["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [base.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "pdp.cli", "serve", *args],
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_serve_refuses_to_start_on_a_bad_setting(tmp_path: Path) -> None:
    out = _serve(tmp_path, env={"PDP_DEADLINE_MSS": "5"})
    assert out.returncode == 2
    assert "PDP_DEADLINE_MSS: unknown setting" in out.stderr


def test_serve_refuses_to_start_on_an_invalid_policy(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("tenant: t\nname: a\nrule: {daily_cap: {max_count: x}}\n")
    out = _serve(tmp_path, "--policy-dir", str(tmp_path), "--listen", "127.0.0.1:1")
    assert out.returncode == 2
    assert "p.yaml:3:" in out.stderr and "rule.daily_cap.max_count" in out.stderr


def test_serve_help_lists_settings_with_defaults() -> None:
    out = subprocess.run([sys.executable, "-m", "pdp.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for needle in ("--listen", "PDP_LISTEN", "127.0.0.1:50051", "--deadline-ms",
                   "PDP_DEADLINE_MS", "PDP_REDIS_URL", "--unix-socket"):
        assert needle in out.stdout


def test_the_dockerfile_environment_is_valid_settings() -> None:
    """The image can't be built here (no Docker engine): at least its settings must load."""
    import re

    text = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    block = re.search(r"^ENV (.+?)(?=^\S)", text, re.S | re.M)
    assert block is not None
    env = dict(re.findall(r"(PDP_[A-Z_]+)=(\S+)", block.group(1)))
    assert {"PDP_LISTEN", "PDP_POLICY_DIR", "PDP_POLICY_STORE", "PDP_AUDIT_FILE"} <= set(env)
    s = load_settings(env=env)
    assert s.listen == "0.0.0.0:50051" and s.policy_store.startswith("sqlite:/var/lib/pdp/")
    assert s.http_listen == "0.0.0.0:50052"  # the HEALTHCHECK asks its /healthz
    assert re.search(r"HEALTHCHECK .*\n\s+CMD .*/healthz.*\|\| exit 1\n", text)


def test_boolean_flags_are_plain_switches() -> None:
    from pdp.cli import build_parser

    args = build_parser().parse_args(["serve", "--telemetry-enabled", "--reflection", "false",
                                      "--redis-cluster", "--deadline-ms", "10"])
    s = load_settings(env={}, overrides={name: getattr(args, name) for name in FIELDS})
    assert (s.telemetry_enabled, s.reflection, s.redis_cluster, s.deadline_ms) == (
        True, False, True, 10)
    unset = build_parser().parse_args(["serve"])
    assert load_settings(env={}, overrides={n: getattr(unset, n) for n in FIELDS}) == Settings()


def test_a_node_limit_above_the_cache_bound_is_said_at_start(
        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pdp.logging import configure_logging
    from pdp.server.app import warn_ineffective
    from pdp.settings import Settings

    # As the server logs (JSON lines on stderr); structlog's capture_logs would miss a
    # logger another test in this process has already used (loggers are cached).
    configure_logging("warning", "json")
    capsys.readouterr()
    warn_ineffective(Settings(config_max_nodes=500_000, config_cache_nodes=250_000))
    warn_ineffective(Settings())
    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines()
            if line.startswith("{")]
    said = [x for x in logs if x.get("setting") == "config_max_nodes"]
    assert len(said) == 1 and "never cached" in said[0]["effect"]
