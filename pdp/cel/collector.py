"""A typed view of an OpenTelemetry Collector configuration: the ``collector`` variable.

Why: the raw ``config`` is whatever YAML the author pushed, so a policy over it guards every
level (is it a map, is the section there, is the entry a map) before it can ask its question.
The view answers those once, in Python, when the request's context is built: every section
is present (empty when the config has none, or is not a collector config at all), every
component has its name, its type (the part of the name before ``/``), its settings and the
facts policies ask about (endpoint host and port, TLS off or unverified, the pipelines it is
in). The declared type (COLLECTOR) lets the checker reject a misspelt field at admission.
The raw map stays available as ``config``.
"""

from __future__ import annotations

from typing import Any

from . import types as TY
from .domain import endpoint_host, endpoint_port, is_localhost
from .errors import CelError

_S, _I, _B = TY.STRING, TY.INT, TY.BOOL
_NAMES = TY.list_of(_S)

COMPONENT = TY.object_of(
    "component", name=_S, type=_S, settings=TY.map_of(_S, TY.DYN),
    endpoint=_S, host=_S, port=_I, local=_B, tls_disabled=_B, tls_unverified=_B,
    pipelines=_NAMES)
PIPELINE = TY.object_of(
    "pipeline", name=_S, type=_S, receivers=_NAMES, processors=_NAMES, exporters=_NAMES,
    receiver_types=_NAMES, processor_types=_NAMES, exporter_types=_NAMES)
SERVICE = TY.object_of("service", pipelines=TY.map_of(_S, PIPELINE), extensions=_NAMES)
_COMPONENTS = TY.map_of(_S, COMPONENT)
SECTIONS = ("receivers", "processors", "exporters", "extensions", "connectors")
COLLECTOR = TY.object_of("collector", service=SERVICE, **dict.fromkeys(SECTIONS, _COMPONENTS))

_ROLES = ("receivers", "processors", "exporters")


def collector_view(config: Any) -> dict[str, Any]:
    """The view of ``config`` (any value: a config that is not a mapping, or a section that
    is not one, gives empty sections). Shares the settings mappings with ``config``."""
    cfg = config if type(config) is dict else {}
    service = cfg.get("service")
    service = service if type(service) is dict else {}
    raw_pipelines = service.get("pipelines")
    raw_pipelines = raw_pipelines if type(raw_pipelines) is dict else {}
    pipelines: dict[str, Any] = {}
    member_of: dict[tuple[str, str], list[str]] = {}
    for pname, p in raw_pipelines.items():
        name = str(pname)
        p = p if type(p) is dict else {}
        view: dict[str, Any] = {"name": name, "type": _type_of(name)}
        for role in _ROLES:
            names = _names(p.get(role))
            view[role] = names
            view[role[:-1] + "_types"] = [_type_of(n) for n in names]
            for n in names:
                member_of.setdefault((role, n), []).append(name)
                if role != "processors":  # connectors: exporter of one, receiver of another
                    member_of.setdefault(("connectors", n), []).append(name)
        pipelines[name] = view
    out: dict[str, Any] = {
        "service": {"pipelines": pipelines, "extensions": _names(service.get("extensions"))}}
    for section in SECTIONS:
        raw = cfg.get(section)
        comps: dict[str, Any] = {}
        if type(raw) is dict:
            for cname, settings in raw.items():
                name = str(cname)
                in_pipes = member_of.get((section, name), [])
                comps[name] = _component(name, settings, sorted(set(in_pipes)))
        out[section] = comps
    return out


def _component(name: str, settings: Any, pipelines: list[str]) -> dict[str, Any]:
    settings = settings if type(settings) is dict else {}
    endpoint = settings.get("endpoint")
    endpoint = endpoint if type(endpoint) is str else ""
    host, port, local = "", 0, False
    if endpoint:
        try:
            host, port, local = endpoint_host(endpoint), endpoint_port(endpoint), \
                is_localhost(endpoint)
        except CelError:
            host, port, local = "", 0, False
    tls = settings.get("tls")
    tls = tls if type(tls) is dict else {}
    return {
        "name": name, "type": _type_of(name), "settings": settings,
        "endpoint": endpoint, "host": host, "port": port, "local": local,
        "tls_disabled": tls.get("insecure") is True or endpoint.lower().startswith("http://"),
        "tls_unverified": tls.get("insecure_skip_verify") is True,
        "pipelines": pipelines,
    }


def _type_of(name: str) -> str:
    return name.split("/", 1)[0]


def _names(v: Any) -> list[str]:
    """A pipeline's component list as strings (a junk entry or a non-list gives nothing)."""
    if type(v) is not list:
        return []
    return [x for x in v if type(x) is str]
