"""pdp's CEL environment: the variables every policy can use."""

from __future__ import annotations

import functools

from . import types as TY
from .collector import COLLECTOR
from .cost import DEFAULT_MAX_INPUT_BYTES
from .meter import DEFAULT_MAX_LIST, DEFAULT_MAX_STRING
from .program import Environment
from .types import T

_S, _I, _D, _B = TY.STRING, TY.INT, TY.DOUBLE, TY.BOOL
_LABELS = TY.map_of(_S, _S)
_NAMES = TY.list_of(_S)

# The request sections as the API (proto/pdp/v1/common.proto) fills them, field for field
# (pdp/api/convert.py): typed, so a misspelt field or a comparison with the wrong type is a
# compile error, not a deny at run time. Values are plain dicts.
AGENT = TY.object_of("agent", id=_S, labels=_LABELS, group=_S, version=_S, hostname=_S,
                     active_exporters=_NAMES)
DEVICE = TY.object_of("device", id=_S, platform=_S, os_version=_S, memory_bytes=_I,
                      groups=_NAMES, labels=_LABELS, model=_S)
APPROVAL = TY.object_of("approval", actor=_S, step=_I, time=TY.DYN)  # RFC 3339 text or null
ROLLOUT = TY.object_of("rollout", id=_S, step=_I, total_steps=_I, step_percent=_D,
                       previous_step_percent=_D, created_by=_S,
                       created_at=TY.DYN,  # RFC 3339 text or null
                       approvals=TY.list_of(APPROVAL))
CHANGE = TY.object_of("change", subject=_S, source=_S, type=_S)
REQUEST = TY.object_of("request", tenant=_S, checkpoint=_S, change=CHANGE, request_id=_S,
                       caller=_S)

PDP_VARIABLES: dict[str, T | str] = {
    "request": REQUEST,        # tenant, checkpoint, change, request_id, caller
    "agent": AGENT,            # id, labels, group, version, hostname, active_exporters
    "device": DEVICE,          # id, platform, os_version, memory_bytes, groups, labels, model
    "rollout": ROLLOUT,        # id, step, total_steps, step_percent, approvals, ...
    "config": "dyn",           # the parsed YAML config being pushed, as the author wrote it
    "previous_config": "dyn",  # the config it replaces, or null
    "collector": COLLECTOR,    # config as a collector config (pdp.cel.collector)
    "metrics": "map(string, double)",
    "now": "timestamp",
}

#: The same names, every section ``dyn`` (the declarations before they were typed): for
#: tools and benchmarks that feed made-up fields.
UNTYPED_VARIABLES: dict[str, T | str] = {k: ("dyn" if isinstance(v, T) else v)
                                         for k, v in PDP_VARIABLES.items()}


def new_pdp_environment(*, max_string_bytes: int = DEFAULT_MAX_STRING,
                        max_list_size: int = DEFAULT_MAX_LIST,
                        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
                        typed: bool = True) -> Environment:
    """A fresh environment with pdp's variables and all extension libraries.  The server
    passes ``settings.cel_max_string_bytes`` / ``cel_max_list_size`` as the hard caps.
    ``typed=False`` declares every section ``dyn`` (any field compiles). Literal arguments
    that can only fail are refused at compile time (literals.py)."""
    return Environment(PDP_VARIABLES if typed else UNTYPED_VARIABLES,
                       max_string_bytes=max_string_bytes,
                       max_list_size=max_list_size, max_input_bytes=max_input_bytes,
                       strict_literals=True)


@functools.lru_cache(maxsize=1)
def pdp_environment() -> Environment:
    """The shared pdp environment (treat as read-only; use new_pdp_environment to extend)."""
    return new_pdp_environment()
