"""Masking of secrets in the audited request before an event leaves the process.

Paths are dot-separated keys into the event's ``request``; a leading ``request.`` is optional
(``request.config.exporters.*.headers.authorization`` == ``config.exporters.*.headers
.authorization``). ``*`` matches any map key or list index; a number matches a list index.
Keys containing dots cannot be addressed (none of ours do).

Modes:

* ``remove`` - the key is deleted from its map; a list element is replaced by ``null`` so the
  other indexes keep their meaning.
* ``hash`` - the value is replaced by ``"sha256:<hex>"`` over its canonical JSON, so replay
  and forensics can still tell "same secret" from "different secret". Plain SHA-256 of a
  low-entropy secret can be brute-forced; set ``hmac_key`` to use a keyed hash
  (``"hmac-sha256:<hex>"``) instead.

A path may run into a string holding a YAML/JSON document (the engine sends the config as
YAML text): the document is parsed, masked and re-serialized as YAML. One that cannot be
parsed, or is too big to walk, is masked whole (see ``_mask_embedded``).

Masking never mutates its input: maps and lists on a masked path are copied, the rest is
shared.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from pdp.audit.chain import canonical

MaskMode = Literal["remove", "hash"]

_REMOVE = object()

#: Nodes one masking walk may visit; YAML aliases can make a small document huge to walk.
NODE_BUDGET = 100_000
#: Embedded documents larger than this are masked whole rather than parsed.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
CACHE_SIZE = 256

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    terminal: bool = False


def parse_path(path: str) -> list[str]:
    parts = path.strip().split(".")
    if parts and parts[0] == "request":
        parts = parts[1:]
    if not parts or any(p == "" for p in parts):
        raise ValueError(f"bad mask path {path!r}: empty segment")
    return parts


class Masker:
    """Applies a set of mask paths to events; built once from the settings."""

    def __init__(self, paths: Sequence[str], mode: MaskMode = "hash",
                 hmac_key: bytes | None = None) -> None:
        if mode not in ("remove", "hash"):
            raise ValueError(f"mask mode must be 'remove' or 'hash', got {mode!r}")
        self.mode = mode
        self._key = hmac_key
        self._cache: dict[tuple[Any, str], tuple[Any, bool]] = {}
        self._lock = threading.Lock()
        self._root = _Node()
        for p in paths:
            node = self._root
            for seg in parse_path(p):
                node = node.children.setdefault(seg, _Node())
            node.terminal = True

    @property
    def active(self) -> bool:
        return bool(self._root.children)

    def digest(self, value: Any) -> str:
        raw = canonical(value)
        if self._key is not None:
            return "hmac-sha256:" + hmac.new(self._key, raw, hashlib.sha256).hexdigest()
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def apply(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The event with its ``request`` masked (a new dict; input untouched). With no
        paths a plain dict is returned as is: the log never mutates events."""
        if not self.active and type(event) is dict:
            return event
        out = dict(event)
        req = out.get("request")
        if self.active and isinstance(req, Mapping | list):
            out["request"] = self.mask_value(req)
        return out

    def mask_value(self, value: Any) -> Any:
        """Mask a bare request value (paths relative to it)."""
        if not self.active:
            return value
        walk = _Walk(NODE_BUDGET)
        try:
            out = self._mask(value, [self._root], walk)
        except _TooBig:  # cannot inspect it all: keep nothing that might hold a secret
            return self.digest(value) if self.mode == "hash" else None
        return None if out is _REMOVE else out

    def _replacement(self, value: Any, walk: _Walk) -> Any:
        walk.changed += 1
        if self.mode == "remove":
            return _REMOVE
        if not isinstance(value, dict | list):
            return self.digest(value)
        # YAML aliases share subtrees: hash each shared one once, and count the work.
        d = walk.digests.get(id(value))
        if d is None:
            walk.budget -= 1000
            if walk.budget < 0:
                raise _TooBig
            d = walk.digests[id(value)] = self.digest(value)
        return d

    def _mask(self, value: Any, nodes: list[_Node], walk: _Walk) -> Any:
        walk.budget -= 1
        if walk.budget < 0:
            raise _TooBig
        if isinstance(value, Mapping):
            out: dict[Any, Any] = dict(value)
            if any("*" in n.children for n in nodes) or not all(type(k) is str for k in value):
                keys: Iterable[Any] = list(value)
            else:  # only the named keys can match: skip the rest of a big map
                keys = dict.fromkeys(k for n in nodes for k in n.children if k in value)
            for k in keys:
                new = self._child(str(k), value[k], nodes, walk)
                if new is _REMOVE:
                    out.pop(k, None)
                else:
                    out[k] = new
            return out
        if isinstance(value, list | tuple):
            items = [self._child(str(i), v, nodes, walk) for i, v in enumerate(value)]
            return [None if v is _REMOVE else v for v in items]
        if isinstance(value, str) and any(n.children for n in nodes):
            return self._mask_embedded(value, nodes, walk)
        return value

    def _child(self, key: str, value: Any, nodes: list[_Node], walk: _Walk) -> Any:
        walk.budget -= 1
        if walk.budget < 0:
            raise _TooBig
        matched: list[_Node] = []
        for n in nodes:
            for name in (key, "*"):
                c = n.children.get(name)
                if c is not None:
                    matched.append(c)
        if not matched:
            return value
        if any(c.terminal for c in matched):
            return self._replacement(value, walk)
        return self._mask(value, matched, walk)

    def _mask_embedded(self, text: str, nodes: list[_Node], walk: _Walk) -> Any:
        """A path runs into a string: the request carries a document (the config YAML).

        Mask inside it and re-serialize as YAML (the field stays a string). A document we
        cannot parse, or that is too big to walk, is masked whole: keeping a secret out of
        the audit trail matters more than keeping a broken config in it. Results are cached
        by text, since a rollout sends the same config to many agents.
        """
        if not _might_match(text, nodes):
            return text
        cache_key = (id(nodes[0]) if len(nodes) == 1 else tuple(map(id, nodes)), text)
        hit = self._cache.get(cache_key)
        if hit is not None:
            if hit[1]:
                walk.changed += 1
            return hit[0]
        result, changed = self._mask_document(text, nodes)
        with self._lock:  # the writer thread and emit's overflow path both mask
            if len(self._cache) >= CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)), None)
            self._cache[cache_key] = (result, changed)
        if changed:
            walk.changed += 1
        return result

    def _mask_document(self, text: str, nodes: list[_Node]) -> tuple[Any, bool]:
        if len(text) > MAX_DOCUMENT_BYTES:
            return self._whole(text), True
        try:
            doc = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError:
            return self._whole(text), True
        if not isinstance(doc, dict | list):
            return text, False
        inner = _Walk(NODE_BUDGET)
        try:
            masked = self._mask(doc, nodes, inner)
        except _TooBig:
            return self._whole(text), True
        if not inner.changed:
            return text, False
        return yaml.dump(masked, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                         default_flow_style=False), True

    def _whole(self, text: str) -> Any:
        return _REMOVE if self.mode == "remove" else self.digest(text)


def _might_match(text: str, nodes: list[_Node]) -> bool:
    """Cheap pre-check before parsing: a literal key on the remaining paths must occur in the
    text, unless escapes could spell it differently."""
    if "\\" in text:
        return True
    names: set[str] = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        for name, child in n.children.items():
            if name != "*" and not name.isdigit():
                names.add(name)
            stack.append(child)
    return not names or any(name in text for name in names)


class _TooBig(Exception):
    pass


@dataclass
class _Walk:
    budget: int
    changed: int = 0
    digests: dict[int, str] = field(default_factory=dict)
