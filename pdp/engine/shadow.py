"""Shadow policies (drafts, approved-not-active versions), evaluated after the answer.

Why a runner of its own: a draft is whatever its author saved, reviewed or not. It must not
change a live answer, take time from the live budget, or slow the live decisions that
follow. So the live path only hands a job over (the request's context and the shadow
policies it selected); the runner evaluates jobs on later loop turns, each under its own
small budget, and spends at most a fixed share of the loop's time on them (a duty cycle:
after ``t`` seconds of shadow work it waits ``t * (1 - share) / share`` before the next).
The backlog is bounded: when it is full, the new job is skipped and counted, never queued.
Skips are reported as a metric (``skipped``) and in the audit log (a ``Shadow.Skipped``
note at most once per ``note_every_s``, with the count since the last note).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from pdp import turns
from pdp.cel import Budget
from pdp.engine.decision import Reason
from pdp.engine.overruns import Overruns, worth_remembering
from pdp.engine.request import CheckRequest
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.evalctx import EvalContext
from pdp.policy.rules import Deny
from pdp.turns import Turns, sliced

log = structlog.get_logger("pdp.engine")

#: Shadow work starts this long after the live call that queued it returned.
START_DELAY_S = 0.002


@dataclass(frozen=True)
class ShadowOptions:
    #: Wall-clock budget of each shadow policy of a decision (its own, not shared).
    budget_s: float = 0.01
    #: Cost units each shadow policy of a decision may charge.
    cost_limit: int = 1_000_000
    #: Decisions whose shadow policies may wait; beyond it new ones are skipped.
    backlog: int = 1024
    #: Fraction of the event loop's time shadow work may take (0 < share <= 1).
    share: float = 0.1
    #: At most one ``Shadow.Skipped`` audit note per this many seconds.
    note_every_s: float = 1.0


@dataclass
class ShadowJob:
    """One decision's shadow work: the context it was decided in, and what to evaluate."""

    req: CheckRequest
    ctx: EvalContext
    decision_id: str
    policies: Sequence[CompiledPolicy]
    #: The live answer let the push go ahead (allowed, or overridden).
    pushed: bool = False


Evaluate = Callable[[CompiledPolicy, EvalContext, Budget], Deny | None]
#: A draft counter rule's verdict from its own counter; reserved there when the push went
#: ahead (the last argument), only asked otherwise.
Count = Callable[[CompiledPolicy, EvalContext, Budget, bool], Awaitable[Deny | None]]
Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Repeats:
    """Where overruns are remembered, and how a request is told from another."""

    overruns: Overruns
    fingerprint: Callable[[CheckRequest], bytes]


async def evaluate_shadow(job: ShadowJob, evaluate: Evaluate, count: Count | None,
                          options: ShadowOptions,
                          reason: Callable[[CompiledPolicy, Deny], Reason],
                          repeats: Repeats | None = None) -> list[Reason]:
    """The would-denies of ``job``'s policies, each under a budget of its own (fail-closed: a
    policy that errs or runs out of budget would deny, and says why). Each draft is judged
    as if it alone were made active: one author's runaway draft neither uses up another's
    budget nor decides whether another's counter is asked.

    A counter draft counts in a counter of its own (see ``CompiledPolicy.counter_rule``):
    reserved there when the push went ahead (``job.pushed``), as it would be were the draft
    active, only asked otherwise. Live counters are never read or consumed by a draft.

    With ``repeats`` (the live decisions' overrun memo and request fingerprint), a draft
    that ran the same request out of its budget before would-denies at once, as a live
    policy does: a runaway draft costs its budget once per distinct request, not on every
    push (each of those was ``budget_s`` of the loop taken from live calls)."""
    out: list[Reason] = []
    key: bytes | None = None
    turns = Turns()
    for i, p in enumerate(job.policies):
        if i and turns.due(0):
            await turns.take()  # many drafts: other calls run between them
        now = time.monotonic()
        budget = Budget(deadline=now + options.budget_s, cost_limit=options.cost_limit)
        deny = None
        if repeats is not None and repeats.overruns.watched(p):
            key = key or repeats.fingerprint(job.req)
            deny = repeats.overruns.recall(p, key, options.budget_s)
        if deny is None:
            # Live calls go between its slices; its budget is of its own running time,
            # so a busy server does not make a draft would-deny for want of time.
            deny = await sliced(evaluate, p, job.ctx, budget, own_time=True)
            if deny is not None and deny.message.startswith("the decision deadline ran out"):
                # the live decision's deadline is not involved: the draft's own budget is
                deny = replace(deny, message=f"the shadow budget ({options.budget_s * 1000:g}"
                                             " ms) ran out while this draft was evaluated")
            spent = time.monotonic() - now
            if repeats is not None and worth_remembering(deny, spent):
                assert deny is not None
                key = key or repeats.fingerprint(job.req)
                repeats.overruns.remember(p, key, deny, spent)
        if deny is None and p.counter is not None and count is not None:
            deny = await count(p, job.ctx, budget, job.pushed)
        if deny is not None:
            out.append(reason(p, deny))
    return out


def would_deny_events(job: ShadowJob, denies: Sequence[Reason]) -> list[dict[str, Any]]:
    """``Policy.WouldDeny`` audit events, in the shape the audit log documents for them."""
    req = job.req
    subject = {
        "agent_id": (req.agent or {}).get("id", ""),
        "device_id": (req.device or {}).get("id", ""),
        "rollout_id": (req.rollout or {}).get("id", ""),
    }
    base = {"time": job.ctx.now.isoformat(), "tenant": req.tenant,
            "decision_id": job.decision_id, "checkpoint": req.checkpoint.value,
            "caller": req.caller.identity}
    return [{"type": "Policy.WouldDeny", **base, "subject": subject, **r.to_dict()}
            for r in denies]


