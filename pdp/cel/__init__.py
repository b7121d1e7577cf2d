"""pdp's CEL (Common Expression Language) implementation.

Expressions are parsed, type-checked and compiled once to a Python function; evaluation is a
plain function call on plain Python values.

    from pdp.cel import pdp_environment, Budget
    env = pdp_environment()
    prog = env.compile("config.exporters.exists(e, e.tls.insecure)")  # CelCompileError
    prog.cost_estimate, prog.source_hash
    prog.evaluate({"config": {...}}, budget=Budget(deadline=time.monotonic() + 0.05,
                                                    cost_limit=1_000_000))

Errors: every exception leaving the API is a CelError.  CelCompileError (``.line``,
``.column``, str() has a caret snippet) at compile time; CelEvalError for runtime errors;
DeadlineExceeded / CostLimitExceeded (both BudgetExceeded) when the budget runs out;
SizeLimitExceeded (a CostLimitExceeded) when an operation would build a value over the hard
size caps (Environment(max_string_bytes=..., max_list_size=...)).  Cost units: meter.py.

Values: int, float (double), str, bytes, bool, None (null), list, dict; ``UInt`` for uint;
``Timestamp`` / ``Duration`` (nanosecond precision; ``datetime`` / ``timedelta`` accepted
as input); ``Optional``; ``TypeValue``.

Domain helpers (see pdp.cel.domain): ``endpointHost()``, ``endpointPort()``,
``isLocalhost()``, ``versionAtLeast()``, ``compareVersions()``, ``quantity()``, ``inCidr()``.
"""

from .cache import ProgramCache
from .env import PDP_VARIABLES, new_pdp_environment, pdp_environment
from .errors import (
    BudgetExceeded,
    CelCompileError,
    CelError,
    CelEvalError,
    CostLimitExceeded,
    DeadlineExceeded,
    SizeLimitExceeded,
)
from .parser import MAX_NODES, count_nodes
from .program import Budget, Environment, Program
from .references import roots as read_roots
from .values import Duration, Optional, Timestamp, TypeValue, UInt

__all__ = [
    "MAX_NODES",
    "PDP_VARIABLES",
    "Budget",
    "BudgetExceeded",
    "CelCompileError",
    "CelError",
    "CelEvalError",
    "CostLimitExceeded",
    "DeadlineExceeded",
    "Duration",
    "Environment",
    "Optional",
    "Program",
    "ProgramCache",
    "SizeLimitExceeded",
    "Timestamp",
    "TypeValue",
    "UInt",
    "count_nodes",
    "new_pdp_environment",
    "pdp_environment",
    "read_roots",
]
