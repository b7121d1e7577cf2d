"""What the engine is asked, as plain values: the server maps protobuf onto these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pdp.policy.model import Checkpoint


class InvalidRequest(ValueError):
    """The request cannot be decided as sent; ``field`` names the culprit (INVALID_ARGUMENT)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class Caller:
    """Who asks. Roles come from authentication (a later layer); the engine only reads them."""

    identity: str = "anonymous"
    roles: frozenset[str] = frozenset({"checker"})

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


@dataclass(frozen=True)
class Override:
    actor: str
    justification: str


@dataclass
class CheckRequest:
    tenant: str
    checkpoint: Checkpoint
    change: dict[str, str] = field(default_factory=dict)
    agent: dict[str, Any] | None = None
    device: dict[str, Any] | None = None
    rollout: dict[str, Any] | None = None
    config_yaml: str | None = None
    previous_config_yaml: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    override: Override | None = None
    caller: Caller = field(default_factory=Caller)
    explain: bool = False
    #: With ``explain``: explain CEL rules too. False for a caller who may not read the
    #: tenant's policies (a CEL explanation quotes source text and is not shown to them):
    #: not computed, as it would re-evaluate the rule's parts in the decision's budget.
    explain_cel: bool = True
    request_id: str = ""
