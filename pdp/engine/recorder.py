"""A decision's audit record: built from its request and outcome, handed to the audit log.

Why a module of its own: what a record holds (the request, by reference to config texts and
policy lists written once in ``Config.Seen`` / ``Policies.Seen`` events) and when it is made
(before the answer with ``sync`` durability, just after it with ``async``) are the audit
side of a decision, apart from deciding it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, Protocol

import structlog

from pdp import turns
from pdp.audit.events import config_seen, decision_undelivered, policies_seen, with_derived
from pdp.audit.log import AuditWriteError
from pdp.audit.record import DecisionRecord
from pdp.engine.context import ConfigCache
from pdp.engine.decision import Decision, PolicyRef, policies_list
from pdp.engine.request import CheckRequest

log = structlog.get_logger("pdp.engine")

#: Distinct (tenant, field, config hash) remembered as already written to the audit log.
CONFIGS_SEEN_MAX = 4096
#: Decisions whose audit events one loop turn makes after their answers, at least (the rest
#: of a turn's slice is bounded in time: pdp.turns.EVERY_S).
RECORD_MIN = 8
#: Answered decisions whose records may wait for the loop: past this, the next step records
#: the backlog before its own answer (memory stays bounded under any load).
RECORD_BACKLOG = 8192


class AuditSink(Protocol):
    """What the engine needs of the audit pipeline."""

    def emit(self, event: dict[str, Any]) -> None:
        """Queue an event; never blocks the decision."""

    async def log_decision(self, decision: DecisionRecord) -> None:
        """Audit a decision (and its derived events); waits for fsync in sync mode only."""

    @property
    def refusing(self) -> str | None:
        """Why an event emitted now would be lost (None: it would be kept)."""


class Recorder:
    """Makes decisions' audit records and hands them to ``audit``, now or after the answer.

    ``seen_refresh_s``: a Config.Seen / Policies.Seen event is written again when its last
    copy is older than this, so a reader of a trimmed stream (Redis MAXLEN) or of recent
    files only finds the text a decision names within this much history.
    """

    def __init__(self, audit: AuditSink, configs: ConfigCache, *,
                 seen_refresh_s: float = 3600.0) -> None:
        self.audit = audit
        self.configs = configs
        self.seen_refresh_s = seen_refresh_s
        # Seen keys -> monotonic time their event was last written (see seen_refresh_s).
        self._configs_seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        # id(shared list of policies_list) -> (that list, its SHA-256): each hashed once.
        self._policy_shas: dict[int, tuple[list[dict[str, Any]], str]] = {}
        self._policies_seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        # Decisions answered whose audit events are not queued yet (FIFO, decision order).
        self._unrecorded: deque[tuple[CheckRequest, Decision]] = deque()
        self._draining = False
        self._deferred_since: float | None = None  # drain waiting for an answer since

    async def record(self, req: CheckRequest, decision: Decision,
                     timeout_s: float | None = None) -> None:
        """Before the answer: hand the record over (waits for fsync in ``sync`` mode), for
        at most ``timeout_s``: a disk that does not take the record fails the call
        (``AuditWriteError``) instead of holding it until the caller gives up. The record
        stays queued and is written once the disk takes it again."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.audit.log_decision(self.event(req, decision))
        except (TimeoutError, AuditWriteError) as exc:
            why = str(exc) if isinstance(exc, AuditWriteError) else (
                f"the audit record was not durable within"
                f" {timeout_s * 1000 if timeout_s else 0:.0f} ms")
            # After the record, if it is queued (or written, its fsync failed): a reader
            # learns the decision was never answered.
            self.audit.emit(decision_undelivered(req.tenant, decision.decision_id, why))
            raise AuditWriteError(why) from None

    def record_after_answer(self, answered: Sequence[tuple[CheckRequest, Decision]]) -> None:
        """The records of ``answered`` are made on the loop's next turns (the caller is not
        kept waiting for them: about a quarter of a 1 000-agent step). Only for an audit
        log that does not wait for the disk (``async`` durability): the events are in
        memory until written either way."""
        if len(self._unrecorded) > RECORD_BACKLOG:
            self.record_pending()  # the loop is not keeping up: pay for it here
        self._unrecorded.extend(answered)
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().call_soon(self._drain)

    @property
    def backlog(self) -> int:
        """Answered decisions whose records are still to be made."""
        return len(self._unrecorded)

    def _drain(self) -> None:
        """A slice per loop turn: a step's thousand records in one callback would hold the
        loop (and the GIL) for milliseconds while other calls wait. The slice is bounded in
        time (``pdp.turns.EVERY_S``), not in records, so the hold is the same on a slow
        machine; the backlog bound (RECORD_BACKLOG) keeps memory bounded if it falls behind.
        While a call is in its answer path (``pdp.turns.answering``) the slices wait, up to
        ``pdp.turns.DEFER_MAX_S``: records observe answers, they do not delay them."""
        loop = asyncio.get_running_loop()
        if turns.answering():
            now = time.monotonic()
            if self._deferred_since is None:
                self._deferred_since = now
            if now - self._deferred_since < turns.DEFER_MAX_S:
                loop.call_later(turns.EVERY_S, self._drain)
                return
        try:
            self.record_pending(until=time.monotonic() + turns.EVERY_S)
        finally:  # whatever happened, the rest is not left behind
            if self._unrecorded:
                loop.call_soon(self._drain)  # waited long enough: on until the backlog is gone
            else:
                self._draining = False
                self._deferred_since = None

    def record_pending(self, limit: int | None = None, until: float | None = None) -> None:
        """Queue the audit events of (up to ``limit``, or until the monotonic time
        ``until``, at least RECORD_MIN) answered decisions not yet recorded; shutdown calls
        it with neither, so none is left behind."""
        todo = self._unrecorded
        for i in range(len(todo) if limit is None else min(limit, len(todo))):
            if until is not None and i >= RECORD_MIN and not i & 3 \
                    and time.monotonic() >= until:
                return
            req, decision = todo.popleft()
            try:
                for ev in with_derived(self.event(req, decision).to_event()):
                    self.audit.emit(ev)
            except Exception as exc:  # a defect: say which decision has no record, loudly
                log.critical("audit_record_failed", decision_id=decision.decision_id,
                             tenant=req.tenant, error=repr(exc))

    def event(self, req: CheckRequest, decision: Decision) -> DecisionRecord:
        """The decision's audit record, after the Seen events it names (emitted first if
        due)."""
        configs = (self._config_ref(req.tenant, "config", req.config_yaml),
                   self._config_ref(req.tenant, "previous_config", req.previous_config_yaml))
        event = decision_event(req, decision, configs=configs,
                               policies_ref=self._policies_ref(req.tenant, decision.evaluated))
        return event

    def _config_ref(self, tenant: str, field: str, text: str | None) -> str | None:
        """The SHA-256 (hex) a Decision event names its config by; the text itself goes to
        the audit log once, in a ``Config.Seen`` event, the first time this recorder sees it
        (per tenant and field: masking paths are per field, audit readers per tenant)."""
        if not text:
            return None
        sha = self.configs.digest(text).hex()  # hashed once per text object
        if self._first_sight(self._configs_seen, (tenant, field, sha)):
            self.audit.emit(config_seen(tenant, field, sha, text))
        return sha

    def _first_sight(self, seen: OrderedDict[Any, float], key: Any) -> bool:
        """Whether the Seen event for ``key`` must be written now: never written by this
        recorder (or forgotten, LRU), or its last copy is older than ``seen_refresh_s``."""
        now = time.monotonic()
        last = seen.get(key)
        if last is not None and now - last < self.seen_refresh_s:
            seen.move_to_end(key)
            return False
        seen[key] = now
        seen.move_to_end(key)
        if len(seen) > CONFIGS_SEEN_MAX:
            seen.popitem(last=False)
        return True

    def _policies_ref(self, tenant: str, evaluated: list[PolicyRef]) -> str | None:
        """The SHA-256 (hex) a Decision event names its evaluated policies by; the list goes
        to the audit log once per tenant, in a ``Policies.Seen`` event, before the first
        decision naming it. The list is most of a decision's record otherwise (about 200
        bytes per policy, every decision). None: nothing was evaluated (listed inline)."""
        if not evaluated:
            return None
        listed = policies_list(evaluated)  # one shared list per selection
        hit = self._policy_shas.get(id(listed))
        if hit is None or hit[0] is not listed:
            sha = hashlib.sha256(json.dumps(listed, separators=(",", ":")).encode()).hexdigest()
            if len(self._policy_shas) >= 1024:
                self._policy_shas.clear()
            hit = self._policy_shas[id(listed)] = (listed, sha)  # held: the id stays valid
        sha = hit[1]
        if self._first_sight(self._policies_seen, (tenant, sha)):
            self.audit.emit(policies_seen(tenant, sha, listed))
        return sha


