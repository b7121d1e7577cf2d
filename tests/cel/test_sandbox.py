"""Sandbox: a policy can reach nothing of Python.

Field selection on maps is a dict lookup, never getattr; methods are CEL functions looked up
in the registry, never Python attributes; hostile objects in the activation are opaque."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pdp.cel import CelCompileError, CelError, Environment
from pdp.cel.values import Duration, Optional, Timestamp, TypeValue, UInt

DUNDER = ["__class__", "__globals__", "__dict__", "__builtins__", "__subclasses__", "__mro__",
          "__init__", "__code__", "__import__", "__getattribute__", "__reduce__", "mro",
          "system", "popen", "keys", "items", "get", "format", "startswith", "real"]


class Hostile:
    """An object that is not a CEL value, with tempting attributes and dunder methods."""

    secret = "s3cret"

    def __getitem__(self, k: object) -> str:
        return "leaked-item"

    def __getattr__(self, k: str) -> str:
        return "leaked-attr"

    def __len__(self) -> int:
        return 7

    def __iter__(self) -> Any:
        return iter(["leaked-iter"])


ENV = Environment({"x": "dyn", "config": "dyn"})
ACT: dict[str, Any] = {
    "x": {"__globals__": {"__builtins__": 1}, "__class__": "just a key", "a": [1, "b"]},
    "config": {"obj": Hostile(), "fn": print, "mod": os, "cls": Hostile, "s": "str",
               "n": 3, "l": [Hostile()], "d": {"k": Hostile()}},
}

ALLOWED = (bool, int, float, str, bytes, type(None), UInt, Timestamp, Duration, TypeValue,
           dt.datetime, dt.timedelta)


def is_cel_value(v: Any, depth: int = 0) -> bool:
    if isinstance(v, ALLOWED):
        return True
    if type(v) is Optional:
        return not v.has or is_cel_value(v.value, depth + 1)
    if isinstance(v, list | tuple):
        return all(is_cel_value(e, depth + 1) for e in v)
    if isinstance(v, dict):
        return all(is_cel_value(k) and is_cel_value(e, depth + 1) for k, e in v.items())
    return False


def no_leak(v: Any) -> bool:
    text = repr(v)
    return "leaked" not in text and "s3cret" not in text


def _check(src: str) -> None:
    try:
        prog = ENV.compile(src, check=False)
    except CelCompileError:
        return
    try:
        result = prog.evaluate(ACT)
    except CelError:
        return
    # Hostile objects may be *returned* verbatim (they are the host's data) but never
    # looked into, called, or turned into something the policy can use.
    if not (is_cel_value(result) or any(result is o for o in _opaque())):
        raise AssertionError(f"{src!r} produced {result!r}")
    assert no_leak(result), src


def _opaque() -> list[Any]:
    c = ACT["config"]
    return [c["obj"], c["fn"], c["mod"], c["cls"], c["l"], c["d"], c["l"][0], c["d"]["k"]]


@pytest.mark.parametrize("src", [
    "x.__class__", "''.__class__", "x.__globals__", "x.__globals__.__builtins__",
    "config.obj.secret", "config.obj.__class__", "config.obj['secret']", "config.obj[0]",
    "config.fn.__globals__", "config.mod.system", "config.mod.environ", "config.cls.secret",
    "config.obj.size()", "size(config.obj)", "config.obj.exists(v, true)",
    "config.obj.map(v, v)", "config.l[0].secret", "config.d.k.secret",
    "'abc'.__len__()", "x.keys()", "x.get('a')", "''.format([x])", "config.s.startswith('s')",
    "type(config.obj)", "string(config.obj)", "config.obj == config.obj",
    "config.obj in [1]", "has(config.obj.secret)", "config.obj + 1", "config.n.real",
    "x.a.__class__", "__import__('os')", "x.__init__()", "dyn(config.obj).secret",
    "config.obj.all(k, k == 'leaked-iter')", "[config.obj].map(o, o.secret)",
])
def test_hostile_expressions(src: str) -> None:
    _check(src)


def test_dunder_keys_are_plain_map_keys() -> None:
    assert ENV.compile("x.__class__").evaluate(ACT) == "just a key"
    assert ENV.compile("x.__globals__.__builtins__").evaluate(ACT) == 1
    assert ENV.compile("{'__dict__': 2}.__dict__").evaluate({}) == 2


def test_generated_code_has_no_user_text_in_names() -> None:
    import ast as pyast

    from pdp.cel import codegen

    seen: list[pyast.Module] = []
    real_compile = compile

    def spy(src: Any, *a: Any, **k: Any) -> Any:
        if isinstance(src, pyast.Module):
            seen.append(src)
        return real_compile(src, *a, **k)

    codegen.compile = spy  # type: ignore[attr-defined]
    try:
        ENV.compile("x.__globals__ == 'os' && x.a.exists(evil_name, evil_name == 1)")
    finally:
        del codegen.compile  # type: ignore[attr-defined]
    names = {n.id for n in pyast.walk(seen[0]) if isinstance(n, pyast.Name)}
    attrs = {n.attr for n in pyast.walk(seen[0]) if isinstance(n, pyast.Attribute)}
    assert not any("evil" in n or n.startswith("__") for n in names)
    assert attrs <= {"cost", "limit", "deadline_at", "value", "has", "append"}


# -- property-based: random expressions over hostile names ---------------------------------

idents = st.sampled_from(["x", "config", "config.obj", "config.fn", "config.mod", "config.cls",
                          "config.l", "config.d", "x.a", "''", "1", "[]", "{}"])
fields = st.sampled_from([*DUNDER, "a", "obj", "k", "secret"])


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    base = draw(idents)
    choice = draw(st.integers(0, 9 if depth < 2 else 4))
    if choice == 0:
        return f"{base}.{draw(fields)}"
    if choice == 1:
        return f"{base}[{draw(st.sampled_from(DUNDER))!r}]"
    if choice == 2:
        return f"{base}.{draw(fields)}()"
    if choice == 3:
        return f"{base}.{draw(fields)}({draw(expressions(depth + 1))})"
    if choice == 4:
        return f"has({base}.{draw(fields)})"
    if choice == 5:
        return f"{base}.exists(v, v.{draw(fields)} == {draw(expressions(depth + 1))})"
    if choice == 6:
        return f"{base}.map(v, v.{draw(fields)})"
    if choice == 7:
        op = draw(st.sampled_from(["==", "+", "in", "&&", "||", "<"]))
        return f"{draw(expressions(depth + 1))} {op} {draw(expressions(depth + 1))}"
    if choice == 8:
        fn = draw(st.sampled_from(["type", "string", "size", "dyn", "int", "bytes"]))
        return f"{fn}({draw(expressions(depth + 1))})"
    return f"[{draw(expressions(depth + 1))}, {base}][0]"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions())
def test_generated_hostile_expressions(src: str) -> None:
    _check(src)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
@example("string()")  # found by CI: the cost estimate assumed an argument unchecked
@example('"a".replace()')
def test_arbitrary_text_never_crashes(src: str) -> None:
    try:
        prog = ENV.compile(src, check=False)
    except CelCompileError:
        return
    with contextlib.suppress(CelError):
        prog.evaluate(ACT)


def test_matches_answers_the_same_through_re2s_public_api(monkeypatch: Any) -> None:
    """The low-level RE2 matcher is a private part of google-re2, used only when present:
    the public API gives the same answers (a release without it still works)."""
    import pdp.cel.regex as R

    cases = [("abc", "b"), ("héllo", "l+o"), ("x", "^$"), ("", "^$"), ("a\nb", "a.b"),
             ("aaa", "^(a+)+$"), ("tls.insecure", "[.]insecure$")]
    fast = [R.matches(math.inf, s, p) for s, p in cases]
    monkeypatch.setattr(R, "_FAST", False)
    R.compile_re.cache_clear()
    try:
        assert [R.matches(math.inf, s, p) for s, p in cases] == fast
    finally:
        R.compile_re.cache_clear()
