"""The encoders extension (cel-go ``ext.Encoders``): base64.encode / base64.decode."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pdp.turns import clock

from . import meter as M
from .errors import CelEvalError, DeadlineExceeded
from .functions import Registry
from .stdlib import no_overload

# Inputs longer than one chunk are converted a chunk at a time with the clock read between
# chunks: one call on a 4 MB string took ~40 ms, all of it past a deadline's last check.
ENCODE_CHUNK = 3 * 65536  # bytes (a multiple of 3: no padding inside the text)
DECODE_CHUNK = 4 * 65536  # characters (a multiple of 4)


def _check_clock(dl: float) -> None:
    if clock() > dl:
        raise DeadlineExceeded("evaluation deadline exceeded")


def b64_encode(dl: float, b: Any) -> str:
    if type(b) is not bytes:
        raise no_overload("base64.encode", b)
    parts = []
    for i in range(0, len(b), ENCODE_CHUNK):
        if i:
            _check_clock(dl)
        parts.append(binascii.b2a_base64(b[i:i + ENCODE_CHUNK], newline=False))
    return b"".join(parts).decode("ascii")


def b64_decode(dl: float, s: Any) -> bytes:
    if type(s) is not str:
        raise no_overload("base64.decode", s)
    s = s + "=" * (-len(s) % 4)
    parts = []
    try:
        for i in range(0, len(s), DECODE_CHUNK):
            piece = s[i:i + DECODE_CHUNK]
            if i:
                _check_clock(dl)
            if i + DECODE_CHUNK < len(s) and "=" in piece:
                raise ValueError("padding before the end")
            parts.append(base64.b64decode(piece, validate=True))
    except (binascii.Error, ValueError):
        raise CelEvalError("base64.decode: invalid input") from None
    return b"".join(parts)


def register_encoders(r: Registry) -> None:
    r.add("base64.encode", "bytes->string", b64_encode, cost=1, grow=M.grow_b64_encode,
          clocked=True)
    r.add("base64.decode", "string->bytes", b64_decode, cost=1, grow=M.grow_b64_decode,
          clocked=True)
