"""Conformance runner for the cel-spec cases in JSON-lines form.

Usage: ``python -m pdp.cel.conformance DIR [-v]``.  Runs every ``*.jsonl`` in DIR, prints one
line per suite and, last, exactly ``N passed, N failed``.  Cases listed in SKIP are not
run; they are counted and printed separately with their reason (never silently dropped).
"""

from __future__ import annotations

import base64
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import types as TY
from .errors import CelCompileError, CelError, CelEvalError
from .functions import Overload
from .parser import parse
from .program import Environment
from .types import T
from .values import Optional, TypeValue, UInt

# (suite, section, name) -> reason.  Cases we deliberately do not support.
SKIP: dict[tuple[str, str, str], str] = {
    ("string_ext", "format", "map support (all key types)"):
        "maps are Python dicts, which cannot hold both `true` and `1` as distinct keys; "
        "pdp's maps come from YAML/JSON and the case needs a literal mixing them",
}
# Cases marked parseFails use the optional-field syntax (`.?`, `[?`, `{?`) or backtick
# quoted fields. A parser without those syntaxes must reject them (parse() without
# optional_syntax does); an environment with the optionals library parses the optional
# syntax (as cel-go's OptionalTypes does), so those cases are also run there against the
# upstream expectation they carry (value / evalError). Backtick fields stay unsupported.


@dataclass
class SuiteResult:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)


def proto_type(j: dict[str, Any]) -> T:
    """cel.expr.Type (proto3 JSON) -> checker type."""
    if "primitive" in j:
        return {"INT64": TY.INT, "UINT64": TY.UINT, "DOUBLE": TY.DOUBLE, "BOOL": TY.BOOL,
                "STRING": TY.STRING, "BYTES": TY.BYTES}[j["primitive"]]
    if "null" in j:
        return TY.NULL
    if "dyn" in j:
        return TY.DYN
    if "listType" in j:
        return TY.list_of(proto_type(j["listType"]["elemType"]))
    if "mapType" in j:
        m = j["mapType"]
        return TY.map_of(proto_type(m["keyType"]), proto_type(m["valueType"]))
    if "typeParam" in j:
        return T("param", name=j["typeParam"])
    if "abstractType" in j:
        a = j["abstractType"]
        if a["name"] == "optional_type":
            return TY.optional_of(proto_type(a["parameterTypes"][0]))
        return T("abstract", tuple(proto_type(p) for p in a.get("parameterTypes", [])),
                 a["name"])
    if "wellKnown" in j:
        return {"TIMESTAMP": TY.TIMESTAMP, "DURATION": TY.DURATION, "ANY": TY.DYN}[j["wellKnown"]]
    if "type" in j:
        return TY.type_of(proto_type(j["type"]))
    raise ValueError(f"unsupported type {j}")


def proto_value(j: dict[str, Any]) -> Any:
    """cel.expr.Value (proto3 JSON) -> runtime value."""
    if "int64Value" in j:
        return int(j["int64Value"])
    if "uint64Value" in j:
        return UInt(int(j["uint64Value"]))
    if "doubleValue" in j:
        d = j["doubleValue"]
        return float({"Infinity": "inf", "-Infinity": "-inf"}.get(d, d)) if isinstance(
            d, str) else float(d)
    if "stringValue" in j:
        return j["stringValue"]
    if "bytesValue" in j:
        return base64.b64decode(j["bytesValue"])
    if "boolValue" in j:
        return bool(j["boolValue"])
    if "nullValue" in j:
        return None
    if "listValue" in j:
        return [proto_value(v) for v in j["listValue"].get("values", [])]
    if "mapValue" in j:
        return {proto_value(e["key"]): proto_value(e["value"])
                for e in j["mapValue"].get("entries", [])}
    if "typeValue" in j:
        return TypeValue(j["typeValue"])
    raise ValueError(f"unsupported value {j}")


def same(expected: Any, actual: Any) -> bool:
    """Strict equality: same CEL type and value (NaN equals NaN here)."""
    if type(expected) is not type(actual):
        containers = (isinstance(expected, list) and isinstance(actual, list | tuple)) or (
            isinstance(expected, dict) and isinstance(actual, dict))
        if not containers:
            pass
        else:
            return False
    if isinstance(expected, float):
        return (math.isnan(expected) and math.isnan(actual)) or (
            expected == actual)  # proto JSON cannot carry the sign of zero
    if isinstance(expected, list):
        return len(expected) == len(actual) and all(
            same(a, b) for a, b in zip(expected, actual, strict=True))
    if isinstance(expected, dict):
        if len(expected) != len(actual):
            return False
        for k, v in expected.items():
            match = [ak for ak in actual if type(ak) is type(k) and ak == k]
            if not match or not same(v, actual[match[0]]):
                return False
        return True
    if isinstance(expected, Optional):
        return bool(expected == actual)
    return bool(expected == actual)


