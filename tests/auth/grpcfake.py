"""A stand-in for the pdp services: every RPC of the three pdp services, authorising like the
real ones (:func:`pdp.server.roles.authorize` on the tenant of each request message),
answering an empty response and reporting the principal it saw (trailing metadata
``x-principal``). ``forgetful=True`` handlers never authorise (the interceptor's backstop)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from pdp.server import auth
from pdp.server.roles import RPC_PERMISSION, authorize
from pdp.v1 import admin_pb2, audit_pb2, decision_pb2

SERVICES: list[ServiceDescriptor] = [
    decision_pb2.DESCRIPTOR.services_by_name["DecisionService"],
    admin_pb2.DESCRIPTOR.services_by_name["PolicyAdminService"],
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
]
METHODS: dict[str, MethodDescriptor] = {
    f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}


def msg_class(desc: Any) -> Any:
    return message_factory.GetMessageClass(desc)


def _seen(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    p = auth.current_principal()
    context.set_trailing_metadata((("x-principal", "-" if p is None else p.identity),))


def tenant_in(request: Any) -> str:
    """The fake's own reading of a request's tenant (the real services read their typed
    fields)."""
    if request.DESCRIPTOR.fields_by_name.get("batch") is not None:
        return str(request.batch.tenant)
    if request.DESCRIPTOR.fields_by_name.get("policy") is not None:
        return str(request.policy.tenant)
    return str(getattr(request, "tenant", ""))


def _handler(m: MethodDescriptor, forgetful: bool) -> grpc.RpcMethodHandler:
    req, resp = msg_class(m.input_type), msg_class(m.output_type)
    kw = {"request_deserializer": req.FromString, "response_serializer": resp.SerializeToString}
    permission = RPC_PERMISSION[f"/{m.containing_service.full_name}/{m.name}"]

    async def check(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not forgetful:
            await authorize(context, tenant_in(request), permission)

    if not m.client_streaming and not m.server_streaming:
        async def uu(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(request, context)
            _seen(context)
            return resp()
        return grpc.unary_unary_rpc_method_handler(uu, **kw)
    if not m.client_streaming:
        async def us(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                     ) -> AsyncIterator[Any]:
            await check(request, context)
            _seen(context)
            yield resp()
            yield resp()
        return grpc.unary_stream_rpc_method_handler(us, **kw)

    async def ss(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
                 ) -> AsyncIterator[Any]:
        _seen(context)
        async for request in requests:
            await check(request, context)
            yield resp()
    assert m.server_streaming
    return grpc.stream_stream_rpc_method_handler(ss, **kw)


def generic_handlers(forgetful: bool = False) -> list[grpc.GenericRpcHandler]:
    return [grpc.method_handlers_generic_handler(
        s.full_name, {m.name: _handler(m, forgetful) for m in s.methods}) for s in SERVICES]


def request_for(method: str, tenant: str) -> Any:
    m = METHODS[method]
    msg = msg_class(m.input_type)()
    if "batch" in m.input_type.fields_by_name:
        msg.batch.tenant = tenant
    elif "policy" in m.input_type.fields_by_name:
        msg.policy.tenant = tenant
    elif "tenant" in m.input_type.fields_by_name:
        msg.tenant = tenant
    return msg


async def call(channel: grpc.aio.Channel, method: str, tenants: list[str],
               metadata: tuple[tuple[str, str], ...] = ()) -> tuple[int, str]:
    """Call ``method`` (one request per tenant for client streams) and return
    (responses received, principal the handler saw); raises grpc.aio.AioRpcError."""
    m = METHODS[method]
    req_ser = msg_class(m.input_type).SerializeToString
    resp_de = msg_class(m.output_type).FromString
    reqs = [request_for(method, t) for t in tenants]
    if m.client_streaming:
        c: Any = channel.stream_stream(method, request_serializer=req_ser,
                                       response_deserializer=resp_de)(
            iter(reqs), metadata=metadata)
        n = len([r async for r in c])
    elif m.server_streaming:
        c = channel.unary_stream(method, request_serializer=req_ser,
                                 response_deserializer=resp_de)(reqs[0], metadata=metadata)
        n = len([r async for r in c])
    else:
        c = channel.unary_unary(method, request_serializer=req_ser,
                                response_deserializer=resp_de)(reqs[0], metadata=metadata)
        await c
        n = 1
    trailers = dict(await c.trailing_metadata() or ())
    return n, str(trailers.get("x-principal", ""))
