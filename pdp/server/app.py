"""Assemble and run the sidecar: settings -> stores -> engine -> grpc.aio server.

Shutdown order on SIGTERM/SIGINT: report NOT_SERVING, stop taking new calls and let the ones
in flight finish (``shutdown_grace_s``), then drain and flush the audit log, then close the
counter store. Exit code 0.

SIGHUP re-reads the tokens file and the roles file (:func:`reload_auth`): a revoked token or
identity is refused from the next call on, and an open stream of it ends before its next
message (roles.revalidate); a broken file keeps the previous ones in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from pdp.audit.anchors import AnchorKeyError
from pdp.audit.files import AuditFileError
from pdp.audit.log import AuditLog
from pdp.audit.settings import AuditSettings
from pdp.cel import ProgramCache
from pdp.counters import CounterSettings, CounterStore, open_counter_store
from pdp.counters.redis_store import RedisCounterStore
from pdp.engine.context import ConfigCache
from pdp.engine.engine import Engine, EngineOptions
from pdp.engine.shadow import ShadowOptions
from pdp.notify import Notifier, NotifySettings
from pdp.policy.model import PolicyError
from pdp.policy.store import PolicyStore, StoreError
from pdp.server.admin import PolicyAdminService
from pdp.server.arrival import WATCH
from pdp.server.auth import AuthConfigError, Authenticator, AuthInterceptor
from pdp.server.ceilings import Ceilings
from pdp.server.edges import EdgeInterceptor
from pdp.server.lanes import LANE_WAIT_SHARE, BulkLane
from pdp.server.policies import (
    AdminAudit,
    PolicyReloader,
    cel_environment,
    open_policy_store,
    seed,
)
from pdp.server.probes import (
    Check,
    ProbeBindError,
    ProbeServer,
    ReadyFn,
    RpcMetricsInterceptor,
)
from pdp.server.services import DecisionService
from pdp.server.stack import ServerStack
from pdp.server.tls import TLSConfigError, server_credentials
from pdp.settings import Settings
from pdp.telemetry import (
    NO_TELEMETRY,
    DecisionTelemetry,
    LoopLagMonitor,
    RpcMetrics,
    TelemetrySettings,
    create_telemetry,
    new_registry,
)
from pdp.v1 import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc, decision_pb2
from pdp.v1 import decision_pb2_grpc as dgrpc

#: Container allocations between young-generation collections (see start()).
GC_YOUNG_THRESHOLD = 20_000
log = structlog.get_logger("pdp.server")

SERVICE_NAMES = (
    decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["PolicyAdminService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)


class StartupError(RuntimeError):
    """The server cannot start as configured; the message says what to fix."""


def open_counters(settings: Settings, telemetry: DecisionTelemetry = NO_TELEMETRY,
                  emit: Callable[[dict[str, Any]], None] | None = None) -> CounterStore:
    """In-process without a Redis URL; otherwise Redis (it connects lazily, fails closed).

    A Redis that comes back without pdp's state (``CounterStateLost``) is counted in the
    counter-error metric (code COUNTER_STATE_LOST) and written to the audit log."""
    timeout = max(0.05, settings.redis_timeout_ms / 1000)
    # Each call is bounded by its decision's deadline; op_timeout is only the socket-level
    # backstop, so it must not be shorter than a whole step's reservation may take.
    return open_counter_store(
        CounterSettings(url=settings.redis_url, cluster=settings.redis_cluster,
                        connect_timeout=timeout, op_timeout=max(1.0, timeout),
                        pool_size=settings.redis_pool_size,
                        state_lost=settings.counter_state_lost,
                        history_seconds=settings.counter_history_s),
        on_state_lost=lambda change: telemetry.record_counter_error(
            change.tenant, "COUNTER_STATE_LOST"),
        on_audit_event=emit)


def audit_settings(settings: Settings) -> AuditSettings:
    return AuditSettings(
        path=settings.audit_file, rotate_bytes=settings.audit_rotate_bytes,
        queue_size=settings.audit_queue_size, durability=settings.audit_durability,
        redis_url=settings.redis_url if settings.audit_redis_stream else None,
        redis_cluster=settings.redis_cluster,
        redis_stream=settings.audit_redis_stream or "pdp:audit",
        redis_maxlen=settings.audit_redis_maxlen, spool_dir=settings.audit_spool_dir,
        stdout=settings.audit_stdout, mask_paths=list(settings.audit_mask_paths),
        mask_mode=settings.audit_mask_mode, anchor_key_file=settings.audit_anchor_key_file,
        anchor_every_records=settings.audit_anchor_every_records,
        anchor_every_s=settings.audit_anchor_every_s,
        anchor_file=settings.audit_anchor_file)  # shared by --workers: lines name their ledger


def _roles(entries: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in entries:
        tenant, _, role = entry.partition(":")
        out.setdefault(tenant, []).append(role)
    return out


def _is_loopback(listen: str) -> bool:
    import ipaddress

    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def warn_if_open(settings: Settings, auth: Authenticator) -> None:
    """Anyone who can reach a non-loopback port may then call as the anonymous caller."""
    if settings.listen and not _is_loopback(settings.listen) and auth.anonymous_allowed:
        log.warning(
            "AUTHENTICATION_OFF_ON_A_NETWORK_ADDRESS", listen=settings.listen,
            anonymous_roles=auth.anonymous.describe_roles(),
            fix="set --auth-tokens-file (PDP_AUTH_TOKENS_FILE) or mTLS with --auth-roles-file,"
                " or --auth-anonymous-roles '' to refuse callers without credentials")


def authenticator(settings: Settings) -> Authenticator:
    try:
        return Authenticator(
            tokens_file=settings.auth_tokens_file, roles_file=settings.auth_roles_file,
            unix_socket_roles=_roles(settings.auth_unix_socket_roles) or None,
            anonymous_roles=_roles(settings.auth_anonymous_roles),
            require_auth=settings.auth_required)
    except AuthConfigError as exc:
        raise StartupError(f"auth: {exc}") from None


@dataclass
class Running:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    engine: Engine
    audit: AuditLog
    counters: CounterStore
    ports: list[str]
    store: PolicyStore
    reloader: PolicyReloader
    edges: EdgeInterceptor
    lag: LoopLagMonitor
    probes: ProbeServer | None = None
    metrics_server: Any = None  # prometheus_port's own server
    auth: Authenticator | None = None  # SIGHUP reloads its tokens and roles files


def warn_ineffective(settings: Settings) -> None:
    """Settings that do nothing without another one: said at start-up, not switched on
    behind the operator's back (telemetry on adds spans and their cost to every decision)."""
    if settings.config_cache_nodes < settings.config_max_nodes:
        log.warning("SETTING_WITHOUT_EFFECT", setting="config_max_nodes",
                    effect=f"configs of more than {settings.config_cache_nodes} values are"
                           " accepted but never cached: parsed again on every call",
                    fix="--config-cache-nodes at least --config-max-nodes")
    if settings.audit_anchor_key_file:
        # the key is what the anchors' trust rests on: anyone who can read it can sign
        key_file = settings.audit_anchor_key_file
        try:
            mode = Path(key_file).stat().st_mode & 0o777
        except OSError:
            mode = 0  # unreadable: the audit log's own start-up says so, naming the file
        if mode & 0o044:
            log.warning("AUDIT_KEY_FILE_READABLE_BY_OTHERS", file=key_file, mode=f"{mode:04o}",
                        effect="whoever can read it can forge signed audit checkpoints",
                        fix=f"chmod 600 {key_file} (readable by pdp's user only)")
    if settings.telemetry_enabled:
        return
    if settings.prometheus_port is not None:
        log.warning("SETTING_WITHOUT_EFFECT", setting="prometheus_port",
                    effect="its /metrics has process and gRPC metrics only",
                    fix="--telemetry-enabled adds the decision metrics (pdp_*)")
    if settings.otlp_endpoint:
        log.warning("SETTING_WITHOUT_EFFECT", setting="otlp_endpoint",
                    effect="nothing is exported", fix="--telemetry-enabled")


