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

Masking never mutates its input: maps and lists on a masked path are copied, the rest is
shared.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pdp.audit.chain import canonical

MaskMode = Literal["remove", "hash"]

_REMOVE = object()


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
        """The event with its ``request`` masked (a new dict; input untouched)."""
        out = dict(event)
        req = out.get("request")
        if self.active and isinstance(req, Mapping | list):
            out["request"] = self._mask(req, [self._root])
        return out

    def mask_value(self, value: Any) -> Any:
        """Mask a bare request value (paths relative to it)."""
        return self._mask(value, [self._root]) if self.active else value

    def _replacement(self, value: Any) -> Any:
        return _REMOVE if self.mode == "remove" else self.digest(value)

    def _mask(self, value: Any, nodes: list[_Node]) -> Any:
        if isinstance(value, Mapping):
            out: dict[Any, Any] = dict(value)
            if any("*" in n.children for n in nodes):
                keys: Iterable[Any] = list(value)
            else:  # only the named keys can match: skip the rest of a big map
                keys = [k for n in nodes for k in n.children if k in value]
            for k in keys:
                new = self._child(str(k), value[k], nodes)
                if new is _REMOVE:
                    out.pop(k, None)
                else:
                    out[k] = new
            return out
        if isinstance(value, list | tuple):
            items = [self._child(str(i), v, nodes) for i, v in enumerate(value)]
            return [None if v is _REMOVE else v for v in items]
        return value

    def _child(self, key: str, value: Any, nodes: list[_Node]) -> Any:
        matched: list[_Node] = []
        for n in nodes:
            for name in (key, "*"):
                c = n.children.get(name)
                if c is not None:
                    matched.append(c)
        if not matched:
            return value
        if any(c.terminal for c in matched):
            return self._replacement(value)
        return self._mask(value, matched)
