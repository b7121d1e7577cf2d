"""Runs the shared cel-spec conformance cases and enforces pass floors.

The cases live outside the repository (``../shared/cel-conformance``, laid beside the
checkout in CI). Missing data is a failure, not a skip: a skip would let CI go green while
checking none of them. ``PDP_ALLOW_MISSING_CONFORMANCE=1`` turns it into a skip, for a
checkout that knowingly has no ``../shared``.
"""

from __future__ import annotations

import os
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


ALLOW_MISSING = "PDP_ALLOW_MISSING_CONFORMANCE"


def require_conformance_data(path: Path, env: dict[str, str] | None = None) -> None:
    """Fail (or skip, if ``PDP_ALLOW_MISSING_CONFORMANCE=1``) when ``path`` is not there."""
    if path.is_dir():
        return
    message = (f"CEL conformance data not found at {path}: lay ../shared beside the checkout,"
               f" or set {ALLOW_MISSING}=1 to skip these tests knowingly")
    if (os.environ if env is None else env).get(ALLOW_MISSING) == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def results():  # type: ignore[no-untyped-def]
    require_conformance_data(CONFORMANCE_DIR)
    return run_dir(CONFORMANCE_DIR)


def test_missing_data_fails_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "shared" / "cel-conformance"
    with pytest.raises(pytest.fail.Exception, match=str(missing)):
        require_conformance_data(missing, env={})
    with pytest.raises(pytest.skip.Exception, match=ALLOW_MISSING):
        require_conformance_data(missing, env={ALLOW_MISSING: "1"})
    require_conformance_data(tmp_path, env={})  # present: nothing happens


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

    require_conformance_data(CONFORMANCE_DIR)
    out = subprocess.run([sys.executable, "-m", "pdp.cel.conformance", str(CONFORMANCE_DIR)],
                         capture_output=True, text=True, timeout=120)
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"(\d+) passed, (\d+) failed", last)
    assert m, last
    assert int(m.group(1)) >= OVERALL_FLOOR
