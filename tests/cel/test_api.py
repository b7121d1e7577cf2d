"""Public API: compile errors with positions, evaluation errors, values, the cache."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib

import pytest

from pdp.cel import (
    CelCompileError,
    CelError,
    CelEvalError,
    Duration,
    Environment,
    ProgramCache,
    Timestamp,
    UInt,
    pdp_environment,
)


def test_parse_error_has_line_column_and_caret() -> None:
    with pytest.raises(CelCompileError) as ei:
        pdp_environment().compile("config.a &&\n  config.b +* 2")
    e = ei.value
    assert (e.line, e.column) == (2, 13)
    assert "<input>:2:13" in str(e)
    assert str(e).splitlines()[-1] == " | ............^"


@pytest.mark.parametrize("src", [
    "unknown_var.x", "config.x.noSuchFunction()", "1 + 'a'", "config.items.all(x, 1)",
    "size(1)", "'abc'.startsWith(1)", "for", "a.b{}",
])
def test_admission_rejects(src: str) -> None:
    with pytest.raises(CelCompileError):
        pdp_environment().compile(src)


def test_reserved_words_and_nesting_limits() -> None:
    with pytest.raises(CelCompileError, match="reserved"):
        pdp_environment().compile("while")
    with pytest.raises(CelCompileError, match="nesting"):
        pdp_environment().compile("(" * 300 + "1" + ")" * 300)
    assert pdp_environment().compile("(" * 40 + "1" + ")" * 40).evaluate({}) == 1


def test_literals() -> None:
    env = pdp_environment()
    src = "'''a\\nb''' + r'\\n' + \"\\u00e9\""
    assert env.compile(src).evaluate({}) == "a\nb\\n\u00e9"
    assert env.compile("b'\\xff\\000'").evaluate({}) == b"\xff\x00"
    assert env.compile("0x1F + 1").evaluate({}) == 32
    assert env.compile("18446744073709551615u").evaluate({}) == UInt(2**64 - 1)
    assert env.compile("-9223372036854775808").evaluate({}) == -(2**63)
    assert env.compile(".5e1").evaluate({}) == 5.0


def test_program_metadata() -> None:
    src = "config.exporters.exists(e, e.tls.insecure)"
    prog = pdp_environment().compile(src)
    assert prog.source_hash == hashlib.sha256(src.encode()).hexdigest()
    assert isinstance(prog.cost_estimate, int) and prog.cost_estimate > 0


def test_runtime_errors_are_cel_errors() -> None:
    env = pdp_environment()
    with pytest.raises(CelEvalError, match="no such key"):
        env.compile("config.missing").evaluate({"config": {}})
    with pytest.raises(CelEvalError):
        env.compile("config.x").evaluate({})  # missing variable
    with pytest.raises(CelEvalError, match="overflow"):
        env.compile("config.n + 1").evaluate({"config": {"n": 2**63 - 1}})
    # as cel-go: the smallest int modulo -1 overflows (its quotient does), like / -1
    for op in ("%", "/"):
        with pytest.raises(CelEvalError, match="overflow"):
            env.compile(f"config.n {op} -1").evaluate({"config": {"n": -2**63}})
    assert env.compile("config.n % -1").evaluate({"config": {"n": -2**63 + 1}}) == 0
    with pytest.raises(CelEvalError):
        env.compile("config.n / 0").evaluate({"config": {"n": 1}})
    with pytest.raises(CelEvalError):
        env.compile("config.l[-1]").evaluate({"config": {"l": [1]}})
    with pytest.raises(CelEvalError):
        env.compile("config.b + 1").evaluate({"config": {"b": True}})


def test_error_absorption() -> None:
    env = pdp_environment()
    assert env.compile("config.missing || true").evaluate({"config": {}}) is True
    assert env.compile("false && config.missing").evaluate({"config": {}}) is False
    assert env.compile("config.l.exists(x, 1 / x > 0)").evaluate({"config": {"l": [0, 1]}})
    with pytest.raises(CelEvalError):
        env.compile("config.l.all(x, 1 / x > 0)").evaluate({"config": {"l": [0, 1]}})


def test_time_values_from_activation() -> None:
    env = pdp_environment()
    now = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    assert env.compile("now.getHours()").evaluate({"now": now}) == 7
    assert env.compile('now.getHours("Europe/Berlin")').evaluate({"now": now}) == 9
    assert env.compile("now > timestamp('2024-01-01T00:00:00Z')").evaluate({"now": now})
    got = env.compile("now + duration('1h')").evaluate({"now": now})
    assert isinstance(got, Timestamp) and got.to_datetime() == now + dt.timedelta(hours=1)
    cfg = {"config": {"t": dt.timedelta(minutes=5)}}
    assert env.compile("config.t == duration('5m')").evaluate(cfg)
    assert isinstance(env.compile("duration('1s')").evaluate({}), Duration)


def test_yaml_values() -> None:
    import yaml

    cfg = yaml.safe_load("""
