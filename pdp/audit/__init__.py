"""Audit pipeline: decision and lifecycle events, hash-chained to JSON-lines files, forwarded
to Redis Streams / stdout, watchable live.

Use::

    audit = AuditLog(AuditSettings(path="var/audit/audit.jsonl", durability="async"))
    await audit.start()
    await audit.log_decision(record)          # a DecisionRecord (or a plain mapping):
                                              # Decision + PushDenied + WouldDeny events;
                                              # returns at once (async) / after fsync (sync)
    audit.emit(policy_activated(tenant, name, version, actor, content_hash=h))
    async for record in audit.watch(tenant="acme", types={"Decision"}, from_seq=41): ...
    await audit.close()                       # drains the queue (SIGTERM path)

    pdp.audit.verify.main(["var/audit/"])     # 0 ok, 1 tampered, 2 error

Modules: events (model), record (the typed decision record), chain (hashing), masking,
settings, files (on-disk layout), sinks/file (the ledger), sinks/redis_stream,
sinks/stdout, spool, delivery (per-sink forwarding with spool), watch, log (the pipeline),
verify.
"""

from pdp.audit.chain import GENESIS, ChainHead, Entry, Record
from pdp.audit.events import (
    BUILTIN_RELAXED,
    DECISION,
    EVENT_TYPES,
    POLICY_ACTIVATED,
    POLICY_APPROVED,
    POLICY_CREATED,
    POLICY_REACTIVATED,
    POLICY_RETIRED,
    PUSH_DENIED,
    WOULD_DENY,
    DecisionInput,
    Event,
    builtin_relaxed,
    decision_event,
    events_for_decision,
    policy_activated,
    policy_approved,
    policy_created,
    policy_reactivated,
    policy_retired,
)
from pdp.audit.files import AuditFileError
from pdp.audit.log import AuditClosedError, AuditLog, AuditStats, AuditWriteError
from pdp.audit.masking import Masker
from pdp.audit.record import DecisionRecord
from pdp.audit.settings import AuditSettings
from pdp.audit.watch import AuditHistoryUnavailableError, WatchError, WatchOverflowError

__all__ = [
    "BUILTIN_RELAXED", "DECISION", "EVENT_TYPES", "GENESIS", "POLICY_ACTIVATED",
    "POLICY_APPROVED", "POLICY_CREATED", "POLICY_REACTIVATED", "POLICY_RETIRED", "PUSH_DENIED",
    "WOULD_DENY", "AuditClosedError", "AuditFileError", "AuditHistoryUnavailableError",
    "AuditLog", "AuditSettings", "AuditStats", "AuditWriteError", "ChainHead", "DecisionInput",
    "DecisionRecord",
    "Entry", "Event", "Masker", "Record", "WatchError", "WatchOverflowError", "builtin_relaxed",
    "decision_event", "events_for_decision", "policy_activated", "policy_approved",
    "policy_created", "policy_reactivated", "policy_retired",
]
