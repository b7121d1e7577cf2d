"""Smoke test of the benchmark suite: `python bench/suite.py --quick` runs and writes its table.

Never asserts on speed: only that every section ran and the results file has its shape.
The real bench/RESULTS.md is put back afterwards, so a test run does not overwrite it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "RESULTS.md"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed")


def test_quick_suite_runs_and_writes_the_table(tmp_path: Path) -> None:
    saved = RESULTS.read_bytes() if RESULTS.exists() else None
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "suite.py"), "--quick"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        text = RESULTS.read_text()
    finally:
        if saved is None:
            RESULTS.unlink(missing_ok=True)
        else:
            RESULTS.write_bytes(saved)
    assert "| section | metric | value | ratio | target | met |" in text
    for section in ("| floor |", "| step |", "| workers |", "| tenants |", "| memory |"):
        assert section in text, section
    assert "grpcio" in text and "cores" in text
    assert "clients" in text  # the load generator's own CPU is reported
