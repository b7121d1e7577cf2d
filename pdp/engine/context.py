"""Build the evaluation context of one request: parse config YAML once per content hash.

A rollout step sends the same config for a thousand agents; parsing it once and sharing the
parsed (never mutated) value is the single biggest saving on the decision path.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import yaml

from pdp.engine.request import CheckRequest, InvalidRequest
from pdp.policy.evalctx import EvalContext

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Configs larger than this are parsed on a worker thread so the event loop keeps accepting
# and answering other calls meanwhile.
THREAD_PARSE_BYTES = 64 * 1024


class ConfigLoader(_BaseLoader):  # type: ignore[misc]
    """Safe YAML without implicit timestamps: policies see the text the author wrote."""

    yaml_implicit_resolvers = {
        k: [(tag, regexp) for tag, regexp in v if tag != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


MAX_DEPTH = 64
MAX_NODES = 1_000_000  # after alias expansion


class ConfigRejected(ValueError):
    """Well-formed YAML over a safety limit (a YAML bomb): the engine denies INVALID_CONFIG."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def check_limits(text: str, field: str) -> None:
    """Reject YAML whose nesting or alias-expanded size is over the limits, before building it.

    One pass over the event stream (C speed): sizes of anchored nodes are remembered so that an
    alias counts as the whole subtree it expands to. Billion-laughs fails here in milliseconds.
    """
    anchors: dict[str, int] = {}
    stack: list[list[Any]] = []  # [anchor, node count]
    total = 0
    for event in yaml.parse(text, Loader=_BaseLoader):
        size = -1
        if isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            size, anchor = anchors.get(event.anchor or "", 1), None
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_DEPTH:
                raise ConfigRejected(field, f"nesting deeper than {MAX_DEPTH} levels")
            continue
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            anchor, size = stack.pop()
        else:
            continue
        if anchor:
            anchors[anchor] = size
        if stack:
            stack[-1][1] += size
        else:
            total += size
        if total + sum(s[1] for s in stack[-1:]) > MAX_NODES or size > MAX_NODES:
            raise ConfigRejected(field, f"more than {MAX_NODES} values after alias expansion"
                                        " (a YAML bomb?)")


class ConfigCache:
    """Bounded LRU of parsed configs by SHA-256 of their text."""

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0
        # Recent text objects and their keys: a step's requests share one config text
        # object (and one previous config), which then is hashed once, not once per agent.
        self._recent: dict[int, tuple[str, bytes, int]] = {}

    async def load(self, text: str | None, field: str) -> Any:
        """Parsed value of ``text`` (None stays None); large misses parse off the loop."""
        if not text:
            return None
        if len(text) > THREAD_PARSE_BYTES and self._peek(text) is None:
            return await asyncio.to_thread(self.parse, text, field)
        return self.parse(text, field)

    def _peek(self, text: str) -> Any:
        return self._items.get(self.digest(text))

    def digest(self, text: str) -> bytes:
        """SHA-256 of the text's UTF-8 (the cache key), remembered for recent text objects."""
        hit = self._recent.get(id(text))
        if hit is not None and hit[0] is text:
            return hit[1]
        raw = text.encode()
        key = hashlib.sha256(raw).digest()
        self._remember(text, key, len(raw))
        return key

    def parse(self, text: str, field: str) -> Any:
        hit = self._recent.get(id(text))
        if hit is not None and hit[0] is text:
            _, key, size = hit
        else:
            raw = text.encode()
            key, size = hashlib.sha256(raw).digest(), len(raw)
        if size > self.max_bytes:
            raise InvalidRequest(field, f"{size} bytes is larger than the limit of"
                                        f" {self.max_bytes} bytes")
        try:
            value = self._items[key]
        except KeyError:
            pass
        else:
            self.hits += 1
            self._items.move_to_end(key)
            self._remember(text, key, size)
            return value
        self.misses += 1
        try:
            check_limits(text, field)
            value = yaml.load(text, Loader=ConfigLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise InvalidRequest(field, f"not valid YAML{where}: {problem}") from None
        except RecursionError:
            raise InvalidRequest(field, "YAML nesting is too deep") from None
        self._items[key] = value
        if len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        self._remember(text, key, size)
        return value

    def _remember(self, text: str, key: bytes, size: int) -> None:
        if len(self._recent) >= 8:
            self._recent.clear()
        self._recent[id(text)] = (text, key, size)


async def build_context(req: CheckRequest, configs: ConfigCache,
                        now: datetime | None = None) -> EvalContext:
    """The CEL activation and typed-rule input for ``req``; raises InvalidRequest."""
    now = now or datetime.now(UTC)
    config = await configs.load(req.config_yaml, "config.yaml")
    previous = await configs.load(req.previous_config_yaml, "previous_config.yaml")
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
        "metrics": req.metrics,
        "now": now,
    }
    return EvalContext(req.tenant, req.checkpoint, now, activation)
