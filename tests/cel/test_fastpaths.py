"""Specialised code paths give exactly the results (values and errors) of the generic ones.

Each fast-path expression is compared with a twin that the code generator cannot specialise
(an operand wrapped in ``dyn()``), over values of every runtime type, including subclasses,
YAML dates and values of unsupported types.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from pdp.cel import (
    CelError,
    Duration,
    Environment,
    Optional,
    Timestamp,
    UInt,
    pdp_environment,
)
from pdp.cel.program import Budget


class SubDict(dict[str, Any]):
    pass


class SubList(list[Any]):
    pass


class SubStr(str):
    __slots__ = ()


VALUES: list[Any] = [
    True, False, 0, 1, -3, UInt(1), 1.0, float("nan"), "", "s", "exporters", SubStr("s"),
    b"b", None, [], [1], ["a", "exporters"], [SubStr("a")], (), ("a",), SubList(["a"]), {},
    {"k": 1}, {"exporters": {}}, SubDict(exporters=1), Timestamp(0),
    dt.datetime(2025, 1, 1, tzinfo=dt.UTC), Duration(5), dt.timedelta(seconds=1),
    dt.date(2025, 1, 1), Optional(True, 1), Optional(False), set(), object(),
]
TYPE_NAMES = ["int", "uint", "double", "bool", "string", "bytes", "null_type", "list", "map",
              "type", "google.protobuf.Timestamp", "google.protobuf.Duration"]


def outcome(src: str, act: dict[str, Any]) -> tuple[Any, ...]:
    prog = pdp_environment().compile(src, check=False)
    try:
        v = prog.evaluate(act, Budget(cost_limit=10_000))
    except CelError as e:
        return ("error", type(e).__name__, str(e))
    return ("value", type(v), v)


def same(fast: str, slow: str, act: dict[str, Any]) -> None:
    assert outcome(fast, act) == outcome(slow, act), (fast, act)


@pytest.mark.parametrize("name", TYPE_NAMES)
def test_type_equality_is_exact(name: str) -> None:
    for v in VALUES:
        act = {"config": {"x": v}, "agent": {}}
        for fast, slow in [
            (f"type(config.x) == {name}", f"dyn(type(config.x)) == {name}"),
            (f"{name} == type(config.x)", f"{name} == dyn(type(config.x))"),
            (f"type(config.x) != {name}", f"dyn(type(config.x)) != {name}"),
            (f"{name} != type(config.x)", f"{name} != dyn(type(config.x))"),
            (f"type(config.x) == {name} || true", f"dyn(type(config.x)) == {name} || true"),
        ]:
            same(fast, slow, act)


def test_type_equality_errors_propagate_and_are_absorbed() -> None:
    act: dict[str, Any] = {"config": {}, "agent": {}}
    for fast, slow in [
        ("type(config.missing) == map", "dyn(type(config.missing)) == map"),
        ("type(config.missing) != map", "dyn(type(config.missing)) != map"),
        ("type(config.missing) == map || true", "dyn(type(config.missing)) == map || true"),
        ("false && type(config.missing) == map", "false && dyn(type(config.missing)) == map"),
        ("type(1 / 0) == int", "dyn(type(1 / 0)) == int"),
    ]:
        same(fast, slow, act)
    assert outcome("type(config.missing) == map", act)[0] == "error"
    assert outcome("type(config.missing) == map || true", act)[1:] == (bool, True)
    # a value of an unsupported type makes type() fail, as in the generic equality
    assert outcome("type(config.x) == map", {"config": {"x": set()}})[0] == "error"


def test_type_literal_on_both_sides_and_types_of_types() -> None:
    for src in ["type(int) == type", "type(type(1)) == type", "type(map) == type",
                "type(map) != map",
                "type(google.protobuf.Duration) == type", "type(null) == null_type",
                "type(1u) == uint", "type(1u) != int", "type(true) != int",
                "type([]) == list", "type({}) == map", "type(b'') == bytes",
                "type(duration('1s')) == google.protobuf.Duration",
                "type(timestamp(0)) == google.protobuf.Timestamp"]:
        assert outcome(src, {}) == ("value", bool, True), src


def test_in_with_literal_key_or_literal_string_list() -> None:
    for v in VALUES:
        act = {"config": {"x": v}, "agent": {}}
        for fast, slow in [
            ('"exporters" in config.x', 'dyn("exporters") in config.x'),
            ('"a" in config.x', 'dyn("a") in config.x'),
            ('config.x in ["s", "exporters"]', 'config.x in dyn(["s", "exporters"])'),
            ('config.x in ["s"] || true', 'config.x in dyn(["s"]) || true'),
            ('"k" in config.x || true', 'dyn("k") in config.x || true'),
        ]:
            same(fast, slow, act)
    same('config.missing in ["a"]', 'config.missing in dyn(["a"])', {"config": {}})
    same('"a" in config.missing', 'dyn("a") in config.missing', {"config": {}})


@pytest.mark.parametrize("lst", [["a", "b"], ["b", SubStr("a")], [SubStr("a"), "a"], [1, "a"],
                                 [], ("a",), [b"a", "a"], [1.0, 2]])
def test_string_in_list_needs_the_exact_type(lst: list[Any]) -> None:
    for x in ["a", SubStr("a"), b"a", 1]:
        act = {"config": {"l": lst, "x": x}}
        want = any(type(e) is type(x) and e == x for e in lst) if type(x) in (str, bytes) \
            else None
        got = outcome("config.x in config.l", act)
        if want is not None:
            assert got == ("value", bool, want), (x, lst)


def test_paths_indexed_by_comprehension_variables() -> None:
    cfg = {"exporters": {"a": {"endpoint": "localhost:1"}, "b": {"endpoint": "x.us:1"},
                         "c": None, "d": {"endpoint": 3}, "e": {}}}
    act = {"config": cfg}
    srcs = [
        'config.exporters.exists(n, type(config.exporters[n]) == map && "endpoint" in '
        "config.exporters[n] && !config.exporters[n].endpoint.isLocalhost() && "
        'config.exporters[n].endpoint.endpointHost().endsWith(".us"))',
        "config.exporters.all(n, config.exporters[n].endpoint.endpointHost() != '' || "
        "config.exporters[n] == null)",
        "config.exporters.filter(n, has(config.exporters[n].endpoint) && "
        "config.exporters[n].endpoint == 3)",
        "config.exporters.map(n, config.exporters.exists(m, config.exporters[m] == "
        "config.exporters[n] && m != n))",
        "config.exporters.exists(n, config.exporters.all(m, config.exporters[n] != "
        "config.exporters[m] || m == n) && config.exporters[n].endpoint == 'x.us:1')",
        "[1, 2].all(i, [3, 4].exists(j, config.exporters['abc'[i]] == null || j > 3))",
    ]
    for src in srcs:
        slow = src.replace("config.exporters[n]", "config.exporters[dyn(n)]").replace(
            "config.exporters[m]", "config.exporters[dyn(m)]")
        assert slow != src or "[i]" in src
        same(src, slow, act)


def test_literal_durations_are_folded_and_still_fail_when_invalid() -> None:
    act = {"config": {"receivers": {"hostmetrics": {"collection_interval": "30s"},
                                    "hostmetrics/b": {"collection_interval": "2m"},
                                    "hostmetrics/c": {"collection_interval": "bogus"}}}}
    for r in ["hostmetrics", "hostmetrics/b", "hostmetrics/c"]:
        same(f'duration(config.receivers["{r}"].collection_interval) < duration("60s")',
             f'duration(config.receivers["{r}"].collection_interval) < duration(dyn("60s"))',
             act)
    same('timestamp("2025-01-01T00:00:00Z") < timestamp("2025-01-02T00:00:00Z")',
         'timestamp(dyn("2025-01-01T00:00:00Z")) < timestamp(dyn("2025-01-02T00:00:00Z"))',
         act)
    # An invalid literal is refused when a pdp policy compiles (literals.py); in plain CEL
    # it is not folded and fails at evaluation, as the same call on a dynamic value does.
    for src in ('duration("1x") < duration("60s")', 'timestamp("bogus") == timestamp(0)'):
        with pytest.raises(CelError, match="would fail at every evaluation"):
            pdp_environment().compile(src)
        with pytest.raises(CelError):
            Environment().compile(src).evaluate({})
    assert outcome('duration(dyn("1x")) < duration("60s")', {})[0] == "error"


def test_domain_helpers_memoised_results_and_errors() -> None:
    for _ in range(2):  # second round: served from the caches
        assert outcome('"localhost:4317".isLocalhost()', {}) == ("value", bool, True)
        assert outcome('"otel.eu:4317".endpointHost()', {}) == ("value", str, "otel.eu")
        assert outcome('"[::1".endpointHost()', {})[0] == "error"
        assert outcome('"h:99999".endpointPort()', {})[0] == "error"
        long = "h" * 300 + ":1"
        assert outcome(f'"{long}".endpointHost()', {}) == ("value", str, "h" * 300)


def test_repeated_pure_member_calls_are_cached_with_errors_intact() -> None:
    cfg = {"exporters": {"a": {"endpoint": "localhost:1"}, "b": {"endpoint": "x.us:1"},
                         "c": {"endpoint": 3}, "d": {"endpoint": "[::1"},
                         "e": {"endpoint": "otel.eu:4317"}}}
    src = ("config.exporters.{q}(n, config.exporters[n].endpoint.endpointHost() == 'x.us' "
           "|| config.exporters[n].endpoint.endpointHost().endsWith('.eu') "
           "|| config.exporters[n].endpoint.endpointPort() == 1 "
           "|| config.exporters[n].endpoint.endpointPort() == 2)")
    twin = src.replace("config.exporters[n].endpoint.", "dyn(config.exporters[n].endpoint).")
    for q in ("exists", "all", "filter", "exists_one"):
        for keys in (["a", "b", "c", "d", "e"], ["c"], ["d", "a"], ["e", "b"]):
            act = {"config": {"exporters": {k: cfg["exporters"][k] for k in keys}}}
            same(src.format(q=q), twin.format(q=q), act)


def test_shadowed_comprehension_variables_keep_their_own_caches() -> None:
    act = {"config": {"a": {"x": 1, "y": 2}, "b": ["x", "y"]}}
    for src in [
        "config.b.exists(n, config.a[n] == 2 && config.b.all(n, config.a[n] >= 1) "
        "&& config.a[n] == 2)",
        "config.b.map(n, config.b.map(n, config.a[n]) + [config.a[n], config.a[n]])",
        "config.b.all(map, type(map) == string && type(config.a[map]) == int)",
    ]:
        same(src, src.replace("config.a[n]", "config.a[dyn(n)]").replace(
            "config.a[map]", "config.a[dyn(map)]"), act)