def readiness(settings: Settings, running: Running) -> ReadyFn:
    """The checks of ``/readyz`` (see :mod:`pdp.server.probes` for what ready means)."""
    async def checks() -> list[Check]:
        out: list[Check] = [
            ("policies", True, f"{len(running.engine.policies.policies)} loaded"),
            ("draining", not running.edges.draining,
             "yes: shutting down" if running.edges.draining else "no"),
        ]
        problem = running.reloader.problem()
        out.append(("policy_store", problem is None, problem or "reachable"))
        failing = running.audit.failing
        out.append(("audit", failing is None,
                    f"cannot write the audit file: {failing}" if failing else "writing"))
        moved = running.audit.file_trouble
        if moved is not None:  # put back or started anew: ready, but an operator must look
            out.append(("audit_file", True, moved))
        trouble = running.audit.anchor_trouble
        if trouble is not None:  # recreated and written on: ready, but an operator must look
            out.append(("audit_anchors", True, f"the anchor file was removed or replaced"
                                               f" and recreated: {trouble}"))
        if settings.redis_url:
            try:
                async with asyncio.timeout(2.0):
                    up = await running.counters.ping()
            except TimeoutError:
                up = False
            refusing = (running.counters.refusing
                        if isinstance(running.counters, RedisCounterStore) else None)
            out.append(("counter_store", up, "reachable" if up else
                        f"refusing writes: {refusing}" if refusing else "unreachable"))
        return out
    return checks


