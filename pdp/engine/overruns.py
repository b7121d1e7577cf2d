"""Policies that ran out of budget on a request, remembered so the same request is not run
again: it is denied at once, with the same reason.

Why: a policy that runs out of its budget on some input burns the whole budget (50 ms of the
loop) every time that input comes back, and a caller who repeats it (a retry loop, or an
attacker) takes the loop from everybody else. CEL is deterministic for the same inputs, so
the outcome would be the same: a cost-limit overrun always, a deadline overrun whenever the
decision has no more time than the last attempt had. Entries expire (``ttl_s``), so a slow
machine moment is not remembered for long; only policies that overran are ever looked up,
so decisions that never hit an overrun pay one dict lookup.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pdp.engine.request import CheckRequest
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.rules import Deny

OVERRUN_CODES = frozenset({"DEADLINE_EXCEEDED", "COST_LIMIT_EXCEEDED"})
#: A deadline overrun is remembered only when the policy itself ran this long: one cut
#: short at its start says nothing about the policy.
MIN_OVERRUN_S = 0.002


def worth_remembering(deny: Deny | None, spent_s: float) -> bool:
    """Whether ``deny`` (after ``spent_s`` of evaluation) is an overrun to remember."""
    return deny is not None and deny.code in OVERRUN_CODES and (
        deny.code == "COST_LIMIT_EXCEEDED" or spent_s >= MIN_OVERRUN_S)


@dataclass(frozen=True)
class Overrun:
    code: str
    message: str
    spent_s: float
    at: float


def fingerprint(req: CheckRequest, config_keys: tuple[bytes | None, bytes | None]) -> bytes:
    """What a policy's verdict depends on besides the clock: the configs (by their hashes)
    and the request's other fields."""
    h = hashlib.blake2b(digest_size=16)
    for k in config_keys:
        h.update(k or b"-")
    facts: Any = (req.tenant, req.checkpoint.value, req.change, req.agent, req.device,
                  req.rollout, req.metrics, req.request_id, req.caller.identity)
    h.update(repr(facts).encode("utf-8", "replace"))
    return h.digest()


class Overruns:
    """Per policy: the fingerprints of requests it ran out of budget on (bounded LRU)."""

    def __init__(self, per_policy: int = 256, policies: int = 1024, ttl_s: float = 60.0) -> None:
        self.per_policy = per_policy
        self.policies = policies
        self.ttl_s = ttl_s
        self._seen: OrderedDict[int, tuple[CompiledPolicy, OrderedDict[bytes, Overrun]]] = (
            OrderedDict())
        self.short_cuts = 0

    def __bool__(self) -> bool:
        return bool(self._seen)

    def watched(self, p: CompiledPolicy) -> bool:
        hit = self._seen.get(id(p))
        return hit is not None and hit[0] is p

    def recall(self, p: CompiledPolicy, key: bytes, remaining_s: float) -> Deny | None:
        """The deny to give at once, or None (evaluate)."""
        hit = self._seen.get(id(p))
        if hit is None or hit[0] is not p:
            return None
        o = hit[1].get(key)
        if o is None:
            return None
        now = time.monotonic()
        if now - o.at > self.ttl_s:
            del hit[1][key]
            return None
        if o.code == "DEADLINE_EXCEEDED" and remaining_s > o.spent_s * 1.25:
            return None  # more time than it had then: let it try
        self.short_cuts += 1
        return Deny(o.code, f"{o.message} (the same request ran out of budget"
                            f" {now - o.at:.0f} s ago after {o.spent_s * 1000:.0f} ms;"
                            " not evaluated again)")

    def remember(self, p: CompiledPolicy, key: bytes, deny: Deny, spent_s: float) -> None:
        hit = self._seen.get(id(p))
        if hit is None or hit[0] is not p:
            hit = self._seen[id(p)] = (p, OrderedDict())
            while len(self._seen) > self.policies:
                self._seen.popitem(last=False)
        self._seen.move_to_end(id(p))
        hit[1][key] = Overrun(deny.code, deny.message, spent_s, time.monotonic())
        hit[1].move_to_end(key)
        while len(hit[1]) > self.per_policy:
            hit[1].popitem(last=False)
