"""pdp's CEL environment: the variables every policy can use."""

from __future__ import annotations

import functools

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


def new_pdp_environment() -> Environment:
    """A fresh environment with pdp's variables and all extension libraries."""
    return Environment(PDP_VARIABLES)


@functools.lru_cache(maxsize=1)
def pdp_environment() -> Environment:
    """The shared pdp environment (treat as read-only; use new_pdp_environment to extend)."""
    return new_pdp_environment()
