"""One typed settings object, read once at start-up.

Sources, later wins: defaults < YAML file (``--config`` / ``PDP_CONFIG``) < ``PDP_*``
environment variables < command-line flags. Anything unknown or invalid stops start-up with a
message naming the setting: a typo in a sidecar's environment must not silently fall back to a
default (the envoyproxy/ratelimit lesson: read settings once, fail loudly).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

ENV_PREFIX = "PDP_"
#: The role names of pdp.server.roles (kept here so settings import nothing of the server).
AUTH_ROLES = ("checker", "rollout-engine", "reader", "auditor", "author", "approver", "admin")


class SettingsError(ValueError):
    """A setting is unknown or has an invalid value; the message names it."""


def _s(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class Settings:
    """Everything the server reads at start-up. Field names are the YAML keys."""

    listen: str = _s("127.0.0.1:50051", "TCP address to listen on, HOST:PORT ('' = none)")
    unix_socket: str | None = _s(None, "also listen on this unix socket path (sidecars)")
    policy_dir: str = _s("policies", "directory of policy YAML files (*.yaml, *.yml); seeds the"
                                     " policy store with the policies it does not have yet")
    policy_store_stale_s: float = _s(
        60.0, "deny POLICY_STORE_UNAVAILABLE once the policy store was out of reach this long")
    policy_store: str = _s(
        "sqlite:var/policies.sqlite3",
        "policy store: sqlite:PATH (embedded) or redis://... (shared by a fleet of sidecars)")
    audit_file: str = _s("var/audit/audit.jsonl", "JSON-lines audit file")
    audit_durability: Literal["async", "sync"] = _s(
        "async", "sync = every answered decision is fsync'd to the audit file first")
    audit_sync_timeout_ms: int = _s(
        1000, "sync durability: the longest an answer waits for its audit record to be"
              " fsync'd; past it, or while the audit file cannot be written, the call fails"
              " UNAVAILABLE (no decision is answered without its record)")
    audit_queue_size: int = _s(100_000, "bounded audit queue (events)")
    audit_rotate_bytes: int = _s(256 * 1024 * 1024, "rotate the audit file at this size")
    audit_redis_stream: str | None = _s(None, "also write audit events to this Redis stream")
    audit_redis_maxlen: int | None = _s(
        None, "approximate MAXLEN trimming of the audit Redis stream; unset = never trim")
    audit_seen_refresh_s: float = _s(
        3600.0, "write a Config.Seen / Policies.Seen event again after this many seconds, so"
                " the text a decision names is never further back (size Redis MAXLEN for it)")
    audit_spool_dir: str | None = _s(None, "spool directory for failed sinks (default beside"
                                           " the audit file)")
    audit_stdout: bool = _s(False, "also write audit events to stdout")
    audit_mask_paths: tuple[str, ...] = _s(
        (), "request paths masked in audit events, e.g. config.exporters.*.headers")
    audit_mask_mode: Literal["hash", "remove"] = _s(
        "hash", "masked values are replaced by their hash, or removed")
    audit_anchor_key_file: str | None = _s(
        None, "key file (>= 16 bytes) for HMAC-signed checkpoints of the audit chain, so"
              " `pdp audit verify --key` detects re-chaining and truncation; unset = none")
    audit_anchor_every_records: int = _s(1000, "write a signed checkpoint every N audit records")
    audit_anchor_every_s: float = _s(10.0, "...or every N seconds (and at shutdown; in sync"
                                           " durability with every batch)")
    audit_anchor_file: str | None = _s(None, "append-only copy of the checkpoints, to ship off"
                                             " the host (default: <audit_file>.anchors)")
    redis_url: str | None = _s(
        None, "Redis for counters (redis://, rediss://, unix://); unset = in-process counters")
    redis_cluster: bool = _s(False, "the Redis URL points at a Redis Cluster")
    redis_timeout_ms: int = _s(20, "per-call Redis timeout (capped by the decision deadline)")
    redis_pool_size: int = _s(32, "Redis connection pool size")
    redis_allow_eviction: bool = _s(False, "start although Redis may evict counter keys"
                                    " (maxmemory set and maxmemory-policy not noeviction):"
                                    " caps and cooldowns can then reopen unnoticed")
    counter_state_lost: str = _s("deny", "when Redis comes back without pdp's counter state:"
                                 " deny (until `pdp counters ack`) or wait (the longest window)")
    counter_history_s: int = _s(7 * 86400, "cooldown and velocity counters keep their pushes at"
                                " least this long (a new policy version that lengthens the"
                                " window sees them)")
    deadline_ms: int = _s(50, "decision budget; shorter if the caller's gRPC deadline is shorter")
    step_budget_ms: int = _s(1000, "one budget for a whole CheckPushBatch step, shared fairly by"
                             " its agents (shorter if the caller's gRPC deadline is shorter)")
    step_agent_max_ms: int = _s(20, "most one agent of a large step may take at once (other"
                                " calls wait at most this long for a step's slow policy);"
                                " in a step whose equal share per agent is larger, an agent"
                                " may take that share, up to deadline_ms")
    bulk_lane_bytes: int = _s(64 * 1024, "unary requests at least this long take turns, one at"
                              " a time, behind the small calls (a quarter of deadline_ms at"
                              " most); 0: no turns")
    shadow_budget_ms: int = _s(10, "budget of each draft (shadow) policy of a decision,"
                               " evaluated after the answer")
    shadow_backlog: int = _s(1024, "decisions whose drafts may wait for evaluation; beyond it"
                             " they are skipped, counted and noted in the audit")
    shadow_share: float = _s(0.1, "most of the event loop's time draft evaluation may take")
    unknown_tenants: Literal["deny", "builtins"] = _s(
        "deny", "a decision for a tenant with no policy that was never created: deny"
                " (UNKNOWN_TENANT), or decide it by the built-ins alone (single-tenant set-ups)")
    cel_cost_limit: int = _s(1_000_000, "runtime cost budget per CEL evaluation")
    cel_max_cost_estimate: int = _s(
        100_000_000, "policies whose static worst-case cost estimate exceeds this are rejected")
    cel_max_string_bytes: int = _s(
        4 * 1024 * 1024, "longest string (characters) or bytes a CEL expression may build; refused"
                         " before it is built (the largest config cannot carry a longer one)")
    cel_max_list_size: int = _s(
        100_000, "most elements of a list or map a CEL expression may build; refused before")
    cel_cache_size: int = _s(10_000, "compiled CEL programs kept (LRU)")
    config_cache_size: int = _s(1_024, "parsed configs kept by content hash (LRU)")
    config_cache_bytes: int = _s(64 * 1024 * 1024, "estimated bytes of parsed configs kept;"
                                 " the least recently used go first")
    config_cache_nodes: int = _s(250_000, "nodes of parsed configs kept (every full garbage"
                                 " collection traverses them: this bounds its pause)")
    config_max_nodes: int = _s(100_000, "most values in a config after alias expansion (real"
                               " collector configs have a few thousand)")
    max_batch_agents: int = _s(5_000, "most agents in one CheckPushBatch request")
    max_config_bytes: int = _s(4 * 1024 * 1024, "largest config document accepted")
    shutdown_grace_s: float = _s(5.0, "on SIGTERM, time allowed for calls in flight")
    log_level: Literal["debug", "info", "warning", "error"] = _s("info", "log level")
    log_format: Literal["json", "console"] = _s("json", "log line format")
    reflection: bool = _s(True, "serve gRPC server reflection")
    tls_cert_file: str | None = _s(None, "serve TLS on --listen with this certificate (PEM)")
    tls_key_file: str | None = _s(None, "private key of tls_cert_file (PEM)")
    tls_client_ca_file: str | None = _s(
        None, "require client certificates signed by this CA (mTLS; identity from the cert)")
    auth_tokens_file: str | None = _s(
        None, "YAML file of bearer tokens, stored as sha256 (tokens: [{sha256, identity, roles}])")
    auth_roles_file: str | None = _s(
        None, "YAML file mapping certificate identities to roles per tenant")
    auth_required: bool | None = _s(
        None, "refuse callers without credentials (default: on when a tokens/roles file is set)")
    auth_anonymous_roles: tuple[str, ...] = _s(
        ("*:checker",), "roles of callers without credentials when auth is not required,"
                        " as TENANT:ROLE ('*' = every tenant); '' = none: callers without"
                        " credentials are refused (UNAUTHENTICATED), decisions included")
    auth_unix_socket_roles: tuple[str, ...] = _s(
        (), "roles granted to callers on the unix socket, as TENANT:ROLE")
    workers: int = _s(1, "server processes sharing the port (SO_REUSEPORT)")
    telemetry_enabled: bool = _s(False, "OpenTelemetry spans and metrics (off: no cost)")
    otlp_endpoint: str | None = _s(None, "OTLP/gRPC collector for spans and metrics,"
                                         " e.g. http://127.0.0.1:4317")
    prometheus_port: int | None = _s(None, "also serve /metrics (the same as on http_listen) on"
                                           " this loopback port")
    http_listen: str = _s("127.0.0.1:50052", "HTTP HOST:PORT of /healthz, /readyz and /metrics"
                                             " (Kubernetes probes, Prometheus); '' = none")
    telemetry_policy_spans: bool = _s(True, "a child span per evaluated policy")
    telemetry_sample_ratio: float = _s(1.0, "share of decision traces sampled (0-1)")
    notify_smtp_host: str = _s("127.0.0.1", "SMTP server for email notifications")
    notify_smtp_port: int = _s(25, "SMTP port for email notifications")
    notify_smtp_from: str = _s("pdp@localhost", "sender of email notifications")
    notify_state: str | None = _s(
        None, "SQLite file keeping undelivered notifications and the day's email slots"
              " (default: notify.sqlite3 beside the audit file); with redis_url they are"
              " kept in Redis instead, shared by the fleet")
    notify_retry_for_s: float = _s(
        6 * 3600.0, "retry an undelivered notification this long, then give it up"
                    " (audited as Notification.GivenUp)")
    notify_backoff_initial_s: float = _s(1.0, "first wait before retrying a notification;"
                                              " doubles with each attempt")
    notify_backoff_max_s: float = _s(300.0, "longest wait between a notification's attempts")
    notify_attempt_timeout_s: float = _s(
        10.0, "most one attempt to deliver a notification may take (a receiver that accepts"
              " and never answers is given up on after this)")

    def validate(self) -> Settings:
        """Cross-field and range checks; raise SettingsError naming the setting."""
        if not self.listen and not self.unix_socket:
            raise SettingsError("listen: empty and no unix_socket set: nothing to listen on")
        if self.listen:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise SettingsError(f"listen: {self.listen!r} is not HOST:PORT")
        if self.http_listen:
            host, sep, port = self.http_listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
                raise SettingsError(f"http_listen: {self.http_listen!r} is not HOST:PORT")
        for name in ("deadline_ms", "cel_cost_limit", "cel_cache_size", "config_cache_size",
                     "config_cache_bytes", "config_cache_nodes", "config_max_nodes",
                     "step_budget_ms", "step_agent_max_ms", "shadow_budget_ms", "shadow_backlog",
                     "max_batch_agents", "max_config_bytes", "audit_queue_size",
                     "audit_sync_timeout_ms",
                     "audit_rotate_bytes", "redis_timeout_ms", "redis_pool_size", "workers",
                     "audit_seen_refresh_s", "audit_anchor_every_records",
                     "audit_anchor_every_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be > 0, got {getattr(self, name)}")
        if not 0 <= self.counter_history_s <= 366 * 86400:  # a year, as the longest window
            raise SettingsError(f"counter_history_s: must be 0 to {366 * 86400} (a year),"
                                f" got {self.counter_history_s}")
        if self.bulk_lane_bytes < 0:
            raise SettingsError(f"bulk_lane_bytes: must be >= 0, got {self.bulk_lane_bytes}")
        if self.counter_state_lost not in ("deny", "wait"):
            raise SettingsError(f"counter_state_lost: {self.counter_state_lost!r} must be deny"
                                " or wait")
        if not 0 < self.shadow_share <= 1:
            raise SettingsError(f"shadow_share: must be in (0, 1], got {self.shadow_share}")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise SettingsError(
                f"redis_url: {self.redis_url!r} must start with redis://, rediss:// or unix://")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise SettingsError("tls_cert_file: tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise SettingsError("tls_client_ca_file: needs tls_cert_file and tls_key_file")
        for name in ("auth_anonymous_roles", "auth_unix_socket_roles"):
            for entry in getattr(self, name):
                tenant, sep, role = entry.partition(":")
                if not sep or not tenant or role not in AUTH_ROLES:
                    raise SettingsError(f"{name}: {entry!r} is not TENANT:ROLE with ROLE one"
                                        f" of {', '.join(AUTH_ROLES)}")
        for name in ("cel_max_string_bytes", "cel_max_list_size"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be > 0, got {getattr(self, name)}")
        if not self.policy_store.startswith(("sqlite:", "redis://", "rediss://", "unix://")):
            raise SettingsError(f"policy_store: {self.policy_store!r} must be sqlite:PATH or a"
                                " redis:// URL")
        if self.audit_redis_stream and not self.redis_url:
            raise SettingsError("audit_redis_stream: needs redis_url")
        return self


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Settings)}
_HINTS = typing.get_type_hints(Settings)

# Environment variables of the client commands (pdp check / health / policy) and of the test
# suite (PDP_ALLOW_MISSING_CONFORMANCE, tests/cel/test_conformance.py, which the README has
# operators export): known, not server settings, so `pdp serve` tolerates them.
CLIENT_ENV = {"PDP_ADDRESS", "PDP_TIMEOUT", "PDP_CONFIG", "PDP_TENANT", "PDP_TOKEN",
              "PDP_CA_FILE", "PDP_CERT_FILE", "PDP_KEY_FILE", "PDP_ALLOW_MISSING_CONFORMANCE"}


def is_switch(name: str) -> bool:
    """A true/false setting (``bool`` or ``bool | None``): its flag works as a plain switch,
    ``--telemetry-enabled`` alone meaning true (a value is still accepted)."""
    hint = _HINTS[name]
    return hint is bool or (get_origin(hint) in (typing.Union, types.UnionType)
                            and set(get_args(hint)) == {bool, type(None)})


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _convert(name: str, raw: Any) -> Any:
    """Convert a raw value (YAML scalar or env string) to the field's declared type."""
    hint = _HINTS[name]
    args = get_args(hint)
    optional = get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        hint = next(a for a in args if a is not type(None))
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if raw not in choices:
            raise SettingsError(f"{name}: {raw!r} is not one of {', '.join(choices)}")
        return raw
    if origin is tuple:
        if isinstance(raw, str):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if isinstance(raw, list | tuple) and all(isinstance(x, str) for x in raw):
            return tuple(raw)
        raise SettingsError(f"{name}: expected a list of strings, got {raw!r}")
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}: expected true or false, got {raw!r}")
    if hint is int:
        if isinstance(raw, bool):
            raise SettingsError(f"{name}: expected an integer, got {raw!r}")
        try:
            return int(str(raw).replace("_", ""))
        except ValueError:
            raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if hint is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if hint is str:
        if not isinstance(raw, str | int | float) or isinstance(raw, bool):
            raise SettingsError(f"{name}: expected a string, got {raw!r}")
        return str(raw)
    raise SettingsError(f"{name}: unsupported setting type {hint}")  # pragma: no cover


