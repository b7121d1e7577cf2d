"""Dotted version comparison ("16.4.1" vs "16"): missing components count as zero."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+)")


def _key(version: str) -> list[int]:
    core = version.strip().lstrip("vV").split("-", 1)[0].split("+", 1)[0]
    out = []
    for piece in core.split("."):
        m = _PART.match(piece)
        out.append(int(m.group(1)) if m else 0)
    return out


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is older than, equal to or newer than ``b``."""
    ka, kb = _key(a), _key(b)
    n = max(len(ka), len(kb))
    ka += [0] * (n - len(ka))
    kb += [0] * (n - len(kb))
    return (ka > kb) - (ka < kb)
