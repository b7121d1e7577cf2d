"""Runs the shared cel-spec conformance cases and enforces pass floors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp.cel.conformance import run_dir

CONFORMANCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "cel-conformance"

# Raise these as conformance improves; never lower them.
OVERALL_FLOOR = 1068
CORE_SUITES = ["basic", "comparisons", "conversions", "fields", "fp_math", "integer_math",
               "lists", "logic", "macros", "parse", "plumbing", "string", "timestamps"]
FULLY_PASSING_CORE = [*CORE_SUITES, "macros2", "namespace", "type_deductions", "bindings_ext",
                      "encoders_ext", "optionals", "math_ext"]


@pytest.fixture(scope="module")
def results():  # type: ignore[no-untyped-def]
    if not CONFORMANCE_DIR.is_dir():
        pytest.skip(f"conformance data not found at {CONFORMANCE_DIR}")
    return run_dir(CONFORMANCE_DIR)


def test_overall_floor(results) -> None:  # type: ignore[no-untyped-def]
    passed = sum(r.passed for r in results.values())
    assert passed >= OVERALL_FLOOR


@pytest.mark.parametrize("suite", FULLY_PASSING_CORE)
def test_core_suite_complete(results, suite: str) -> None:  # type: ignore[no-untyped-def]
    r = results[suite]
    assert r.failed == 0, "\n".join(r.failures)


def test_string_ext_only_listed_skips(results) -> None:  # type: ignore[no-untyped-def]
    from pdp.cel.conformance import SKIP

    assert sum(r.skipped for r in results.values()) == len(SKIP)


def test_cli_last_line() -> None:
    import re
    import subprocess
    import sys

    if not CONFORMANCE_DIR.is_dir():
        pytest.skip("conformance data not found")
    out = subprocess.run([sys.executable, "-m", "pdp.cel.conformance", str(CONFORMANCE_DIR)],
                         capture_output=True, text=True, timeout=120)
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"(\d+) passed, (\d+) failed", last)
    assert m, last
    assert int(m.group(1)) >= OVERALL_FLOOR
