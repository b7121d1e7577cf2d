"""What a rule sees of one request: built once per decision by the engine, read by every rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pdp.policy.model import Checkpoint


@dataclass
class EvalContext:
    """One request, as plain values.

    ``activation`` holds the CEL variables (request, agent, device, config, previous_config,
    rollout, metrics, now); typed rules read the same dicts so both kinds agree on the input.
    """

    tenant: str
    checkpoint: Checkpoint
    now: datetime  # timezone-aware, UTC
    activation: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        value = self.activation.get(name)
        return value if isinstance(value, dict) else {}