def load_settings(
    *,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from file, environment and explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = config_file or env.get("PDP_CONFIG") or None
    if config_file:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise SettingsError(f"config: cannot read {config_file}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SettingsError(f"config: {config_file} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise SettingsError(f"config: {config_file} must hold a mapping of settings")
        for key, raw in data.items():
            if key not in FIELDS:
                raise SettingsError(f"{key}: unknown setting (in {config_file})")
            values[key] = _convert(key, raw)
    known_env = {env_name(n): n for n in FIELDS}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var in CLIENT_ENV:
            continue
        if var not in known_env:
            raise SettingsError(f"{var}: unknown setting (environment variable)")
        values[known_env[var]] = _convert(known_env[var], raw)
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in FIELDS:
            raise SettingsError(f"{key}: unknown setting")
        values[key] = _convert(key, raw)
    return Settings(**values).validate()


def describe() -> list[tuple[str, str, str, str]]:
    """(flag, env var, default, help) for every setting: the `pdp serve --help` table."""
    rows = []
    for name, f in FIELDS.items():
        default = f.default
        shown = "unset" if default is None else (",".join(default) or "none") if isinstance(
            default, list | tuple) else str(default)
        rows.append(("--" + name.replace("_", "-"), env_name(name), shown, f.metadata["help"]))
    return rows
