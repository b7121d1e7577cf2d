"""The bounded config parse: limits, the deadline stop, numbers, the byte-bounded cache, and
equality with ``yaml.load(text, Loader=ConfigLoader)`` wherever no limit applies."""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp.engine import configparse, context
from pdp.engine.configparse import (
    MAX_DEPTH,
    MAX_NODES,
    MAX_SCALAR_CHARS,
    ConfigBuild,
    ConfigLoader,
    ConfigRejected,
    ParseDeadlineExceeded,
    parse_config,
)
from pdp.engine.context import ConfigCache, build_context
from pdp.engine.request import CheckRequest, InvalidRequest
from pdp.policy.model import Checkpoint

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and types compared too (1 == 1.0 == True is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def old(text: str) -> Any:
    return yaml.load(text, Loader=ConfigLoader)


def new(text: str) -> Any:
    return parse_config(text, "config.yaml")[0]


def example_configs() -> list[str]:
    texts = [p.read_text() for p in sorted((EXAMPLES / "configs").glob("*.yaml"))]
    for path in sorted((EXAMPLES / "requests").glob("*.yaml")):
        req = yaml.safe_load(path.read_text())
        if isinstance(req.get("config"), str):
            texts.append(req["config"])
    return texts


CORPUS = [
    "",
    "# only a comment\n",
    "a: 1",
    "a: &x {b: [1, 2, {c: d}]}\nz: *x\nw: [*x, *x]\n",
    "base: &b {x: 1, y: 2}\nover: {<<: *b, y: 3, z: 4}\n",
    "a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc: {<<: [*a, *b], w: 0}\n",
    "c: {x: 0, <<: {x: 1, y: 1}}\n",
    "=: 1\n",
    "'<<': 1\n",
    "literal: |\n  line 1\n   line 2\n\nfolded: >-\n  a\n  b\n\n  c\nkeep: |+\n  x\n\n",
    "s: !!str 123\nt: !!str true\nn: !!null x\ni: !!int '42'\nf: !!float '1'\nb: !!bool 'on'\n",
    "bools: [yes, Yes, YES, no, No, NO, true, True, TRUE, false, False, FALSE, on, On, ON,"
    " off, Off, OFF, 'yes', \"true\", y, n, tRUE]\n",
    "nulls: [~, null, Null, NULL, 'null', nULL]\nempty:\nalso: {a: , b}\n",
    "ints: [0, -0, +7, 0x1F, 0x_1f, 0o17, 017, 0b1010, -0b11, 1_000, 1:30, -1:30:00, 09,"
    " 9223372036854775807, -9223372036854775808, 18446744073709551615, 0b" + "1" * 64 + "]\n",
    "floats: [1.5, -1.5, .5, 1., 1.0e+3, 1e3, 1.0e3, .inf, -.Inf, +.INF, .nan, .NaN, 1_0.5,"
    " 1:30.5, 6.8523015e+5, 685.230_15e+03, 1.0e+400]\n",
    "dates: [2024-01-01, 2024-01-01T10:00:00Z, '2024-01-01']\n",
    "ts: !!timestamp 2024-01-01\nbin: !!binary aGVsbG8=\n",
    "set: !!set {a, b}\n",
    "odd: [!, '!', '&', '*x', -, '-', ':', '<', '=', '.', '+', '~']\n",
    "endpoint: 0.0.0.0:4317\nversion: 1.2.3\nport: '4317'\nduration: 10s\n",
    "unicode: 'h\u00e9llo \u2603'\nescaped: \"tab\\tnl\\n\\u00e9\\x41\"\n",
    "? complex key\n: value\n? lone\n",
    "--- \na: 1\n...\n",
    "[1, [2, [3, [4]]]]",
    "just a scalar",
    "%YAML 1.1\n---\na: b\n",
    "key: 'multi\n\n  line'\n",
    "a: !!seq [1]\nb: !!map {c: d}\nc: ! 12\nd: ! '12'\n",
]


@pytest.mark.parametrize("text", example_configs() + CORPUS)
def test_same_value_as_yaml_load(text: str) -> None:
    assert same(new(text), old(text))


def test_implicit_timestamps_stay_strings() -> None:
    assert new("d: 2024-01-01") == {"d": "2024-01-01"}


ERRORS = [
    "a: [1, 2",  # scanner / parser errors
    "a: 1\n---\nb: 2\n",  # two documents
    "a: *nothing\n",  # undefined alias
    "? [a]\n: b\n",  # unhashable key
    "<<: 1\n",  # merge of a scalar
    "<<: [1]\n",
    "a: <<\n",  # merge tag out of key position
    "a: =\n",
    "a: !!bool maybe\n",
    "a: !!int abc\n",
    "a: !!float abc\n",
    "a: !custom x\n",
    "a: !!python/object:os.system x\n",
    "a: !!map [1]\n",
    "a: !!timestamp nope\n",
]


@pytest.mark.parametrize("text", ERRORS)
def test_invalid_yaml_is_invalid_request(text: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the old loader raises all sorts
        old(text)
    with pytest.raises(InvalidRequest) as err:
        new(text)
    assert err.value.field == "config.yaml"


def test_unsupported_but_loadable_tags_are_refused_clearly() -> None:
    """omap/pairs (lists of tuples) and self-containing aliases have no place in a config."""
    for text in ("a: !!omap [{x: 1}]\n", "a: !!pairs [{x: 1}]\n"):
        with pytest.raises(InvalidRequest, match="not supported"):
            new(text)
    with pytest.raises(ConfigRejected, match="cycle"):
        new("a: &a [1, *a]\n")


# -- equality over generated configs ----------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["yes", "no", "on", "Off", "~", "null", "0x1f", "017", "1:30", "1e3",
                     "1.0e+3", ".inf", "=", "<<", "2024-01-01", "0.0.0.0:4317", "-", ""]),
)
_keys = st.one_of(st.text(max_size=12), st.integers(-1000, 1000), st.booleans())
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_values, flow=st.sampled_from([None, True, False]),
       style=st.sampled_from([None, "'", '"', "|", ">"]))