async def start(settings: Settings) -> Running:
    cache = ProgramCache(maxsize=settings.cel_cache_size)
    auth = authenticator(settings)
    warn_if_open(settings, auth)
    warn_ineffective(settings)
    credentials = None
    if settings.tls_cert_file and settings.tls_key_file:
        try:
            credentials = server_credentials(
                settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file,
                "require" if settings.tls_client_ca_file else "none")
        except TLSConfigError as exc:
            raise StartupError(str(exc)) from None
    try:
        audit = AuditLog(audit_settings(settings))
        await audit.start()
    except (AuditFileError, AnchorKeyError) as exc:
        raise StartupError(f"audit: {exc}") from None
    env = cel_environment(settings)
    admin_audit = AdminAudit(audit.emit, audit.flush)
    store = open_policy_store(settings, admin_audit.emit, cache, env)
    try:
        await seed(store, settings)
        reloader = PolicyReloader(store, env, cache,
                                  settings.cel_max_cost_estimate,
                                  settings.policy_store_stale_s)
        policies = await reloader.load()
    except PolicyError as exc:
        await store.close()
        await audit.close()
        raise StartupError(f"policy_dir: {exc}") from None
    except StoreError as exc:
        await store.close()
        await audit.close()
        raise StartupError(f"policy_store: {exc}") from None
    # One registry behind every /metrics (probe address, prometheus_port): process and
    # per-RPC metrics always, the decision metrics when telemetry is on.
    registry = new_registry()
    telemetry = create_telemetry(TelemetrySettings(
        enabled=settings.telemetry_enabled, otlp_endpoint=settings.otlp_endpoint,
        policy_spans=settings.telemetry_policy_spans,
        sample_ratio=settings.telemetry_sample_ratio), registry)
    counters = open_counters(settings, telemetry, audit.emit)
    if isinstance(counters, RedisCounterStore):
        evicts = await counters.eviction_policy()
        if evicts is not None and evicts != "noeviction":
            why = (f"Redis may evict counter keys (maxmemory is set, maxmemory-policy"
                   f" {evicts}): under memory pressure caps, cooldowns and windows would"
                   " reopen unnoticed; set maxmemory-policy noeviction (a full Redis then"
                   " denies COUNTER_STORE_UNAVAILABLE), or accept the risk with"
                   " --redis-allow-eviction true")
            if not settings.redis_allow_eviction:
                await counters.close()
                await store.close()
                await audit.close()
                raise StartupError(f"counter store: {why}")
            log.error("counter_store_evicts", maxmemory_policy=evicts, effect=why)
    try:
        notifier = Notifier(NotifySettings(
            smtp_host=settings.notify_smtp_host, smtp_port=settings.notify_smtp_port,
            smtp_from=settings.notify_smtp_from, retry_for_s=settings.notify_retry_for_s,
            backoff_initial_s=settings.notify_backoff_initial_s,
            backoff_max_s=settings.notify_backoff_max_s,
            attempt_timeout_s=settings.notify_attempt_timeout_s, redis_url=settings.redis_url,
            redis_cluster=settings.redis_cluster,
            state_path=settings.notify_state or str(
                Path(settings.audit_file).resolve().parent / "notify.sqlite3")),
            emit=audit.emit)
    except (ValueError, OSError, sqlite3.Error) as exc:
        await counters.close()
        await store.close()
        await audit.close()
        raise StartupError(f"notify: {exc}") from None
    await notifier.start()
    telemetry.observe_cache(lambda: (cache.hits, cache.misses))
    telemetry.observe_audit(lambda: audit.stats().queue_depth,
                            lambda: audit.stats().sink_spooled)
    telemetry.observe_notifications(notifier.counts)
    telemetry.start()
    if settings.redis_url and not await counters.ping():
        log.warning("counter_store_unreachable", redis_url=settings.redis_url,
                    effect="counter rules deny COUNTER_STORE_UNAVAILABLE until it is back")
    engine = Engine(policies, counters, audit,
                    ConfigCache(settings.config_cache_size, settings.max_config_bytes,
                                cache_bytes=settings.config_cache_bytes,
                                max_nodes=settings.config_max_nodes,
                                cache_nodes=settings.config_cache_nodes),
                    EngineOptions(cost_limit=settings.cel_cost_limit,
                                  counter_timeout_s=settings.redis_timeout_ms / 1000,
                                  policies_stale=reloader.stale_reason,
                                  seen_refresh_s=settings.audit_seen_refresh_s,
                                  audit_after_answer=settings.audit_durability == "async",
                                  audit_sync_timeout_s=settings.audit_sync_timeout_ms / 1000,
                                  step_budget_s=settings.step_budget_ms / 1000,
                                  step_agent_max_s=settings.step_agent_max_ms / 1000,
                                  unknown_tenants=settings.unknown_tenants,
                                  shadow=ShadowOptions(
                                      budget_s=settings.shadow_budget_ms / 1000,
                                      cost_limit=settings.cel_cost_limit,
                                      backlog=settings.shadow_backlog,
                                      share=settings.shadow_share)),
                    telemetry=telemetry, notifier=notifier)
    options: list[tuple[str, Any]] = [("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
                                      ("grpc.max_receive_message_length",
                                       settings.max_config_bytes * 3 + 1024 * 1024)]
    # The edge comes first: it decodes requests (and refuses bad ones) before authentication
    # sees them, and drains on shutdown. The RPC metrics come before the edge, so calls it
    # refuses are counted too. The three run as one interceptor (ServerStack): as three,
    # a unary call paid ~60 µs more of server CPU (bench/README.md, "Sixth pass").
    edges = EdgeInterceptor(Ceilings(
        items={"pdp.v1.CheckPushBatchRequest.agents": settings.max_batch_agents},
        byte_limits={"pdp.v1.Config.yaml": settings.max_config_bytes}),
        lane=BulkLane(max_wait_s=settings.deadline_ms / 1000 * LANE_WAIT_SHARE,
                      large_bytes=settings.bulk_lane_bytes) if settings.bulk_lane_bytes else None)
    lane = edges.lane
    if lane is not None:
        telemetry.observe_lane(lambda: (lane.waited, lane.timed_out))
    server = grpc.aio.server(options=options, interceptors=[ServerStack(
        RpcMetricsInterceptor(RpcMetrics(registry)), edges, AuthInterceptor(auth))])
    dgrpc.add_DecisionServiceServicer_to_server(
        DecisionService(engine, settings.deadline_ms / 1000, settings.max_batch_agents), server)
    admin_pb2_grpc.add_PolicyAdminServiceServicer_to_server(
        cast(Any, PolicyAdminService(store, store.validate, admin_audit.settle)), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(_audit_service(audit), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        enable_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name),
            server)
    ports = []
    try:
        if settings.listen and credentials is not None:
            server.add_secure_port(settings.listen, credentials)
            ports.append(f"tls:{settings.listen}")
        elif settings.listen:
            server.add_insecure_port(settings.listen)
            ports.append(settings.listen)
        if settings.unix_socket:
            with contextlib.suppress(FileNotFoundError):
                Path(settings.unix_socket).unlink()
            server.add_insecure_port(f"unix:{settings.unix_socket}")
            ports.append(f"unix:{settings.unix_socket}")
    except RuntimeError as exc:
        await audit.close()
        raise StartupError(f"listen: cannot bind {ports[-1] if ports else settings.listen}:"
                           f" {exc}") from None
    await server.start()
    reloader.start(engine.replace_policies)
    lag = LoopLagMonitor(telemetry)
    lag.start()
    # Everything loaded so far (policies, compiled programs, modules) lives as long as the
    # process: keep it out of the collector's generations so decisions don't pay for it.
    gc.collect()
    gc.freeze()
    # A young-generation collection every 20 000 container allocations, not every 700: a
    # 1 000-agent step allocates ~20 000, and at 700 its own live decisions were traversed
    # again and again (~2 ms of a ~30 ms step); a decision's garbage is freed by reference
    # counting, so what a collection finds alive (and the pause) stays small.
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    WATCH.start()  # after start-up's own long stretches (gc.collect): they are no stall
    running = Running(server, health_servicer, engine, audit, counters, ports, store, reloader,
                      edges, lag, auth=auth)
    what = "http_listen"
    try:
        if settings.http_listen:
            running.probes = ProbeServer(settings.http_listen, registry,
                                         readiness(settings, running),
                                         asyncio.get_running_loop(),
                                         reuse_port=settings.workers > 1).start()
        if settings.prometheus_port is not None:
            from prometheus_client import start_http_server

            what = "prometheus_port"
            running.metrics_server, _ = start_http_server(
                settings.prometheus_port, addr="127.0.0.1", registry=registry)
    except (ProbeBindError, OSError) as exc:
        await stop(running, 0.0)
        raise StartupError(f"{what}: {exc}") from None
    log.info("started", listen=ports, policies=len(policies.policies),
             policy_store=settings.policy_store,
             tenants=len(policies.tenants()), counters="redis" if settings.redis_url else
             "in-process", audit_file=settings.audit_file, deadline_ms=settings.deadline_ms,
             http=(f"{settings.http_listen.rpartition(':')[0]}:{running.probes.port}"
                   if running.probes else None))
    return running


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_reflection_v1_descriptor() -> None:
    """Put ``grpc.reflection.v1`` in the default descriptor pool, so that reflection can
    describe itself under that name too. v1 is v1alpha renamed (same messages, same field
    numbers); grpcio-reflection ships only v1alpha, so the file is derived from it."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    pool = descriptor_pool.Default()
    with contextlib.suppress(KeyError):
        pool.FindFileByName(_REFLECTION_V1_FILE)
        return
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = _REFLECTION_V1_FILE, "grpc.reflection.v1"
    proto.ClearField("options")
    for message in proto.message_type:
        for f in message.field:
            if f.HasField("type_name"):  # scalars have none (setting "" would add one)
                f.type_name = f.type_name.replace(old, new)
    for service in proto.service:
        for m in service.method:
            m.input_type, m.output_type = (m.input_type.replace(old, new),
                                           m.output_type.replace(old, new))
    pool.AddSerializedFile(proto.SerializeToString())


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Server reflection on ``grpc.reflection.v1`` (current grpcurl, Postman) and
    ``grpc.reflection.v1alpha`` (older clients). The two protocols have the same wire
    format, so one v1alpha servicer answers both."""
    _add_reflection_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer(
        (*service_names, reflection.SERVICE_NAME, REFLECTION_V1))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    }),))