def decision_event(req: CheckRequest, decision: Decision, *,
                   configs: tuple[str | None, str | None] | None = None,
                   policies_ref: str | None = None) -> DecisionRecord:
    """The audit record of one decision: enough of the request to replay it later.

    With ``configs`` (the SHA-256 of the config and previous config texts) the request names
    them (``config_sha256`` / ``previous_config_sha256``) instead of carrying the texts,
    which the audit log then holds once in ``Config.Seen`` events; without it the texts are
    inline (``config`` / ``previous_config``), the older form replay still reads. With
    ``policies_ref`` the evaluated policies are named (``policies_sha256``, the list is in a
    ``Policies.Seen`` event) instead of listed (``policies``).
    """
    request: dict[str, Any] = {
        "change": req.change, "agent": req.agent, "device": req.device,
        "rollout": req.rollout, "metrics": req.metrics,
    }
    if configs is None:
        request["config"] = req.config_yaml
        request["previous_config"] = req.previous_config_yaml
    else:
        request["config_sha256"], request["previous_config_sha256"] = configs
    agent, device, rollout = req.agent, req.device, req.rollout
    return DecisionRecord(
        time=decision.decided_at.isoformat(),
        tenant=req.tenant,
        decision_id=decision.decision_id,
        checkpoint=decision.checkpoint,
        allowed=decision.allowed,
        reasons=[r.to_dict() for r in decision.reasons],
        shadow_denies=[r.to_dict() for r in decision.shadow_denies],
        overridden=decision.overridden,
        override=override_record(req, decision),
        caller=req.caller.identity,
        request_id=req.request_id,
        subject={
            "agent_id": agent.get("id", "") if agent else "",
            "device_id": device.get("id", "") if device else "",
            "rollout_id": rollout.get("id", "") if rollout else "",
        },
        elapsed_ms=round(decision.elapsed_s * 1000, 3),
        request=request,
        policies=policies_list(decision.evaluated) if policies_ref is None else None,
        policies_sha256=policies_ref,
    )


def override_record(req: CheckRequest, decision: Decision) -> dict[str, Any] | None:
    """The ``override`` of a Decision event: its actor is the authenticated caller (the name
    the request gave is kept apart, as ``requested_actor``, only if it differs: then it was
    not honoured); an honoured override of built-ins' denies names them
    (``overridden_builtins``: a per-decision bypass of a guardrail whose permanent
    relaxation takes two admins). The overridden denies are the record's ``reasons``."""
    override = req.override
    if override is None:
        return None
    caller = req.caller
    out: dict[str, Any] = {
        "actor": caller.identity, "justification": override.justification,
        "honoured": decision.overridden, "caller_is_admin": caller.is_admin}
    if override.actor != caller.identity:
        out["requested_actor"] = override.actor
    if decision.overridden:
        builtins = list(dict.fromkeys(r.policy for r in decision.reasons if r.builtin))
        if builtins:
            out["overridden_builtins"] = builtins
    return out