def test_generated_configs_parse_like_yaml_load(value: Any, flow: bool | None,
                                                style: str | None) -> None:
    text = yaml.safe_dump(value, default_flow_style=flow, default_style=style,
                          allow_unicode=True)
    try:
        expected = old(text)
    except yaml.YAMLError:
        with pytest.raises(InvalidRequest):
            new(text)
        return
    assert same(new(text), expected)


_tokens = st.sampled_from([
    "a", "b", ": ", "- ", "\n", "  ", "[", "]", "{", "}", ", ", "&x ", "*x", "<<", "1", "0x1",
    "~", "'q'", '"d"', "!!str ", "? ", "yes", ".5", "#c", "|\n", "1:2", "&y ", "*y", "!!set ",
    "!!int ", "! ", "---\n", "=", "- - ", "\t"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_tokens, max_size=25).map("".join))
def test_token_soup_parses_or_fails_like_yaml_load(text: str) -> None:
    """Odd but small inputs: the same value, or both refuse (cycles are refused only here)."""
    try:
        expected = old(text)
    except Exception:
        with pytest.raises((InvalidRequest, ConfigRejected)):
            new(text)
        return
    try:
        got = new(text)
    except ConfigRejected as exc:
        assert "cycle" in str(exc)
        return
    except InvalidRequest as exc:
        assert "duplicate key" in str(exc)  # YAML forbids them; PyYAML keeps the last one
        return
    assert same(got, expected)


