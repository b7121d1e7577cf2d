"""Build the evaluation context of one request: parse config YAML once per content hash.

A rollout step sends the same config for a thousand agents; parsing it once and sharing the
parsed (never mutated) value is the single biggest saving on the decision path. The parse
itself (limits, deadline) is configparse.py; this module caches its results, bounded in
bytes, and remembers texts refused before.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from pdp.cel.collector import collector_view
from pdp.engine.configparse import (
    CACHE_BYTES,
    CACHE_NODES,
    MAX_DEPTH,
    MAX_NODES,
    MAX_SCALAR_CHARS,
    SLICE_PARSE_BYTES,
    SLICE_S,
    ConfigBuild,
    ConfigRejected,
    ParseDeadlineExceeded,
)
from pdp.engine.request import CheckRequest, InvalidRequest
from pdp.policy.evalctx import EvalContext

#: Config texts remembered as refused (malformed, over a limit, or too slow to parse).
FAILED_MAX = 1024
#: A text that ran out of time is tried again after this long even with no more time.
FAILED_SLOW_TTL_S = 60.0
#: Texts at least this long are hashed on a worker thread: SHA-256 lets go of the GIL while
#: it runs, so the loop serves other calls meanwhile (half a millisecond per 600 KB here).
HASH_OFF_LOOP_BYTES = 128 * 1024
#: Recent text objects whose keys are remembered (see ConfigCache._remember): at most this
#: many, holding at most RECENT_BYTES of text alive.
RECENT_MAX = 32
RECENT_BYTES = 16 * 1024 * 1024


class ConfigCache:
    """LRU of parsed configs by SHA-256 of their text, bounded by count, estimated bytes
    and nodes (what a full collection of the garbage collector traverses)."""

    def __init__(self, maxsize: int, max_bytes: int, *, cache_bytes: int = CACHE_BYTES,
                 max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH,
                 max_scalar: int = MAX_SCALAR_CHARS, cache_nodes: int = CACHE_NODES) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes  # the largest config text accepted (UTF-8 bytes)
        self.cache_bytes = cache_bytes  # the most estimated bytes of parsed values kept
        self.cache_nodes = cache_nodes  # the most nodes of parsed values kept
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.max_scalar = max_scalar
        # key -> (parsed value, estimated bytes, what was derived from it: see derived(),
        # nodes)
        self._items: OrderedDict[bytes, tuple[Any, int, dict[Any, Any], int]] = OrderedDict()
        self._by_value: dict[int, bytes] = {}  # id(parsed value) -> key, for derived()
        self.total_bytes = 0
        self.total_nodes = 0
        self.hits = 0
        self.misses = 0
        # Recent text objects and their keys: a step's requests share one config text
        # object (and one previous config), which then is hashed once, not once per agent,
        # and the recorder names a decision's config by the key its parse computed.
        self._recent: OrderedDict[int, tuple[str, bytes, int]] = OrderedDict()
        self._recent_bytes = 0
        # Texts refused before, by key: (kind, problem, seconds spent, when) -- see
        # _refused_before; bounded LRU.
        self._failed: OrderedDict[bytes, tuple[str, str, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def load(self, text: str | None, field: str, deadline: float | None = None) -> Any:
        """Parsed value of ``text`` (None stays None), parsed by ``deadline`` or not at all.

        ``deadline`` is a ``time.monotonic()`` time (None = none). Large misses are parsed on
        the event loop in slices of SLICE_S, yielding in between. Measured against a worker
        thread (bench/config_parse.py): a thread holds the GIL for up to the 5 ms switch
        interval at a time and the loop then waits for it, so small calls meanwhile see longer
        pauses, and a thread would need the cache locked; a slice is just the same loop.
        """
        if not text:
            return None
        key, size = await self._key_off_loop(text)
        hit = self._hit(key)
        if hit is not None:
            return hit[0]
        self._refused_before(key, field, deadline)
        started = time.monotonic()
        try:
            build = self._start(text, field, size, deadline)
            if size > SLICE_PARSE_BYTES:
                while not build.run(time.monotonic() + SLICE_S):
                    await asyncio.sleep(0)
            else:
                build.run()
        except (InvalidRequest, ConfigRejected) as exc:
            self._remember_failure(key, exc, time.monotonic() - started)
            raise
        return self._store(key, build)

    def _refused_before(self, key: bytes, field: str, deadline: float | None) -> None:
        """Refuse at once a text that was refused before: the same problem (the parse is
        deterministic), or, if it ran out of time, when there is no more time now than it
        had then. Repeating a config that cannot be parsed costs a hash, not a parse."""
        failed = self._failed.get(key)
        if failed is None:
            return
        kind, problem, spent, at = failed
        now = time.monotonic()
        if kind == "slow":
            if now - at > FAILED_SLOW_TTL_S or (
                    deadline is not None and deadline - now > spent * 1.25) or deadline is None:
                return  # more time than it had: try again
            raise ParseDeadlineExceeded(
                field, f"it did not parse within {spent * 1000:.0f} ms"
                       f" {now - at:.0f} s ago; not parsed again with"
                       f" {max(0.0, deadline - now) * 1000:.0f} ms left")
        self._failed.move_to_end(key)
        if kind == "invalid":
            raise InvalidRequest(field, problem)
        raise ConfigRejected(field, problem)

    def _remember_failure(self, key: bytes, exc: InvalidRequest | ConfigRejected,
                          spent: float) -> None:
        kind = ("slow" if isinstance(exc, ParseDeadlineExceeded)
                else "invalid" if isinstance(exc, InvalidRequest) else "rejected")
        self._failed[key] = (kind, exc.problem, spent, time.monotonic())
        self._failed.move_to_end(key)
        while len(self._failed) > FAILED_MAX:
            self._failed.popitem(last=False)

    def parse(self, text: str, field: str, deadline: float | None = None) -> Any:
        """Parsed value of ``text`` in one go (no yielding); for callers outside the loop."""
        key, size = self._key(text)
        hit = self._hit(key)
        if hit is not None:
            return hit[0]
        build = self._start(text, field, size, deadline)
        build.run()
        return self._store(key, build)

    def digest(self, text: str) -> bytes:
        """SHA-256 of the text's UTF-8 (the cache key), remembered for recent text objects."""
        return self._key(text)[0]

    def _key(self, text: str) -> tuple[bytes, int]:
        """(key, UTF-8 size) of ``text``, remembered for this text object."""
        known = self._known(text)
        if known is not None:
            return known
        raw = text.encode()
        return self._remember(text, hashlib.sha256(raw).digest(), len(raw))

    async def _key_off_loop(self, text: str) -> tuple[bytes, int]:
        """:meth:`_key`, with a long text hashed on a worker thread (HASH_OFF_LOOP_BYTES)."""
        if len(text) < HASH_OFF_LOOP_BYTES:
            return self._key(text)
        known = self._known(text)
        if known is not None:
            return known
        raw = text.encode()
        return self._remember(text, await asyncio.to_thread(_sha256, raw), len(raw))

    def _known(self, text: str) -> tuple[bytes, int] | None:
        hit = self._recent.get(id(text))
        if hit is None or hit[0] is not text:
            return None
        self._recent.move_to_end(id(text))
        return hit[1], hit[2]

    def derived(self, value: Any) -> dict[Any, Any]:
        """A memo of what is worked out from the parsed ``value`` alone (its collector view,
        verdicts of rules that read nothing else): it lives and dies with the cache entry,
        so it never keeps a config alive that the cache dropped. A value not in the cache
        gets a fresh, unshared dict."""
        key = self._by_value.get(id(value))
        entry = self._items.get(key) if key is not None else None
        if entry is None or entry[0] is not value:
            return {}
        return entry[2]

    def _hit(self, key: bytes) -> tuple[Any, int, dict[Any, Any], int] | None:
        entry = self._items.get(key)
        if entry is not None:
            self.hits += 1
            self._items.move_to_end(key)
        return entry

    def _start(self, text: str, field: str, size: int, deadline: float | None) -> ConfigBuild:
        if size > self.max_bytes:
            raise InvalidRequest(field, f"{size} bytes is larger than the limit of"
                                        f" {self.max_bytes} bytes")
        self.misses += 1
        return ConfigBuild(text, field, deadline=deadline, max_nodes=self.max_nodes,
                      max_depth=self.max_depth, max_scalar=self.max_scalar)

    def _store(self, key: bytes, build: ConfigBuild) -> Any:
        value, estimate, nodes = build.root, build.size, build.nodes
        old = self._items.pop(key, None)  # a concurrent parse of the same text got here first
        if old is not None:
            self._forget(key, old)
        if estimate <= self.cache_bytes and nodes <= self.cache_nodes:
            self._items[key] = (value, estimate, {}, nodes)
            self._by_value[id(value)] = key
            self.total_bytes += estimate
            self.total_nodes += nodes
            while (len(self._items) > self.maxsize or self.total_bytes > self.cache_bytes
                   or self.total_nodes > self.cache_nodes):
                self._forget(*self._items.popitem(last=False))
        return value

    def _forget(self, key: bytes, entry: tuple[Any, int, dict[Any, Any], int]) -> None:
        self.total_bytes -= entry[1]
        self.total_nodes -= entry[3]
        if self._by_value.get(id(entry[0])) == key:
            del self._by_value[id(entry[0])]

    def _remember(self, text: str, key: bytes, size: int) -> tuple[bytes, int]:
        old = self._recent.pop(id(text), None)
        if old is not None:
            self._recent_bytes -= old[2]
        self._recent[id(text)] = (text, key, size)
        self._recent_bytes += size
        while self._recent and (len(self._recent) > RECENT_MAX
                                or self._recent_bytes > RECENT_BYTES):
            self._recent_bytes -= self._recent.popitem(last=False)[1][2]
        return key, size