def run_case(case: dict[str, Any]) -> str | None:
    """None when the case passes, else a short reason."""
    expr = case["expr"]
    if case.get("parseFails"):
        try:
            parse(expr)
        except CelCompileError:
            pass
        else:
            return "expected a parse error"
        if "`" in expr or not ("value" in case or "evalError" in case):
            return None
    env = Environment(container=case.get("container", ""),
                      extensions=("strings", "math", "encoders", "optionals"))
    for d in case.get("typeEnv", []):
        if "ident" in d:
            env.declare(d["name"], proto_type(d["ident"]["type"]))
        elif "function" in d:
            f = env.registry.get(d["name"])
            if f is None:
                env.registry.add(d["name"], [], _no_impl)
                f = env.registry.get(d["name"])
            assert f is not None
            for ov in d["function"].get("overloads", []):
                params = tuple(proto_type(p) for p in ov.get("params", []))
                f.overloads.append(Overload(bool(ov.get("isInstanceFunction")), params,
                                            proto_type(ov["resultType"])))
    check = not case.get("disableCheck")
    expect_compile_error = ("compileError" in case and check and "value" not in case
                            and "evalError" not in case and "typedResult" not in case)
    try:
        prog = env.compile(expr, check=check)
    except CelCompileError as e:
        if expect_compile_error:
            return None
        return f"compile error: {e.message}"
    if expect_compile_error:
        return "expected a compile error"
    want_type = None
    if "typedResult" in case:
        want_type = str(proto_type(case["typedResult"]["deducedType"]))
    elif check and "checkedType" in case:
        want_type = case["checkedType"]
    if want_type is not None and check and str(prog.result_type) != want_type:
        return f"checked type {prog.result_type}, want {want_type}"
    if case.get("checkOnly"):
        return None
    act = {k: proto_value(v["value"]) for k, v in case.get("bindings", {}).items()}
    try:
        got = prog.evaluate(act)
    except CelEvalError as e:
        if "evalError" in case:
            return None
        return f"eval error: {e}"
    except CelError as e:
        return f"unexpected {type(e).__name__}: {e}"
    if "evalError" in case:
        return f"expected an eval error, got {got!r}"
    want = case.get("value")
    if want is None and "typedResult" in case:
        want = case["typedResult"].get("result")
    if want is None:
        return None
    exp = proto_value(want)
    if not same(exp, got):
        return f"got {got!r}, want {exp!r}"
    return None


def _no_impl(*args: Any) -> Any:
    raise CelEvalError("function declared for checking only")


def run_dir(directory: Path, verbose: bool = False) -> dict[str, SuiteResult]:
    results: dict[str, SuiteResult] = {}
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            case = json.loads(line)
            suite = case.get("suite", path.stem)
            res = results.setdefault(suite, SuiteResult())
            key = (suite, case.get("section", ""), case.get("name", ""))
            if key in SKIP:
                res.skipped += 1
                continue
            try:
                reason = run_case(case)
            except Exception as e:  # a crash in the runner is a failure, not an abort
                reason = f"crash: {type(e).__name__}: {e}"
            if reason is None:
                res.passed += 1
            else:
                res.failed += 1
                res.failures.append(f"{key[1]}/{key[2]}: {case['expr'][:80]!r}: {reason}")
    return results


def main(argv: Iterable[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in args
    args = [a for a in args if a != "-v"]
    if len(args) != 1:
        print("usage: python -m pdp.cel.conformance DIR [-v]", file=sys.stderr)
        return 2
    results = run_dir(Path(args[0]), verbose)
    passed = failed = skipped = 0
    for suite, r in sorted(results.items()):
        status = "PASS" if r.failed == 0 else "FAIL"
        print(f"{status} {suite}: {r.passed} passed, {r.failed} failed, {r.skipped} skipped")
        if verbose:
            for f in r.failures:
                print(f"    {f}")
        passed += r.passed
        failed += r.failed
        skipped += r.skipped
    for (suite, section, name), reason in sorted(SKIP.items()):
        print(f"SKIP {suite}/{section}/{name}: {reason}")
    print(f"{skipped} skipped (listed above)")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
