"""Built-in policies: on for every tenant unless that tenant relaxes them.

They are typed rules written in Python (not CEL) because they guard the common, costly
mistakes with exact messages that name the exporter at fault.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pdp.cel import CelError
from pdp.cel.domain import endpoint_host, is_localhost
from pdp.cel.explain import render
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import Checkpoint, Policy, Status
from pdp.policy.rules import Deny, StatelessRule

CONFIG_CHECKPOINTS = frozenset({Checkpoint.PUSH, Checkpoint.AUTO_APPLY, Checkpoint.DEVICE,
                                Checkpoint.ROLLOUT_PRECONDITION})


def _section(config: Any, name: str) -> Mapping[str, Any]:
    if isinstance(config, Mapping):
        found = config.get(name)
        if isinstance(found, Mapping):
            return found
    return {}


def _exporters(config: Any) -> Mapping[str, Any]:
    return _section(config, "exporters")


def _used_exporters(config: Any) -> Iterator[tuple[str, str]]:
    """(pipeline, exporter) for every exporter a pipeline of ``config`` sends through.

    Connectors (defined under ``connectors`` and not under ``exporters``) are left out: they
    pass data on to another pipeline, they are not where it leaves the collector."""
    if not isinstance(config, Mapping):
        return
    service = config.get("service")
    pipelines = service.get("pipelines") if isinstance(service, Mapping) else None
    if not isinstance(pipelines, Mapping):
        return
    connectors = {str(k) for k in _section(config, "connectors")}
    exporters = {str(k) for k in _exporters(config)}
    for pname, pipeline in pipelines.items():
        if isinstance(pipeline, Mapping) and isinstance(pipeline.get("exporters"), list):
            for e in pipeline["exporters"]:
                if str(e) in connectors and str(e) not in exporters:
                    continue
                yield str(pname), str(e)


def receiving_exporters(config: Any) -> set[str]:
    """Exporters that still get data under ``config``: defined, and named by a pipeline.

    Why both: dropping an exporter from every pipeline (or deleting its pipelines) stops its
    traffic exactly as deleting its definition does."""
    defined = {str(k) for k in _exporters(config)}
    return {e for _, e in _used_exporters(config) if e in defined}


def _active_exporters(ctx: EvalContext) -> list[str] | None:
    """``agent.active_exporters`` from the request, or None when the request does not say."""
    active = ctx.section("agent").get("active_exporters")
    if isinstance(active, list) and active:
        return [str(e) for e in active]
    return None


def removed_exporter(ctx: EvalContext) -> tuple[str, str, str, bool] | None:
    """The first exporter that carried traffic and gets none under the new config, as
    (exporter, pipeline of the running config or "", source, still defined), or None;
    shared by the built-in and its explanation so both name the same exporter."""
    previous = ctx.activation.get("previous_config")
    current = ctx.activation.get("config")
    if current is None:
        return None
    receiving = receiving_exporters(current)
    defined = {str(k) for k in _exporters(current)}
    pipelines: dict[str, str] = {}
    for pipeline, exporter in _used_exporters(previous):
        pipelines.setdefault(exporter, pipeline)
    active = _active_exporters(ctx)
    source = "agent.active_exporters" if active is not None else \
        "previous_config.service.pipelines"
    carrying = active if active is not None else list(pipelines)
    gone = [e for e in carrying if e not in receiving]
    if not gone:
        return None
    # A deleted exporter first: the plainer mistake, and the one a reader looks for.
    exporter = min(gone, key=lambda e: e in defined)
    return exporter, pipelines.get(exporter, ""), source, exporter in defined


@dataclass(frozen=True)
class ExporterRemoval(StatelessRule):
    """Deny removing an exporter that agents are currently sending data through.

    Which exporters carry traffic: the request's ``agent.active_exporters`` when present (it
    wins); otherwise every exporter the previous (running) config's pipelines send through.
    Removed = no pipeline of the new config sends through it any more: its definition is
    gone, or it is defined but left out of every pipeline (or its pipelines are deleted).
    """

    kind: ClassVar[str] = "builtin_exporter_removal"
    reads: ClassVar[frozenset[str]] = frozenset(
        {"config", "previous_config", "agent.active_exporters"})

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        found = removed_exporter(ctx)
        if found is None:
            return None
        exporter, pipeline, source, defined = found
        how = ("is left out of every pipeline of the new config (removed in effect)"
               if defined else "is removed")
        if source == "agent.active_exporters":
            where = f"pipeline {pipeline!r}" if pipeline else "a pipeline of the running config"
            why = f"the agent reports it carries traffic ({where})"
        else:
            why = f"pipeline {pipeline!r} of the running config still sends through it"
        return Deny("POLICY_DENIED", f"exporter {exporter!r} {how} but {why}; ask an admin"
                                     " for an override if this is intended")

    def explain(self, ctx: EvalContext) -> dict[str, str]:
        found = removed_exporter(ctx)
        if found is None:
            return {}
        exporter, pipeline, source, defined = found
        out = {"exporter": exporter, "source": source,
               "defined": render(defined),
               "receiving": render(sorted(receiving_exporters(ctx.activation.get("config"))))}
        if pipeline:
            out["pipeline"] = pipeline
        if source == "agent.active_exporters":
            out["agent.active_exporters"] = render(_active_exporters(ctx) or [])
        else:
            out["config.exporters"] = render(sorted(
                str(k) for k in _exporters(ctx.activation.get("config"))))
        return out


# ---------------------------------------------------------------- transport security

#: Keys naming where a component connects to: a URL or host[:port], or a list of them.
_TARGET_KEYS = frozenset({"endpoint", "endpoints", "url", "urls", "token_url", "brokers",
                          "hostname", "hostnames", "address", "addresses"})
#: Subtrees that hold data, not settings (an HTTP header may well be called "insecure").
_DATA_KEYS = frozenset({"headers"})
_PLAINTEXT_SCHEMES = frozenset({"http", "ws"})
_SCHEME_RE = re.compile(r"^\s*([a-zA-Z][a-zA-Z0-9+.-]*)://")
_TRUE_TEXT = frozenset({"true", "t", "1", "yes", "y", "on"})
_MAX_DEPTH = 8  # collector component configs nest a few levels; deeper is not a setting
#: What a setting does: (when its value is known, when only the collector's environment
#: knows it: ``${env:X}``, counted as off because pdp cannot tell).
_WHAT = {
    "insecure": ("disables TLS", "may disable TLS (set when the collector starts)"),
    "skip_verify": ("disables certificate verification",
                    "may disable certificate verification (set when the collector starts)"),
    "version": ("allows TLS below 1.2", "may allow TLS below 1.2 (set when the collector"
                                        " starts)"),
}


def _is_target_key(key: str) -> bool:
    return key in _TARGET_KEYS or key.endswith("_endpoint")


def _unresolved(value: Any) -> bool:
    """``${env:X}`` / ``${X}``: filled in when the collector starts, unknown to pdp."""
    return isinstance(value, str) and "${" in value


def _turned_on(value: Any) -> bool:
    """A flag the collector would read as true: YAML true, 1, "true"/"True"/"1" (the forms a
    weakly typed decode accepts), or a value only the collector's environment knows."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_TEXT or _unresolved(value)
    return False