exporters:
  otlp:
    endpoint: localhost:4317
    tls: {insecure: true}
  otlphttp/prod:
    endpoint: https://otel.example.com:443
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlp, otlphttp/prod]}
""")
    prog = pdp_environment().compile(
        "config.exporters.exists(n, has(config.exporters[n].tls) && "
        "config.exporters[n].tls.insecure && !config.exporters[n].endpoint.isLocalhost())")
    assert prog.evaluate({"config": cfg}) is False
    cfg["exporters"]["otlp"]["endpoint"] = "10.0.0.1:4317"
    assert prog.evaluate({"config": cfg}) is True


def test_custom_environment_and_declarations() -> None:
    env = Environment({"x": "int", "m": "map(string, list(int))"})
    assert env.compile("m['a'].all(v, v < x)").evaluate({"x": 5, "m": {"a": [1, 2]}})
    with pytest.raises(CelCompileError, match="no matching overload"):
        env.compile("x + 'a'")


def test_cache_hits_misses_and_lru() -> None:
    cache = ProgramCache(maxsize=2)
    env = pdp_environment()
    p1 = cache.get_or_compile(env, "1 + 1")
    assert cache.get_or_compile(env, "1 + 1") is p1
    assert (cache.hits, cache.misses) == (1, 1)
    cache.get_or_compile(env, "2 + 2")
    cache.get_or_compile(env, "3 + 3")  # evicts "1 + 1"
    assert len(cache) == 2
    assert cache.get_or_compile(env, "1 + 1") is not p1
    assert cache.misses == 4
    other = Environment({"x": "int"})
    assert cache.get_or_compile(other, "2 + 2") is not cache.get_or_compile(env, "2 + 2")


def test_cache_does_not_store_compile_errors() -> None:
    cache = ProgramCache()
    for _ in range(2):
        with pytest.raises(CelCompileError):
            cache.get_or_compile(pdp_environment(), "1 +")
    assert len(cache) == 0


def test_every_exception_is_a_cel_error() -> None:
    class Weird:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("boom")

        __hash__ = object.__hash__

    env = pdp_environment()
    for src in ["config.w == 1", "config.w.x", "config.w[0]", "size(config.w)",
                "config.w in [1]", "config.w + 1", "string(config.w)"]:
        with contextlib.suppress(CelError):
            env.compile(src).evaluate({"config": {"w": Weird()}})


@pytest.mark.parametrize(("src", "want"), [
    ("config.l.all(x, cel.bind(y, x.v, y > 0 && y < 10))", True),
    ("config.l.map(x, cel.bind(y, x.v, y + x.v))", [2, 4, 6]),
    ("config.l.all(x, config.l.exists(y, y.v == x.v))", True),
    ("config.l.filter(x, config.l.exists(y, y.v > x.v)).map(x, x.v)", [1, 2]),
    ("config.m.a || config.m.a || true", True),
    ("config.l.exists(x, x.v == config.l[2].v && config.l[2].v == 3)", True),
    ("[config.l[0].v, config.l[0].v, config.l[1].v]", [1, 1, 2]),
])
def test_path_caching_preserves_semantics(src: str, want: object) -> None:
    act = {"config": {"l": [{"v": 1}, {"v": 2}, {"v": 3}], "m": {}}}
    assert pdp_environment().compile(src).evaluate(act) == want


def test_cached_path_errors_are_not_cached() -> None:
    prog = pdp_environment().compile("config.l.all(x, config.m.a == 1 || x > 0)")
    assert prog.evaluate({"config": {"l": [1, 2], "m": {}}}) is True
    with pytest.raises(CelEvalError):
        prog.evaluate({"config": {"l": [0], "m": {}}})