def _sha256(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


#: Collector views (pdp.cel.collector) of recent parsed configs, by identity: a step's agents
#: share one parsed config object, so its view is built once and is the same object for all
#: of them (the batch memo compares activations by identity first). Bounded; cleared when full.
def _collector(configs: ConfigCache, config: Any) -> dict[str, Any]:
    """The collector view of ``config``, worked out once per parsed config (a step's agents
    share the object: the batch memo compares activations by identity first)."""
    memo = configs.derived(config)
    view: dict[str, Any] | None = memo.get("collector")
    if view is None:
        view = memo["collector"] = collector_view(config)
    return view


async def build_context(req: CheckRequest, configs: ConfigCache, now: datetime | None = None,
                        *, deadline: float | None = None) -> EvalContext:
    """The CEL activation and typed-rule input for ``req``.

    Raises InvalidRequest (malformed YAML), ConfigRejected (over a limit) and
    ParseDeadlineExceeded (``deadline``, a ``time.monotonic()`` time, ran out while parsing).
    """
    now = now or datetime.now(UTC)
    config = await configs.load(req.config_yaml, "config.yaml", deadline)
    previous = await configs.load(req.previous_config_yaml, "previous_config.yaml", deadline)
    activation: dict[str, Any] = {
        "request": {
            "tenant": req.tenant,
            "checkpoint": req.checkpoint.value,
            "change": req.change,
            "request_id": req.request_id,
            "caller": req.caller.identity,
        },
        "agent": req.agent or {},
        "device": req.device or {},
        "rollout": req.rollout or {},
        "config": config,
        "previous_config": previous,
        "collector": _collector(configs, config),
        "metrics": req.metrics,
        "now": now,
    }
    return EvalContext(req.tenant, req.checkpoint, now, activation)


__all__ = ["ConfigCache", "ConfigRejected", "ParseDeadlineExceeded", "build_context"]