def _old_tls_version(value: Any) -> bool:
    """TLS 1.0 / 1.1 (deprecated, RFC 8996), or a version pdp cannot read from here."""
    if _unresolved(value):
        return True
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    text = str(value).strip().lower().removeprefix("tls").removeprefix("v").strip()
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?", text)
    if not m:
        return False  # not a version at all: the collector refuses such a config
    return (int(m.group(1)), int(m.group(2) or 0)) < (1, 2)


def _is_local(target: Any) -> bool:
    """Loopback (localhost, *.localhost, 127.0.0.0/8, ::1, ::ffff:127.x) or a unix socket.

    Unspecified addresses (0.0.0.0, ::) are not local: as a destination they mean "this
    host" on some systems and nothing on others, so they cannot vouch for plain text."""
    if not isinstance(target, str) or _unresolved(target):
        return False
    try:
        if is_localhost(target):
            return True
        host = endpoint_host(target)
    except CelError:
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return mapped is not None and mapped.is_loopback


def _host(target: str) -> str:
    try:
        return endpoint_host(target) or "(no endpoint)"
    except CelError:
        return target


@dataclass(frozen=True)
class InsecureTransport:
    """One way a component turns off transport security towards a host that is not local."""

    section: str   # exporter | extension
    name: str      # the component's name, e.g. otlp/backend
    setting: str   # dotted path inside the component, e.g. tls.insecure_skip_verify
    value: str     # as written
    what: str      # disables TLS | disables certificate verification | ...
    endpoint: str  # the non-local target ("" when the component names none)

    @property
    def host(self) -> str:
        return _host(self.endpoint) if self.endpoint else "(no endpoint)"


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _walk(node: Mapping[str, Any], path: tuple[str, ...], depth: int
          ) -> Iterator[tuple[tuple[str, ...], Mapping[str, Any]]]:
    """Every mapping of a component's config with its path (data subtrees left out)."""
    yield path, node
    if depth >= _MAX_DEPTH:
        return
    for key, value in node.items():
        if str(key) in _DATA_KEYS:
            continue
        if isinstance(value, Mapping):
            yield from _walk(value, (*path, str(key)), depth + 1)
        elif isinstance(value, list):
            for i, item in enumerate(value[:64]):
                if isinstance(item, Mapping):
                    yield from _walk(item, (*path, str(key), str(i)), depth + 1)