class ShadowRunner:
    """Evaluates shadow jobs in a task of its own, within a share of the loop's time."""

    def __init__(self, evaluate: Evaluate, reason: Callable[[CompiledPolicy, Deny], Reason],
                 emit: Emit, options: ShadowOptions | None = None,
                 count: Count | None = None, repeats: Repeats | None = None) -> None:
        self._evaluate = evaluate
        self._repeats = repeats
        self._count = count
        self._reason = reason
        self._emit = emit
        self.options = options or ShadowOptions()
        self._jobs: deque[ShadowJob] = deque()
        self._task: asyncio.Task[None] | None = None
        self._running_job: ShadowJob | None = None
        self.evaluated = 0
        self.skipped = 0
        self._unnoted = 0
        self._last_note = 0.0
        self._pending_note: asyncio.TimerHandle | None = None
        self.on_skip: Callable[[int], None] | None = None  # metric hook (telemetry)

    @property
    def backlog(self) -> int:
        return len(self._jobs)

    def submit(self, jobs: Sequence[ShadowJob]) -> None:
        """Queue ``jobs`` (the live answer is already decided); skip what does not fit."""
        room = self.options.backlog - len(self._jobs)
        take = jobs if len(jobs) <= room else jobs[:max(0, room)]
        self._jobs.extend(take)
        if len(take) < len(jobs):
            self._skip(len(jobs) - len(take), "backlog full")
        if self._jobs and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._work())

    def _skip(self, n: int, why: str) -> None:
        self.skipped += n
        self._unnoted += n
        if self.on_skip is not None:
            self.on_skip(n)
        now = time.monotonic()
        wait = self._last_note + self.options.note_every_s - now
        if wait <= 0:
            self._note(why)
        elif self._pending_note is None:  # the rest of a burst: noted once the interval is up
            self._pending_note = asyncio.get_running_loop().call_later(
                wait, self._note_pending, why)

    def _note_pending(self, why: str) -> None:
        self._pending_note = None
        self._note(why)

    def _note(self, why: str) -> None:
        if not self._unnoted:
            return
        self._emit({"type": "Shadow.Skipped", "time": datetime.now(UTC).isoformat(),
                    "count": self._unnoted, "reason": why,
                    "message": f"{self._unnoted} decisions' shadow (draft) policies were not"
                               f" evaluated: {why} (backlog limit {self.options.backlog})"})
        self._unnoted = 0
        self._last_note = time.monotonic()

    async def _work(self) -> None:
        """One job at a time, each followed by a pause that keeps shadow work within its
        share of the loop; the first after a moment, so the answer leaves first."""
        await asyncio.sleep(START_DELAY_S)
        share = min(1.0, max(0.001, self.options.share))
        while self._jobs:
            waited = 0.0
            while turns.answering() and waited < turns.DEFER_MAX_S:  # answers go first
                await asyncio.sleep(turns.EVERY_S)
                waited += turns.EVERY_S
            job = self._jobs.popleft()
            started = time.monotonic()
            self._running_job = job  # counted as skipped if shutdown cancels it
            try:
                await self.run_one(job)
            except Exception as exc:  # a defect must not stop the runner
                log.error("shadow_evaluation_failed", decision_id=job.decision_id,
                          error=repr(exc))
            finally:
                self._running_job = None
            spent = time.monotonic() - started
            await asyncio.sleep(spent * (1.0 - share) / share)

    async def run_inline(self, job: ShadowJob) -> list[Reason]:
        """Offline tools (policy tests, replay): the would-denies now, for the decision's
        own record (which then derives the WouldDeny events)."""
        self.evaluated += 1
        return await evaluate_shadow(job, self._evaluate, self._count, self.options,
                                     self._reason, self._repeats)

    async def run_one(self, job: ShadowJob) -> list[Reason]:
        denies = await evaluate_shadow(job, self._evaluate, self._count, self.options,
                                       self._reason, self._repeats)
        self.evaluated += 1
        for ev in would_deny_events(job, denies):
            self._emit(ev)
        return denies

    def drain(self) -> None:
        """Shutdown: what is still queued is skipped (and noted), never evaluated late."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            if self._running_job is not None:  # cut short mid-evaluation: not evaluated
                self._running_job = None
                self.skipped += 1
                self._unnoted += 1
        self._task = None
        if self._pending_note is not None:  # a burst's skips keep their own reason
            self._pending_note.cancel()
            self._pending_note = None
            self._note("backlog full")
        if self._jobs:
            n = len(self._jobs)
            self._jobs.clear()
            self.skipped += n
            self._unnoted += n
        self._note("shutting down")


def shadow_of(policies: Sequence[CompiledPolicy]) -> tuple[list[CompiledPolicy],
                                                           list[CompiledPolicy]]:
    """(live, shadow) of a selection."""
    live = [p for p in policies if not p.shadow]
    if len(live) == len(policies):
        return live, []
    return live, [p for p in policies if p.shadow]


__all__ = ["Repeats", "ShadowJob", "ShadowOptions", "ShadowRunner", "evaluate_shadow", "shadow_of",
           "would_deny_events"]
