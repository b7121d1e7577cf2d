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


class ConfigCache:
    """Bounded LRU of parsed configs by SHA-256 of their text."""

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def load(self, text: str | None, field: str) -> Any:
        """Parsed value of ``text`` (None stays None); large misses parse off the loop."""
        if not text:
            return None
        if len(text) > THREAD_PARSE_BYTES and self._peek(text) is None:
            return await asyncio.to_thread(self.parse, text, field)
        return self.parse(text, field)

    def _peek(self, text: str) -> Any:
        return self._items.get(hashlib.sha256(text.encode()).digest())

    def parse(self, text: str, field: str) -> Any:
        raw = text.encode()
        if len(raw) > self.max_bytes:
            raise InvalidRequest(field, f"{len(raw)} bytes is larger than the limit of"
                                        f" {self.max_bytes} bytes")
        key = hashlib.sha256(raw).digest()
        try:
            value = self._items[key]
        except KeyError:
            pass
        else:
            self.hits += 1
            self._items.move_to_end(key)
            return value
        self.misses += 1
        try:
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
        return value


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
