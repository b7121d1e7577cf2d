"""Issue 16: every adversarial case ends well, through a real server on loopback.

The cases are discovered from bench/adversarial/policies/*.yaml and bench/adversarial/inputs.py
(adding a case adds a test). One `pdp serve` (embedded default) holds every policy case, each
in its own tenant, admitted through the admin API like an operator's policy.

An acceptable end: refused at admission with a message; a DENY whose reasons carry a code
and a message; INVALID_ARGUMENT naming a field. Never ALLOW (drafts: the live answer is
unchanged, i.e. ALLOW), never INTERNAL/UNKNOWN, never a hang (30 s gRPC timeout). Durations
are never asserted here: `python bench/adversarial.py` measures them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

from adversarial import corpus  # noqa: E402
from adversarial import inputs as adv_inputs  # noqa: E402

CASES = corpus.load_cases()
INPUTS = adv_inputs.INPUTS


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[corpus.Harness]:
    h = corpus.Harness(tmp_path_factory.mktemp("adversarial")).start()
    try:
        h.admit(CASES)
        yield h
    finally:
        h.stop()


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 30 and len(INPUTS) >= 20
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({i.id for i in INPUTS}) == len(INPUTS)


def test_benign_request_is_allowed(harness: corpus.Harness) -> None:
    """The inputs tenant's policies allow an ordinary push: inputs are refused by limits."""
    r = harness.call(adv_inputs.CHECK_PUSH, adv_inputs.benign_push().SerializeToString())
    assert r.kind == "allow", r


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_policy_case(harness: corpus.Harness, case: corpus.PolicyCase) -> None:
    result = harness.check_case(case)
    problem = corpus.problem(result, case.expect)
    assert problem is None, f"{case.source}: {case.id} ({case.why}): {problem}"


@pytest.mark.parametrize("inp", INPUTS, ids=[i.id for i in INPUTS])
def test_adversarial_input(harness: corpus.Harness, inp: adv_inputs.Input) -> None:
    result = harness.call(inp.method, inp.build())
    problem = corpus.problem(result, "deny")
    assert problem is None, f"{inp.id} ({inp.why}): {problem}"
