"""Built-in policies: on for every tenant unless that tenant relaxes them.

They are typed rules written in Python (not CEL) because they guard the common, costly
mistakes with exact messages that name the exporter at fault.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pdp.cel.domain import endpoint_host, is_localhost
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import Checkpoint, Policy, Status
from pdp.policy.rules import Deny, StatelessRule

CONFIG_CHECKPOINTS = frozenset({Checkpoint.PUSH, Checkpoint.AUTO_APPLY, Checkpoint.DEVICE,
                                Checkpoint.ROLLOUT_PRECONDITION})


def _exporters(config: Any) -> Mapping[str, Any]:
    if isinstance(config, Mapping):
        exporters = config.get("exporters")
        if isinstance(exporters, Mapping):
            return exporters
    return {}


def _used_exporters(config: Any) -> Iterator[tuple[str, str]]:
    """(pipeline, exporter) for every exporter a pipeline of ``config`` sends through."""
    if not isinstance(config, Mapping):
        return
    service = config.get("service")
    pipelines = service.get("pipelines") if isinstance(service, Mapping) else None
    if not isinstance(pipelines, Mapping):
        return
    for pname, pipeline in pipelines.items():
        if isinstance(pipeline, Mapping) and isinstance(pipeline.get("exporters"), list):
            for e in pipeline["exporters"]:
                yield str(pname), str(e)


def _active_exporters(ctx: EvalContext) -> list[str] | None:
    """``agent.active_exporters`` from the request, or None when the request does not say."""
    active = ctx.section("agent").get("active_exporters")
    if isinstance(active, list) and active:
        return [str(e) for e in active]
    return None


@dataclass(frozen=True)
class ExporterRemoval(StatelessRule):
    """Deny removing an exporter that agents are currently sending data through.

    Which exporters carry traffic: the request's ``agent.active_exporters`` when present (it
    wins); otherwise every exporter the previous (running) config's pipelines send through.
    Removed = no longer defined under the new config's ``exporters``.
    """

    kind: ClassVar[str] = "builtin_exporter_removal"

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        previous = ctx.activation.get("previous_config")
        current = ctx.activation.get("config")
        if current is None:
            return None
        remaining = _exporters(current)
        active = _active_exporters(ctx)
        if active is not None:
            pipelines: dict[str, str] = {}
            for pipeline, exporter in _used_exporters(previous):
                pipelines.setdefault(exporter, pipeline)
            for exporter in active:
                if exporter not in remaining:
                    where = (f"pipeline {pipelines[exporter]!r}" if exporter in pipelines
                             else "a pipeline of the running config")
                    return Deny("POLICY_DENIED",
                                f"exporter {exporter!r} is removed but the agent reports it"
                                f" carries traffic ({where}); ask an admin for an override if"
                                " this is intended")
            return None
        if previous is None:
            return None
        for pipeline, exporter in _used_exporters(previous):
            if exporter not in remaining:
                return Deny("POLICY_DENIED",
                            f"exporter {exporter!r} is removed but pipeline {pipeline!r} of the"
                            " running config still sends through it; ask an admin for an"
                            " override if this is intended")
        return None


def insecure_remote_exporter(config: Any) -> tuple[str, str] | None:
    """(name, endpoint) of the first exporter with ``tls.insecure: true`` whose endpoint is
    not this host, or None; shared by the built-in and its explanation."""
    for name, exporter in _exporters(config).items():
        if not isinstance(exporter, Mapping):
            continue
        tls = exporter.get("tls")
        if not (isinstance(tls, Mapping) and tls.get("insecure") is True):
            continue
        endpoint = str(exporter.get("endpoint", ""))
        if not endpoint or not is_localhost(endpoint):
            return str(name), endpoint
    return None


@dataclass(frozen=True)
class TlsInsecureRemote(StatelessRule):
    """Deny ``tls.insecure: true`` on an exporter whose endpoint is not this host."""

    kind: ClassVar[str] = "builtin_tls_insecure"

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        found = insecure_remote_exporter(ctx.activation.get("config"))
        if found is None:
            return None
        name, endpoint = found
        host = endpoint_host(endpoint) or "(no endpoint)"
        return Deny("POLICY_DENIED",
                    f"exporter {name!r} disables TLS (tls.insecure: true) towards"
                    f" {host}; insecure TLS is allowed only for localhost endpoints")


def builtin_policies() -> list[Policy]:
    """The built-ins, tenant "" = every tenant."""
    return [
        Policy(tenant="", name="default-deny-exporter-removal", rule=ExporterRemoval(),
               description="Removing an exporter that running pipelines still use needs an"
                           " override.",
               checkpoints=CONFIG_CHECKPOINTS, builtin=True, status=Status.ACTIVE,
               spec={"builtin": "default-deny-exporter-removal", "version": 1}),
        Policy(tenant="", name="default-deny-tls-insecure-on-non-localhost",
               rule=TlsInsecureRemote(),
               description="tls.insecure is allowed only towards localhost.",
               checkpoints=CONFIG_CHECKPOINTS, builtin=True, status=Status.ACTIVE,
               spec={"builtin": "default-deny-tls-insecure-on-non-localhost", "version": 1}),
    ]


BUILTIN_NAMES = frozenset(p.name for p in builtin_policies())
