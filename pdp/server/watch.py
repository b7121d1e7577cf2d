"""AuditService.Watch: the audit log's records as a gRPC server stream.

Records carry config texts and identities, so watching needs the auditor role (or admin) on
the tenant watched. A watch of every tenant (no tenant filter) needs it on ``*``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import struct_pb2

from pdp.api.convert import tenant_of
from pdp.audit.log import AuditLog
from pdp.audit.watch import AuditHistoryUnavailableError, WatchError, WatchOverflowError
from pdp.server.ending import end
from pdp.server.limits import status_text
from pdp.server.roles import Permission, authorize
from pdp.v1 import audit_pb2 as apb
from pdp.v1 import audit_pb2_grpc


def record_pb(record: dict[str, Any]) -> apb.AuditRecord:
    event = record.get("event") or {}
    data = struct_pb2.Struct()
    data.update(event)
    pb = apb.AuditRecord(sequence=int(record["seq"]), type=str(event.get("type", "")),
                         tenant=str(event.get("tenant", "")),
                         decision_id=str(event.get("decision_id", "")), data=data,
                         prev_hash=str(record.get("prev", "")), hash=str(record.get("hash", "")))
    if isinstance(event.get("time"), str):
        with contextlib.suppress(ValueError):
            pb.time.FromJsonString(event["time"])
    return pb


class AuditService(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def Watch(self, request: apb.WatchRequest,
                    context: grpc.aio.ServicerContext[Any, Any]
                    ) -> AsyncIterator[apb.WatchResponse]:
        tenant: str | None = None
        if request.tenant:  # empty: every tenant, for auditors of every tenant only
            try:
                tenant = tenant_of(request.tenant)
            except ValueError as exc:
                await end(context, grpc.StatusCode.INVALID_ARGUMENT, status_text(str(exc)))
                return
        await authorize(context, tenant or "", Permission.READ_AUDIT)
        from_seq: int | None = request.from_sequence
        if not request.from_sequence and not request.from_beginning:
            from_seq = None
        types = set(request.event_types) or None
        try:
            async for record in self.audit.watch(tenant, types, from_seq):
                yield apb.WatchResponse(record=record_pb(record))
        except WatchOverflowError as exc:
            await end(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                      status_text(f"watcher fell too far behind: {exc}"))
        except AuditHistoryUnavailableError as exc:
            await end(context, grpc.StatusCode.OUT_OF_RANGE, status_text(str(exc)))
        except WatchError as exc:
            await end(context, grpc.StatusCode.UNAVAILABLE, status_text(str(exc)))