def _audit_service(audit: AuditLog) -> audit_pb2_grpc.AuditServiceServicer:
    from pdp.server.watch import AuditService

    return AuditService(audit)


#: Drain: the server stops once no call has reached it for this long (see wait_quiet), and
#: waits at most DRAIN_QUIET_MAX_S (within the grace period) for such a pause.
DRAIN_QUIET_S = 0.1
DRAIN_QUIET_MAX_S = 5.0


async def stop(running: Running, grace_s: float) -> None:
    """Drain, then close. Calls already being handled get their real answer; calls that
    start from now on are refused with UNAVAILABLE at once; the gRPC server is stopped only
    when nothing is in flight, so it has nothing to cancel and nothing waits out the grace
    period (which only bounds a call that will not finish)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + grace_s
    running.edges.drain()
    await running.health.enter_graceful_shutdown()
    if not await running.edges.wait_idle(grace_s):
        log.warning("drain_timeout", grace_s=grace_s, in_flight=running.edges.in_flight,
                    effect="the calls still in flight are cancelled")
    else:
        # calls received but still queued in gRPC: refused one by one, not reset by stop()
        quiet = await running.edges.wait_quiet(
            DRAIN_QUIET_S, min(DRAIN_QUIET_MAX_S, max(0.0, until - loop.time())))
        if not await running.edges.wait_idle(max(0.0, until - loop.time())) or not quiet:
            log.warning("drain_timeout", grace_s=grace_s, in_flight=running.edges.in_flight,
                        effect="calls still arriving or in flight are cancelled")
    await running.server.stop(max(0.0, until - loop.time()))
    await running.lag.stop()
    WATCH.stop()
    await running.reloader.stop()
    await running.store.close()
    if running.engine.notifier is not None:
        await running.engine.notifier.close(timeout=grace_s)
    running.engine.telemetry.shutdown()
    running.engine.record_pending()  # answered decisions whose records were still to come
    running.engine.shadow.drain()  # drafts not evaluated yet: noted in the audit, not run
    await running.audit.close(timeout=max(1.0, until - loop.time()))
    await running.counters.close()
    # Last: the kubelet sees the process alive (and not ready) until it is about to exit.
    if running.metrics_server is not None:
        running.metrics_server.shutdown()
        running.metrics_server.server_close()
    if running.probes is not None:
        await asyncio.to_thread(running.probes.close)
    log.info("stopped")


def reload_auth(auth: Authenticator) -> bool:
    """SIGHUP: re-read the tokens and roles files and swap them in at once (calls from then
    on see the new ones). A file that cannot be read or is invalid changes nothing: the
    previous tokens and roles stay in force (never "no authentication"), and it is logged."""
    try:
        tokens, identities = auth.reload()
    except AuthConfigError as exc:
        log.error("auth_reload_failed", error=str(exc),
                  effect="nothing changed: the previous tokens and roles stay in force")
        return False
    log.info("auth_reloaded", tokens=tokens, identities=identities,
             tokens_file=auth.tokens_file, roles_file=auth.roles_file)
    return True


async def serve(settings: Settings) -> int:
    running = await start(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if running.auth is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_auth, running.auth)
    await stopping.wait()
    log.info("stopping", grace_s=settings.shutdown_grace_s)
    await stop(running, settings.shutdown_grace_s)
    return 0
