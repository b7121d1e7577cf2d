"""Python client for rollout engines: sync and asyncio, typed results.

    with PdpClient("127.0.0.1:50051") as pdp:
        d = pdp.check_push("acme", "agent-1", config_yaml=text)
        if not d.allowed: print(d.reasons[0].message)

Credentials: ``token=`` sends ``authorization: Bearer <token>`` with every call (the
client's own methods and calls on ``client.stub`` alike); ``credentials=`` (e.g.
``grpc.ssl_channel_credentials(ca_pem, key_pem, cert_pem)``) connects with TLS or mTLS::

    PdpClient("pdp.internal:50051", token=os.environ["PDP_TOKEN"],
              credentials=grpc.ssl_channel_credentials(Path("ca.crt").read_bytes()))

A transport error is raised (``grpc.RpcError``), never turned into an allow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc


@dataclass(frozen=True)
class ReasonInfo:
    policy: str
    policy_version: int
    rule: str
    code: str  # e.g. "POLICY_DENIED"
    message: str
    builtin: bool = False
    retry_after_s: float | None = None


@dataclass(frozen=True)
class DecisionResult:
    """A decision as plain Python; ``raw`` keeps the protobuf for anything else."""

    decision_id: str
    allowed: bool
    reasons: list[ReasonInfo]
    shadow_denies: list[ReasonInfo]
    overridden: bool
    elapsed_s: float
    raw: cpb.Decision = field(repr=False)

    @classmethod
    def from_pb(cls, pb: cpb.Decision) -> DecisionResult:
        return cls(pb.decision_id, pb.outcome == cpb.OUTCOME_ALLOW,
                   [_reason(r) for r in pb.reasons], [_reason(r) for r in pb.shadow_denies],
                   pb.overridden, pb.elapsed.ToNanoseconds() / 1e9, pb)


def _reason(r: cpb.Reason) -> ReasonInfo:
    return ReasonInfo(r.policy, r.policy_version, r.rule,
                      cpb.ReasonCode.Name(r.code).removeprefix("REASON_CODE_"), r.message,
                      r.builtin,
                      r.retry_after.ToNanoseconds() / 1e9 if r.HasField("retry_after") else None)


def push_request(tenant: str, agent_id: str, *, config_yaml: str | None = None,
                 previous_config_yaml: str | None = None,
                 agent_labels: Mapping[str, str] | None = None, agent_group: str = "",
                 rollout: Mapping[str, Any] | None = None,
                 change: Mapping[str, str] | None = None, auto_apply: bool = False,
                 override: tuple[str, str] | None = None,
                 request_id: str = "") -> dpb.CheckPushRequest:
    req = dpb.CheckPushRequest(
        tenant=tenant,
        checkpoint=cpb.CHECKPOINT_AUTO_APPLY if auto_apply else cpb.CHECKPOINT_PUSH,
        agent=cpb.Agent(id=agent_id, labels=dict(agent_labels or {}), group=agent_group),
        request_id=request_id)
    if config_yaml is not None:
        req.config.yaml = config_yaml
    if previous_config_yaml is not None:
        req.previous_config.yaml = previous_config_yaml
    if rollout:
        json_format.ParseDict(dict(rollout), req.rollout)
    if change:
        json_format.ParseDict(dict(change), req.change)
    if override is not None:
        req.override.actor, req.override.justification = override
    return req


# -- request files (pdp check) ------------------------------------------------------------

KINDS = {
    "push": ("CheckPush", dpb.CheckPushRequest),
    "auto_apply": ("CheckPush", dpb.CheckPushRequest),
    "device": ("CheckDevice", dpb.CheckDeviceRequest),
    "rollout": ("CheckRollout", dpb.CheckRolloutRequest),
}


class RequestFileError(ValueError):
    """A request file cannot be turned into a request; the message is one line naming the
    file (``pdp check`` prints it and exits 2: an unreadable input is never a deny)."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def request_from_file(path: str | Path) -> tuple[str, Any]:
    """Read a request YAML: ``kind`` (push, auto_apply, device, rollout), then the request's
    fields; ``config`` / ``previous_config`` may be YAML text or a mapping, or use
    ``config_file`` / ``previous_config_file`` relative to the request file.

    Raises :class:`RequestFileError` for every input problem (unreadable file, bad YAML, a
    field the request has not or a value of the wrong type, a missing ``config_file``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RequestFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RequestFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RequestFileError(f"{where}: not valid YAML: {_one_line(problem)}") from None
    if not isinstance(data, dict):
        raise RequestFileError(f"{path}: expected a mapping")
    try:
        return request_message(data, path.parent)
    except ValueError as exc:
        raise RequestFileError(f"{path}: {_one_line(str(exc))}") from None


def _read_config_file(base: Path, key: str, name: str) -> str:
    target = (base / name).resolve()
    try:
        return target.read_text(encoding="utf-8")
    except OSError as exc:
        raise RequestFileError(f"{key}_file: cannot read {target}: {exc.strerror or exc}"
                               ) from None
    except UnicodeDecodeError as exc:
        raise RequestFileError(f"{key}_file: {target} is not UTF-8 text (byte {exc.start})"
                               ) from None


def request_message(data: Mapping[str, Any], base: Path) -> tuple[str, Any]:
    """The request-file shape as (RPC method name, protobuf request). Raises ValueError for
    every input problem, :class:`RequestFileError` for a ``*_file`` that cannot be read
    (naming its resolved path)."""
    data = dict(data)
    kind = str(data.pop("kind", "push"))
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    method, cls = KINDS[kind]
    for key in ("config", "previous_config"):
        if f"{key}_file" in data:
            data[key] = _read_config_file(base, key, str(data.pop(f"{key}_file")))
        value = data.get(key)
        if isinstance(value, dict | list) and not (isinstance(value, dict) and "yaml" in value):
            data[key] = {"yaml": yaml.safe_dump(value, sort_keys=False)}
        elif isinstance(value, str):
            data[key] = {"yaml": value}
    if kind == "auto_apply":
        data["checkpoint"] = "CHECKPOINT_AUTO_APPLY"
    try:
        return method, json_format.ParseDict(data, cls())
    except (json_format.ParseError, TypeError) as exc:
        # ParseError is no ValueError, and its text lists the message's fields on a second
        # line: callers get a one-line ValueError like every other input problem
        raise ValueError(_one_line(str(exc))) from None


_RESPONSE_DECISION = "decision"

ChannelOptions = Sequence[tuple[str, Any]]


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents ``token`` (none without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass(frozen=True)
class _SyncCallDetails:
    """What grpc's blocking interceptors read of a call (grpc.ClientCallDetails' fields)."""

    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


def _sync_interceptors(token: str | None) -> list[Any]:
    """Interceptors that add the token's metadata to every call on a blocking channel."""
    if not token:
        return []
    extra = bearer_metadata(token)

    def details_of(details: Any) -> _SyncCallDetails:
        return _SyncCallDetails(
            details.method, details.timeout, [*(details.metadata or ()), *extra],
            details.credentials, getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None))

    class UnaryUnary(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(details_of(details), request)

    class UnaryStream(grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
        def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(details_of(details), request)

    class StreamUnary(grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_stream_unary(self, continuation: Any, details: Any,
                                   requests: Any) -> Any:
            return continuation(details_of(details), requests)

    class StreamStream(grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
        def intercept_stream_stream(self, continuation: Any, details: Any,
                                    requests: Any) -> Any:
            return continuation(details_of(details), requests)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


def _aio_interceptors(token: str | None) -> list[Any]:
    """The same for a grpc.aio channel (one interceptor per call type)."""
    if not token:
        return []
    extra = bearer_metadata(token)

    def details_of(details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        for key, value in extra:
            metadata.add(key, value)
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata,
                                          details.credentials, details.wait_for_ready)

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation: Any, details: Any,
                                        request: Any) -> Any:
            return await continuation(details_of(details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_stream(self, continuation: Any, details: Any,
                                         request: Any) -> Any:
            return await continuation(details_of(details), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_stream_unary(self, continuation: Any, details: Any,
                                         requests: Any) -> Any:
            return await continuation(details_of(details), requests)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
        async def intercept_stream_stream(self, continuation: Any, details: Any,
                                          requests: Any) -> Any:
            return await continuation(details_of(details), requests)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


class PdpClient:
    """Blocking client. ``timeout`` is the gRPC deadline of each call, in seconds.

    ``token``: a bearer token sent with every call. ``credentials``: channel credentials
    (TLS / mTLS; plaintext without). ``options``: gRPC channel options (e.g.
    ``grpc.ssl_target_name_override``). With ``channel=`` given, it is used as it is (only
    the token is added to its calls)."""

    def __init__(self, address: str, *, timeout: float = 2.0,
                 channel: grpc.Channel | None = None, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: ChannelOptions = ()) -> None:
        if channel is None:
            channel = (grpc.insecure_channel(address, options=list(options))
                       if credentials is None else
                       grpc.secure_channel(address, credentials, options=list(options)))
        self._base_channel = channel
        self.channel = (grpc.intercept_channel(channel, *_sync_interceptors(token)) if token
                        else channel)
        self.timeout = timeout
        self.stub = dgrpc.DecisionServiceStub(self.channel)

    def __enter__(self) -> PdpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._base_channel.close()

    def check_push(self, tenant: str, agent_id: str, **kw: Any) -> DecisionResult:
        return self.check_push_request(push_request(tenant, agent_id, **kw))

    def check_push_request(self, req: dpb.CheckPushRequest) -> DecisionResult:
        return DecisionResult.from_pb(self.stub.CheckPush(req, timeout=self.timeout).decision)

    def call(self, method: str, req: Any) -> DecisionResult:
        """Call a Check* method by name (as `pdp check` does) and return its decision."""
        resp = getattr(self.stub, method)(req, timeout=self.timeout)
        return DecisionResult.from_pb(getattr(resp, _RESPONSE_DECISION))

    def health(self, service: str = "") -> str:
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


class AsyncPdpClient:
    """asyncio client (grpc.aio); same helpers and credentials as PdpClient."""

    def __init__(self, address: str, *, timeout: float = 2.0, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: ChannelOptions = ()) -> None:
        interceptors = _aio_interceptors(token)
        self.channel = (
            grpc.aio.insecure_channel(address, options=list(options),
                                      interceptors=interceptors)
            if credentials is None else
            grpc.aio.secure_channel(address, credentials, options=list(options),
                                    interceptors=interceptors))
        self.timeout = timeout
        self.stub = dgrpc.DecisionServiceStub(self.channel)

    async def __aenter__(self) -> AsyncPdpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def check_push(self, tenant: str, agent_id: str, **kw: Any) -> DecisionResult:
        return await self.check_push_request(push_request(tenant, agent_id, **kw))

    async def check_push_request(self, req: dpb.CheckPushRequest) -> DecisionResult:
        resp = await self.stub.CheckPush(req, timeout=self.timeout)
        return DecisionResult.from_pb(resp.decision)

    async def health(self, service: str = "") -> str:
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service),
                                timeout=self.timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
