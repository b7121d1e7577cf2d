"""Exception hierarchy for pdp's CEL.

Every exception that leaves the public API is a :class:`CelError`, so callers (the decision
engine) can treat policy failures uniformly and never see raw Python exceptions.
"""

from __future__ import annotations


class CelError(Exception):
    """Base of every error raised by pdp.cel."""


class CelCompileError(CelError):
    """Parse or check error, reported at admission with a position and a caret snippet."""

    def __init__(self, message: str, source: str = "", offset: int = -1) -> None:
        self.message = message
        self.source = source
        self.offset = offset
        self.line, self.column = _line_col(source, offset)
        super().__init__(self._render())

    def _render(self) -> str:
        if self.offset < 0:
            return f"ERROR: <input>: {self.message}"
        lines = self.source.split("\n")
        text = lines[self.line - 1] if 0 < self.line <= len(lines) else ""
        caret = "." * (self.column - 1) + "^"
        return f"ERROR: <input>:{self.line}:{self.column}: {self.message}\n | {text}\n | {caret}"


def _line_col(source: str, offset: int) -> tuple[int, int]:
    """1-based line and column (in code points) of ``offset``."""
    if offset < 0:
        return 0, 0
    before = source[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    return line, column


class CelEvalError(CelError):
    """A CEL runtime error (no such key, overflow, no matching overload, ...)."""


class BudgetExceeded(CelError):
    """The evaluation ran out of budget; see the two concrete subclasses."""


class CostLimitExceeded(BudgetExceeded):
    """The evaluation charged more cost units than the budget allows."""


class DeadlineExceeded(BudgetExceeded):
    """The evaluation was still running at the decision's deadline."""


class SizeLimitExceeded(CostLimitExceeded):
    """An operation would have built a string / bytes / list / map over the hard size caps
    (it is refused before the value exists); a cost error so ``&&`` / ``||`` never absorb
    it and callers that handle CostLimitExceeded need nothing new."""
