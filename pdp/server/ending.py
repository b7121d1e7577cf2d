"""Ending a call with a status, without grpc's ``abort``.

Why: ``ServicerContext.abort`` raises inside grpc's own code, and what it raises ends in a
reference cycle with the call's frames, which hold the request, its bytes and whatever was
parsed from them. Only the cyclic collector frees that (sweep.py), so a refused caller's
requests stay in memory until the next collection. Under the server's unary stack
(stack.py), :func:`end` raises :class:`CallEnded` instead; the stack makes it the call's
status (code, details and trailers, no response message), and the call's frames are freed
by reference counting as soon as it returns. Elsewhere (streams, public methods, servicers
called directly), ``end`` aborts as before.

``CallEnded`` is a ``BaseException``, as grpc's abort is to the code around it: a handler's
``except Exception`` (which turns bugs into INTERNAL) does not catch it.
"""

from __future__ import annotations

import contextvars
from typing import Any, NoReturn

import grpc

Trailers = tuple[tuple[str, str | bytes], ...]

#: Set for the task of a call whose stack turns CallEnded into its status.
_ENDS_HERE: contextvars.ContextVar[bool] = contextvars.ContextVar("pdp_call_ends_here",
                                                                  default=False)


class CallEnded(BaseException):
    """The call's status, on its way to the stack that sets it."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Trailers = ()) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details
        self.trailing = trailing

    def apply(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        context.set_code(self.code)
        context.set_details(self.details)
        if self.trailing:
            context.set_trailing_metadata(self.trailing)


def ends_here() -> contextvars.Token[bool]:
    """Called by the stack at the start of a call it will end (see CallEnded)."""
    return _ENDS_HERE.set(True)


def release(token: contextvars.Token[bool]) -> None:
    _ENDS_HERE.reset(token)


async def end(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode,
              details: str, trailing: Trailers | None = None) -> NoReturn:
    """End the call with ``code`` and ``details`` (and trailers): what ``context.abort``
    does, without its reference cycle where the stack can set the status itself."""
    if _ENDS_HERE.get():
        raise CallEnded(code, details, tuple(trailing or ()))
    await context.abort(code, details, tuple(trailing or ()))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