def _targets(node: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, target) for the connection targets a mapping names itself."""
    out: list[tuple[str, str]] = []
    for key, value in node.items():
        if not _is_target_key(str(key)):
            continue
        values = value[:64] if isinstance(value, list) else [value]
        out.extend((str(key), v if isinstance(v, str) else str(v)) for v in values
                   if v is not None and v != "")
    return out


def _component_findings(section: str, name: str, conf: Mapping[str, Any]
                        ) -> Iterator[InsecureTransport]:
    nodes = list(_walk(conf, (), 0))
    by_path = {path: node for path, node in nodes}
    everywhere = [t for _, node in nodes for _, t in _targets(node)]

    def remote_target(path: tuple[str, ...]) -> str | None:
        """The first non-local target a setting at ``path`` applies to ("" = none named),
        or None when every one is local. Nearest enclosing mapping that names targets wins;
        none on the way up: any target of the component."""
        targets: list[str] = []
        for i in range(len(path), -1, -1):
            node = by_path.get(path[:i])
            if node is not None:
                targets = [t for _, t in _targets(node)]
                if targets:
                    break
        targets = targets or everywhere
        if not targets:
            return ""
        return next((t for t in targets if not _is_local(t)), None)

    for path, node in nodes:
        prefix = ".".join(path)
        for key, value in node.items():
            key = str(key)
            setting = f"{prefix}.{key}" if prefix else key
            kind = None
            if key == "insecure" and _turned_on(value):
                kind = "insecure"
            elif key == "insecure_skip_verify" and _turned_on(value):
                kind = "skip_verify"
            elif key in ("min_version", "max_version") and _old_tls_version(value):
                kind = "version"
            if kind is not None:
                target = remote_target(path)
                if target is not None:
                    what = _WHAT[kind][1 if _unresolved(value) else 0]
                    yield InsecureTransport(section, name, setting, _render(value), what,
                                            target)
        for key, target in _targets(node):
            m = _SCHEME_RE.match(target)
            if m and m.group(1).lower() in _PLAINTEXT_SCHEMES and not _is_local(target):
                setting = f"{prefix}.{key}" if prefix else key
                yield InsecureTransport(section, name, setting, target,
                                        "sends in plain text", target)


def insecure_transports(config: Any) -> Iterator[InsecureTransport]:
    """Every way ``config`` turns off transport security towards a non-local host.

    Read: each exporter (where data leaves the collector) and extension (auth clients,
    remote sampling, ...), at any depth (``tls`` nested under ``client``, ``protocol.otlp``,
    the legacy top-level ``insecure``): ``insecure`` or ``insecure_skip_verify`` true in any
    spelling, ``min_version`` / ``max_version`` below TLS 1.2, and an ``http://`` / ``ws://``
    endpoint (plain text). A setting applies to the targets named beside it or above it.
    A component that names no target at all counts as remote. Receivers are not read: their
    endpoints are where the collector listens."""
    for section, kind in (("exporters", "exporter"), ("extensions", "extension")):
        for name, conf in _section(config, section).items():
            if isinstance(conf, Mapping):
                yield from _component_findings(kind, str(name), conf)


def insecure_remote_exporter(config: Any) -> InsecureTransport | None:
    """The first insecure transport of ``config``, or None; shared by the built-in and its
    explanation."""
    return next(insecure_transports(config), None)


@dataclass(frozen=True)
class TlsInsecureRemote(StatelessRule):
    """Deny turning off transport security (TLS, certificate checks, TLS >= 1.2) on a
    component whose endpoint is not this host."""

    kind: ClassVar[str] = "builtin_tls_insecure"
    reads: ClassVar[frozenset[str]] = frozenset({"config"})

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        found = insecure_remote_exporter(ctx.activation.get("config"))
        if found is None:
            return None
        return Deny("POLICY_DENIED",
                    f"{found.section} {found.name!r} {found.what} ({found.setting}:"
                    f" {found.value}) towards {found.host}; transport security may be turned"
                    " off only towards localhost endpoints")

    def explain(self, ctx: EvalContext) -> dict[str, str]:
        found = insecure_remote_exporter(ctx.activation.get("config"))
        if found is None:
            return {}
        out = {found.section: found.name, "endpoint": found.endpoint, "host": found.host,
               found.setting: found.value, "localhost": "false"}
        return out


def builtin_policies() -> list[Policy]:
    """The built-ins, tenant "" = every tenant. Version 2: the spellings and the
    left-out-of-every-pipeline removal of issue 18 (a new content hash in the audit)."""
    return [
        Policy(tenant="", name="default-deny-exporter-removal", rule=ExporterRemoval(),
               description="Removing an exporter that running pipelines still use (deleting"
                           " it, or leaving it out of every pipeline) needs an override.",
               checkpoints=CONFIG_CHECKPOINTS, builtin=True, status=Status.ACTIVE, version=2,
               spec={"builtin": "default-deny-exporter-removal", "version": 2}),
        Policy(tenant="", name="default-deny-tls-insecure-on-non-localhost",
               rule=TlsInsecureRemote(),
               description="Transport security (TLS, certificate verification, TLS 1.2+) may"
                           " be turned off only towards localhost.",
               checkpoints=CONFIG_CHECKPOINTS, builtin=True, status=Status.ACTIVE, version=2,
               spec={"builtin": "default-deny-tls-insecure-on-non-localhost", "version": 2}),
    ]


BUILTIN_NAMES = frozenset(p.name for p in builtin_policies())
