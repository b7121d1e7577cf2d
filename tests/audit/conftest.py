from __future__ import annotations

from pathlib import Path

import pytest

from pdp.audit import AuditSettings
from pdp.audit.anchors import Anchorer, AnchorKey
from pdp.audit.files import ledger_files
from pdp.audit.sinks.file import Ledger
from pdp.audit.verify import VerifyResult

#: An anchor key's bytes (16 or more), for tests that sign checkpoints.
KEY = b"0123456789abcdef0123456789abcdef\n"


def write_anchored(directory: Path, key: AnchorKey, n: int, every: int, rotate_bytes: int,
                   name: str = "audit.jsonl", unanchored_tail: int = 0) -> list[Path]:
    """A ledger of ``n`` events, a checkpoint after every ``every``, then
    ``unanchored_tail`` more, and one checkpoint at close (as the writer does); its files."""
    directory.mkdir(parents=True, exist_ok=True)
    active = directory / name
    ledger = Ledger(active, rotate_bytes,
                    Anchorer(key, str(active) + ".anchors", every_records=10**9, every_s=1e9))
    ledger.open()
    for i in range(n + unanchored_tail):
        res = ledger.append([{"type": "Test", "tenant": "t", "i": i}], fsync=False,
                            anchor=i < n and i % every == every - 1)
        assert res.error is None
    ledger.close()
    return [lf.path for lf in ledger_files(active)]


@pytest.fixture
def settings(tmp_path: Path) -> AuditSettings:
    return AuditSettings(path=str(tmp_path / "audit" / "audit.jsonl"),
                         spool_dir=str(tmp_path / "spool"), instance="test")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    p = tmp_path / "anchor.key"
    p.write_bytes(KEY)
    return p


@pytest.fixture
def key(key_file: Path) -> AnchorKey:
    return AnchorKey.from_file(key_file)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def problem(res: VerifyResult) -> tuple[str, str]:
    """The kind and detail of a verify result that must have found a problem."""
    assert not res.ok and res.problem is not None, str(res)
    return res.problem.kind, res.problem.detail


def decision(i: int, *, tenant: str = "acme", allowed: bool = True, checkpoint: str = "PUSH",
             shadow: int = 0) -> dict[str, object]:
    return {
        "decision_id": f"d-{i}",
        "time": 1_700_000_000.0 + i,
        "tenant": tenant,
        "checkpoint": checkpoint,
        "caller": {"subject": "rollout-engine", "roles": ["engine"]},
        "subject": {"agent_id": f"agent-{i}", "device_id": None, "rollout_id": "r-1"},
        "allowed": allowed,
        "reasons": [] if allowed else [{"policy": "p", "version": 1, "rule": "cel",
                                        "code": "POLICY_DENY", "message": "no"}],
        "shadow_denies": [{"policy": f"draft-{k}", "version": 2, "rule": "cel",
                           "code": "POLICY_DENY", "message": "would deny"}
                          for k in range(shadow)],
        "override": None,
        "policies": [{"name": "p", "version": 1, "content_hash": "sha256:abc"}],
        "elapsed_ms": 0.25,
        "request": {
            "config": {"exporters": {"otlp": {"headers": {"authorization": "secret"}}}},
            # As the engine sends it: the config as YAML text.
            "previous_config": "exporters:\n  otlp:\n    headers:\n      authorization: secret\n",
        },
    }