@pytest.mark.parametrize(("text", "where"), [
    ("exporters: {}\nexporters: {debug: {}}\n", "line 2, column 1: found duplicate key"
                                                 " 'exporters'"),
    ("a: {x: 1, x: 2}\n", "line 1, column 11: found duplicate key 'x'"),
    ("1: a\n1.0: b\n", "found duplicate key 1.0"),
    ("? a\n? a\n", "found duplicate key 'a'"),
    # Two merge keys: PyYAML 6.0.3 let the second win, 6.0.4 the first.
    ("a: &a {x: 1}\nc:\n  <<: *a\n  <<: {x: 5, q: 1}\n",
     "line 4, column 7: found duplicate key '<<'"),
])
def test_a_key_given_twice_is_refused(text: str, where: str) -> None:
    """Parsers differ on which value of a duplicated key wins: what pdp decides on could
    differ from what the agent applies, so the config is refused, never guessed."""
    with pytest.raises(InvalidRequest, match=where):
        new(text)


def test_merged_keys_may_be_overridden() -> None:
    assert new("b: &b {x: 1, y: 2}\nd: {<<: *b, x: 3}\n")["d"] == {"x": 3, "y": 2}


# -- limits -----------------------------------------------------------------------------------

def test_node_limit_counts_values() -> None:
    ok = "[" + ",".join(["1"] * (MAX_NODES - 1)) + "]"
    assert len(new(ok)) == MAX_NODES - 1
    with pytest.raises(ConfigRejected, match=f"more than {MAX_NODES} values"):
        new("[" + ",".join(["1"] * MAX_NODES) + "]")


