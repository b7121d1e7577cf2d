"""One set of reason codes (pdp.reasons.ReasonCode) from the rules to the API: every code
the code base can produce is a member, and every member has its protobuf value."""

from __future__ import annotations

import ast
from pathlib import Path

from pdp.api.convert import REASON_CODE_TO_PB, reason_code
from pdp.counters import model as counter_model
from pdp.reasons import ReasonCode
from pdp.v1 import common_pb2 as cpb

ROOT = Path(__file__).resolve().parents[1] / "pdp"
#: Calls whose first argument (or ``code=``) is a reason code.
PRODUCERS = {"Deny", "system_reason", "ReserveResult"}


def _produced_codes() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        if "v1" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in PRODUCERS:
                continue
            args = [a for a in node.args[:1]] + [k.value for k in node.keywords
                                                  if k.arg == "code"]
            for a in args:
                if isinstance(a, ast.Constant) and isinstance(a.value, str):
                    found.setdefault(a.value, []).append(f"{path.name}:{node.lineno}")
    return found


def test_every_code_the_code_base_produces_is_a_reason_code() -> None:
    produced = _produced_codes()
    assert produced, "the scan found no producers: it is looking in the wrong place"
    unknown = {c: where for c, where in produced.items() if c not in set(ReasonCode)}
    assert not unknown, unknown


def test_counter_store_codes_are_reason_codes() -> None:
    codes = [v for k, v in vars(counter_model).items() if k.startswith("CODE_")
             and isinstance(v, str)]
    assert codes and set(codes) <= set(ReasonCode)


def test_every_reason_code_has_its_api_value_and_back() -> None:
    api = {n.removeprefix("REASON_CODE_")
           for n in cpb.ReasonCode.DESCRIPTOR.values_by_name} - {"UNSPECIFIED"}
    assert api == {c.value for c in ReasonCode}
    assert all(reason_code(c) == REASON_CODE_TO_PB[c] != cpb.REASON_CODE_UNSPECIFIED
               for c in ReasonCode)


def test_an_unknown_code_is_not_sent_as_another_reason() -> None:
    assert reason_code("NOT_A_CODE") == cpb.REASON_CODE_UNSPECIFIED
