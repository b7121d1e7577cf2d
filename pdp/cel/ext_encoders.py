"""The encoders extension (cel-go ``ext.Encoders``): base64.encode / base64.decode."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from . import meter as M
from .errors import CelEvalError
from .functions import Registry
from .stdlib import no_overload


def b64_encode(b: Any) -> str:
    if type(b) is not bytes:
        raise no_overload("base64.encode", b)
    return base64.b64encode(b).decode("ascii")


def b64_decode(s: Any) -> bytes:
    if type(s) is not str:
        raise no_overload("base64.decode", s)
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CelEvalError("base64.decode: invalid input") from None


def register_encoders(r: Registry) -> None:
    r.add("base64.encode", "bytes->string", b64_encode, cost=1, grow=M.grow_b64_encode)
    r.add("base64.decode", "string->bytes", b64_decode, cost=1, grow=M.grow_b64_decode)