def _laughs(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_by_alias_expansion() -> None:
    assert len(new(_laughs(4))["l3"]) == 10
    with pytest.raises(ConfigRejected, match="alias expansion") as err:
        new(_laughs(9))
    assert err.value.field == "config.yaml"


def test_merges_count_their_expansion() -> None:
    text = "a: &a {" + ", ".join(f"k{i}: {i}" for i in range(1000)) + "}\n"
    text += "".join(f"m{i}: {{<<: *a}}\n" for i in range(200))
    with pytest.raises(ConfigRejected, match="alias expansion"):
        new(text)


def test_depth_limit() -> None:
    assert new("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(ConfigRejected, match=f"nesting deeper than {MAX_DEPTH} levels"):
        new("a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH)
    with pytest.raises(ConfigRejected, match="nesting deeper"):
        new("a: " + "[" * 100_000)  # refused before the parser sees the (missing) end


@pytest.mark.parametrize("template", ["a: {}", "a: '{}'", "a: |-\n  {}\n", "? {}\n: 1\n",
                                      "- !!str {}"])
def test_scalar_length_limit(template: str) -> None:
    new(template.format("x" * MAX_SCALAR_CHARS))
    with pytest.raises(ConfigRejected, match="a scalar of"):
        new(template.format("x" * (MAX_SCALAR_CHARS + 1)))


@pytest.mark.parametrize("template", ["s: {}\n", "s: '{}'\n", "s: |-\n  {}\n",
                                      "a: 1\n# {}\n", "a: 1\n{}"])
def test_a_long_token_is_stopped_while_libyaml_scans_it(template: str) -> None:
    """libyaml scans a whole scalar or comment before its event: the feed stops it early."""
    text = template.format("x" * (4 << 20)) if "{}" in template else template
    if template == "a: 1\n{}":
        text = "a: 1\n" + " " * (4 << 20) + "\n"  # 4 MB of blanks: no event either
    build = ConfigBuild(text, "config.yaml")
    with pytest.raises(ConfigRejected, match="without a value") as err:
        build.run()
    assert err.value.field == "config.yaml"
    assert build.feed is not None
    # Refused after reading about the bound, not the 4 MB.
    assert build.feed.pos <= build.feed.max_gap + 2 * configparse.FEED_CHUNK < len(text) // 4


def test_a_long_config_with_short_tokens_parses_through_the_feed() -> None:
    items = ",".join(f"'{i:06d}'" for i in range(60_000))  # ~600 KB: above the feed threshold
    text = f"items: [{items}]\nlast: {'y' * MAX_SCALAR_CHARS}\n"
    build = ConfigBuild(text, "config.yaml")
    assert build.run() and build.feed is not None
    assert len(build.root["items"]) == 60_000 and len(build.root["last"]) == MAX_SCALAR_CHARS
    assert build.root == yaml.load(text, Loader=ConfigLoader)


def test_the_feed_looks_at_the_deadline_inside_a_token() -> None:
    feed = configparse._Feed(b"x" * (1 << 20), "config.yaml", 0.0, MAX_SCALAR_CHARS)
    feed.read(configparse.FEED_CHUNK)  # the first chunk is always handed over
    with pytest.raises(ParseDeadlineExceeded, match="deadline"):
        feed.read(configparse.FEED_CHUNK)


async def test_size_limit_is_checked_before_parsing() -> None:
    cache = ConfigCache(10, 1000)
    assert await cache.load("a: " + "x" * 990, "config.yaml") == {"a": "x" * 990}
    with pytest.raises(InvalidRequest, match="larger than the limit of 1000 bytes"):
        await cache.load("a: " + "\u00e9" * 500, "config.yaml")  # 1003 bytes of UTF-8
    assert cache.misses == 1


def test_limits_are_per_cache() -> None:
    cache = ConfigCache(10, 1 << 20, max_nodes=10, max_depth=2, max_scalar=5)
    with pytest.raises(ConfigRejected, match="more than 10 values"):
        cache.parse("[" + ",".join("1" * 10) + "]", "config.yaml")
    with pytest.raises(ConfigRejected, match="deeper than 2"):
        cache.parse("[[[]]]", "config.yaml")
    with pytest.raises(ConfigRejected, match="scalar"):
        cache.parse("abcdef", "config.yaml")


# -- the deadline -----------------------------------------------------------------------------

def test_a_past_deadline_stops_before_parsing() -> None:
    with pytest.raises(ParseDeadlineExceeded) as err:
        parse_config("a: 1", "config.yaml", deadline=0.0)
    assert isinstance(err.value, ConfigRejected) and err.value.field == "config.yaml"


class _Clock:
    """time.monotonic that jumps far ahead after its first reading."""

    def __init__(self) -> None:
        self.calls = 0

    def monotonic(self) -> float:
        self.calls += 1
        return 0.0 if self.calls == 1 else 1e9


def test_the_deadline_stops_the_parse_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "items: [" + ",".join(str(i) for i in range(50_000)) + "]"
    monkeypatch.setattr(configparse, "time", _Clock())
    build = ConfigBuild(text, "config.yaml", deadline=1.0)
    with pytest.raises(ParseDeadlineExceeded, match="deadline"):
        build.run()
    # It stopped itself at the first look at the clock, not at the end of the text.
    assert build.stack and len(build.stack[-1].container) < configparse.CHECK_EVERY


async def test_load_with_a_spent_deadline_denies_and_caches_nothing() -> None:
    cache = ConfigCache(10, 8 << 20)
    big = "items: [" + ",".join(str(i) for i in range(20_000)) + "]"
    for text in (big, "a: 1"):
        with pytest.raises(ParseDeadlineExceeded):
            await cache.load(text, "config.yaml", deadline=0.0)
    assert len(cache) == 0
    assert (await cache.load("a: 1", "config.yaml", None)) == {"a": 1}
    # A hit costs nothing: it is answered even when the deadline is spent.
    assert (await cache.load("a: 1", "config.yaml", 0.0)) == {"a": 1}


async def test_build_context_passes_the_deadline() -> None:
    cache = ConfigCache(10, 8 << 20)
    req = CheckRequest(tenant="t", checkpoint=Checkpoint.PUSH, agent={"id": "a"},
                       config_yaml="a: 1", previous_config_yaml="a: 0")
    with pytest.raises(ParseDeadlineExceeded):
        await build_context(req, cache, deadline=0.0)
    ctx = await build_context(req, cache)
    assert ctx.activation["config"] == {"a": 1}
    assert ctx.activation["previous_config"] == {"a": 0}


async def test_large_parses_yield_to_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "SLICE_S", 0.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    text = "items: [" + ",".join(str(i) for i in range(20_000)) + "]"
    started = ticks
    value = await ConfigCache(10, 8 << 20).load(text, "config.yaml")
    task.cancel()
    assert len(value["items"]) == 20_000
    assert ticks - started >= 20_000 // configparse.CHECK_EVERY - 1


# -- numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "path"), [
    ("exporters:\n  otlp:\n    timeout: " + "9" * 5000 + "\n", "exporters.otlp.timeout"),
    ("a: 18446744073709551616", "a"),
    ("a: -9223372036854775809", "a"),
    ("a: [1, 2, 0x1" + "0" * 16 + "]", "a[2]"),
    ("a: 0b1" + "0" * 64, "a"),
    ("a: !!int '" + "1" * 40 + "'", "a"),
    ("a: " + ":".join(["59"] * 30), "a"),
    ("a: {" + "9" * 30 + ": x}", "a key in a"),
    ("9" * 5000, "the top level"),
])
def test_integers_out_of_range_are_refused_by_path(text: str, path: str) -> None:
    with pytest.raises(ConfigRejected) as err:
        new(text)
    assert str(err.value) == f"config.yaml: value at {path}: integer out of range"


def test_integer_edges_and_floats() -> None:
    assert new("[9223372036854775807, -9223372036854775808, 18446744073709551615]") == [
        (1 << 63) - 1, -(1 << 63), (1 << 64) - 1]
    assert new("a: 1" + "0" * 30 + ".5") == {"a": 1e30 + 0.5}
    value = new("[.inf, -.inf, .nan, 1.0e+999]")
    assert value[0] == math.inf and value[1] == -math.inf and math.isnan(value[2])
    assert value[3] == math.inf


# -- the cache --------------------------------------------------------------------------------

def _big(i: int) -> str:
    return "".join(f"key{j}: value {i} {j} {'x' * 40}\n" for j in range(2000))


def test_cache_is_bounded_in_estimated_bytes() -> None:
    one = parse_config(_big(0), "config.yaml")[1]
    cache = ConfigCache(1000, 8 << 20, cache_bytes=int(one * 3.5))
    for i in range(12):
        cache.parse(_big(i), "config.yaml")
        assert cache.total_bytes <= cache.cache_bytes
    assert len(cache) == 3
    assert cache.total_bytes == sum(entry[1] for entry in cache._items.values())
    # The most recent stay; the oldest went first.
    cache.parse(_big(11), "config.yaml")
    assert cache.hits == 1
    cache.parse(_big(0), "config.yaml")
    assert cache.misses == 13


def test_a_value_larger_than_the_whole_budget_is_not_cached() -> None:
    cache = ConfigCache(10, 8 << 20, cache_bytes=10_000)
    cache.parse("a: 1", "config.yaml")
    assert cache.parse(_big(0), "config.yaml")["key0"].startswith("value 0 0")
    assert len(cache) == 1 and cache.total_bytes <= 10_000


def test_cache_is_bounded_in_nodes() -> None:
    """What a full garbage collection traverses: the nodes of every cached config."""
    def config(i: int) -> str:  # 2 000 nodes: a map (1) of 999 keys and 999 values
        return "\n".join(f"k{i}_{j}: {j}" for j in range(999))

    cache = ConfigCache(1000, 8 << 20, cache_nodes=5_000)
    for i in range(6):
        cache.parse(config(i), "config.yaml")
        assert cache.total_nodes <= 5_000
    assert len(cache) == 2 and cache.total_nodes == 2 * 1_999
    assert cache.total_nodes == sum(entry[3] for entry in cache._items.values())
    assert cache.parse(config(5), "config.yaml") == {f"k5_{j}": j for j in range(999)}
    assert cache.hits == 1  # the most recent stayed
    over = "\n".join(f"x{j}: {j}" for j in range(3_000))  # 6 001 nodes
    assert cache.parse(over, "config.yaml")["x7"] == 7  # parsed, not kept
    assert len(cache) == 2 and cache.total_nodes == 2 * 1_999


def test_cache_keeps_its_count_bound() -> None:
    cache = ConfigCache(3, 8 << 20)
    for i in range(10):
        cache.parse(f"a: {i}", "config.yaml")
    assert len(cache) == 3


def count_sha256(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``hashlib.sha256`` counting its calls in the returned ``[0]``."""
    calls = [0]
    real = hashlib.sha256

    def counting(data: bytes) -> Any:
        calls[0] += 1
        return real(data)

    monkeypatch.setattr(hashlib, "sha256", counting)
    return calls


async def test_a_shared_text_object_is_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_sha256(monkeypatch)
    cache = ConfigCache(10, 8 << 20)
    text = "".join(["a: ", "1"])  # one object, as a step's requests share it
    for _ in range(5):
        assert await cache.load(text, "config.yaml") == {"a": 1}
    cache.digest(text)
    assert calls[0] == 1 and cache.hits == 4 and cache.misses == 1


async def test_a_refused_text_is_hashed_once_for_the_decision_and_its_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder names a refused config by the key its parse computed: a text that could
    not be parsed costs one hash, not two."""
    calls = count_sha256(monkeypatch)
    cache = ConfigCache(10, 8 << 20)
    text = "".join(["a: [", "1"])  # not YAML
    with pytest.raises(InvalidRequest):
        await cache.load(text, "config.yaml")
    assert cache.digest(text) == hashlib.new("sha256", text.encode()).digest()
    assert calls[0] == 1


async def test_a_long_text_is_hashed_while_the_loop_serves_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SHA-256 lets go of the GIL: a long text is hashed on a worker thread and the loop
    runs other tasks meanwhile; the key is the same as on the loop, and it is remembered."""
    from tests.support.wait import runs_meanwhile

    threads: list[str] = []
    real = context._sha256

    def watched(raw: bytes) -> bytes:
        threads.append(threading.current_thread().name)
        return real(raw)

    monkeypatch.setattr(context, "_sha256", watched)
    text = "items:\n" + "".join(f"  - item{i}\n" for i in range(40_000))
    assert len(text) >= context.HASH_OFF_LOOP_BYTES
    cache = ConfigCache(10, 8 << 20)
    value, _ = await runs_meanwhile(cache.load(text, "config.yaml"))
    assert len(value["items"]) == 40_000
    assert len(threads) == 1 and threads[0] != threading.main_thread().name
    assert cache.digest(text) == hashlib.sha256(text.encode()).digest()
    assert len(threads) == 1  # the recorder's digest was remembered, not hashed again
    await cache.load("a: 1", "config.yaml")  # a short text is hashed on the loop
    assert len(threads) == 1


def test_recent_keys_are_bounded_in_count_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "RECENT_BYTES", 1000)
    cache = ConfigCache(100, 8 << 20)
    texts = [f"a: {i}" + " " * 300 for i in range(10)]
    for t in texts:
        cache.digest(t)
    assert cache._recent_bytes <= 1000 and len(cache._recent) == 3
    monkeypatch.setattr(context, "RECENT_BYTES", 1 << 30)
    for i in range(context.RECENT_MAX * 2):
        cache.digest(f"b: {i}")
    assert len(cache._recent) == context.RECENT_MAX


def test_settings_feed_the_cache() -> None:
    from pdp.settings import Settings
    s = Settings()
    assert s.config_cache_bytes == 64 * 1024 * 1024 and s.config_max_nodes == MAX_NODES
    assert s.config_cache_nodes == configparse.CACHE_NODES

