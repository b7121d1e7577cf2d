"""pdp's CEL environment: the variables every policy can use."""

from __future__ import annotations

import functools

from .cost import DEFAULT_MAX_INPUT_BYTES
from .meter import DEFAULT_MAX_LIST, DEFAULT_MAX_STRING
from .program import Environment

PDP_VARIABLES: dict[str, str] = {
    "request": "dyn",          # the whole decision request as a map
    "agent": "dyn",            # id, labels, group, version, ...
    "device": "dyn",           # id, platform, os_version, memory_bytes, groups, labels
    "config": "dyn",           # the parsed YAML config being pushed
    "previous_config": "dyn",  # the config it replaces, or null
    "rollout": "dyn",          # id, step, step_percent, ...
    "metrics": "map(string, double)",
    "now": "timestamp",
}


def new_pdp_environment(*, max_string_bytes: int = DEFAULT_MAX_STRING,
                        max_list_size: int = DEFAULT_MAX_LIST,
                        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> Environment:
    """A fresh environment with pdp's variables and all extension libraries.  The server
    passes ``settings.cel_max_string_bytes`` / ``cel_max_list_size`` as the hard caps."""
    return Environment(PDP_VARIABLES, max_string_bytes=max_string_bytes,
                       max_list_size=max_list_size, max_input_bytes=max_input_bytes)


@functools.lru_cache(maxsize=1)
def pdp_environment() -> Environment:
    """The shared pdp environment (treat as read-only; use new_pdp_environment to extend)."""
    return new_pdp_environment()
