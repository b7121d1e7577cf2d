"""pdp's domain helpers, exposed as CEL functions.

* ``e.endpointHost()`` / ``e.endpointPort()``: host and port of an exporter endpoint, either
  ``host:port`` (``[v6]:port`` too) or a URL (``https://h:443/path``, default ports 80/443).
* ``isLocalhost(x)`` / ``x.isLocalhost()``: loopback names and addresses (localhost,
  127.0.0.0/8, ::1) and unix sockets, given a host or an endpoint.
* ``v.versionAtLeast(min)`` / ``compareVersions(a, b)``: dotted numeric versions, missing
  components count as 0, an optional leading ``v``; a pre-release (``1.2.0-rc1``) sorts
  before its release.
* ``quantity("4GB")``: byte quantities, KB/MB/GB/TB/PB = 1000-based, KiB/MiB/GiB/TiB/PiB
  (and Ki/Mi/Gi/Ti) = 1024-based; plain numbers are bytes.
* ``ip.inCidr("10.0.0.0/8")``: CIDR membership for IPv4 and IPv6.

All of them raise CEL errors (never Python exceptions) on malformed input.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

from .errors import CelEvalError
from .functions import Registry
from .stdlib import check_int, no_overload, short_repr

_DEFAULT_PORTS = {"http": 80, "https": 443, "grpc": 0, "grpcs": 0}
_URL_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://([^/?#]*)")


_CACHE_MAX_LEN = 256  # endpoints repeat across decisions: parse short ones once
#: The longest text each helper reads (an endpoint may be a long URL; a version, quantity,
#: address or CIDR is short): one call's time and the caches' memory stay bounded, and an
#: error names at most the start of the value.
MAX_ENDPOINT = 8192
MAX_SHORT_TEXT = 256


def _text(v: Any, fn: str, most: int, *others: Any) -> str:
    """``v`` checked as the string argument of ``fn``, at most ``most`` characters."""
    if type(v) is not str:
        raise no_overload(fn, v, *others)
    if len(v) > most:
        raise CelEvalError(f"{fn}: {short_repr(v)} is longer than the {most} characters it reads")
    return v


def _split_endpoint(ep: Any, fn: str) -> tuple[str, int | None, str]:
    """(host, port or None, scheme) of an endpoint string; unix sockets give host = path."""
    _text(ep, fn, MAX_ENDPOINT)
    if len(ep) <= _CACHE_MAX_LEN:
        return _split_cached(ep)
    return _split(ep)


@functools.lru_cache(maxsize=4096)
def _split_cached(ep: str) -> tuple[str, int | None, str]:
    return _split(ep)


def _split(ep: str) -> tuple[str, int | None, str]:
    s = ep.strip()
    scheme = ""
    m = _URL_RE.match(s)
    if m:
        scheme = m.group(1).lower()
        if scheme == "unix":
            return s[len(m.group(0)) - len(m.group(2)):], None, scheme
        s = m.group(2)
        if "@" in s:
            s = s.rsplit("@", 1)[1]
    elif s.startswith("unix:"):
        return s[5:], None, "unix"
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise CelEvalError(f"invalid endpoint {short_repr(ep)}")
        host = s[1:end]
        rest = s[end + 1:]
        if rest and not rest.startswith(":"):
            raise CelEvalError(f"invalid endpoint {short_repr(ep)}")
        port_text = rest[1:] if rest else ""
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    elif s.count(":") > 1:  # bare IPv6 address without port
        host, port_text = s, ""
    else:
        host, port_text = s, ""
    port = None
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65535:
            raise CelEvalError(f"invalid port in endpoint {short_repr(ep)}")
        port = int(port_text)
    return host.lower(), port, scheme


def endpoint_host(ep: Any) -> str:
    """Host part of an endpoint (``otel.example.com:4317`` -> ``otel.example.com``)."""
    return _split_endpoint(ep, "endpointHost")[0]


def endpoint_port(ep: Any) -> int:
    """Port of an endpoint; a URL without a port gets its scheme's default (http 80,
    https 443); otherwise 0 when no port is given."""
    _host, port, scheme = _split_endpoint(ep, "endpointPort")
    if port is not None:
        return port
    return _DEFAULT_PORTS.get(scheme, 0)


def is_localhost(x: Any) -> bool:
    """True for loopback hosts (localhost, *.localhost, 127.0.0.0/8, ::1) and unix sockets,
    given either a bare host or an endpoint."""
    _text(x, "isLocalhost", MAX_ENDPOINT)
    if len(x) <= _CACHE_MAX_LEN:
        return _is_localhost_cached(x)
    return _is_localhost(x)


@functools.lru_cache(maxsize=4096)
def _is_localhost_cached(x: str) -> bool:
    return _is_localhost(x)


def _is_localhost(x: str) -> bool:
    s = x.strip()
    if not s:
        return False
    if s.startswith("unix:") or s.startswith("/"):
        return True
    try:
        host, _, scheme = _split_endpoint(s, "isLocalhost")
    except CelEvalError:
        return False
    if scheme == "unix":
        return True
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_VERSION_RE = re.compile(r"^[vV]?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?\Z")


@functools.lru_cache(maxsize=4096)
def _parse_version(v: str) -> tuple[tuple[int, ...], tuple[str, ...] | None]:
    m = _VERSION_RE.match(v.strip())
    if not m:
        raise CelEvalError(f"invalid version {short_repr(v)}")
    core = tuple(int(p) for p in m.group(1).split("."))
    pre = tuple(m.group(2).split(".")) if m.group(2) else None
    return core, pre


def _cmp_pre(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> int:
    if a == b:
        return 0
    if a is None:
        return 1
    if b is None:
        return -1
    for x, y in zip(a, b, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1
        return -1 if x < y else 1
    return -1 if len(a) < len(b) else (1 if len(a) > len(b) else 0)


def compare_versions(a: Any, b: Any) -> int:
    """-1, 0 or 1 comparing two versions (missing components are 0: "16" == "16.0.0")."""
    if type(a) is not str or type(b) is not str:
        raise no_overload("compareVersions", a, b)
    _text(a, "compareVersions", MAX_SHORT_TEXT)
    _text(b, "compareVersions", MAX_SHORT_TEXT)
    (ca, pa), (cb, pb) = _parse_version(a), _parse_version(b)
    n = max(len(ca), len(cb))
    ca, cb = ca + (0,) * (n - len(ca)), cb + (0,) * (n - len(cb))
    if ca != cb:
        return -1 if ca < cb else 1
    return _cmp_pre(pa, pb)


def version_at_least(v: Any, minimum: Any) -> bool:
    """``"16.4.1".versionAtLeast("16")``: v >= minimum."""
    if type(v) is not str or type(minimum) is not str:
        raise no_overload("versionAtLeast", v, minimum)
    return compare_versions(v, minimum) >= 0


_QTY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4, "p": 1000**5, "pb": 1000**5,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4, "pi": 1024**5, "pib": 1024**5,
}


def quantity(q: Any) -> int:
    """``quantity("4GB")`` -> 4000000000; ``quantity("1.5GiB")`` -> 1610612736."""
    if type(q) is int:
        return q
    _text(q, "quantity", MAX_SHORT_TEXT)
    m = _QTY_RE.match(q)
    if not m or m.group(2).lower() not in _UNITS:
        raise CelEvalError(f"invalid quantity {short_repr(q)}")
    whole, _, frac = m.group(1).partition(".")
    mult = _UNITS[m.group(2).lower()]
    value = int(whole) * mult + (int(frac) * mult // 10 ** len(frac) if frac else 0)
    return check_int(value)


@functools.lru_cache(maxsize=1024)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise CelEvalError(f"invalid CIDR {short_repr(cidr)}") from None


def in_cidr(ip: Any, cidr: Any) -> bool:
    """``"10.1.2.3".inCidr("10.0.0.0/8")``; addresses of the other IP version never match."""
    if type(ip) is not str or type(cidr) is not str:
        raise no_overload("inCidr", ip, cidr)
    _text(ip, "inCidr", MAX_SHORT_TEXT)
    _text(cidr, "inCidr", MAX_SHORT_TEXT)
    try:
        addr = ipaddress.ip_address(ip.strip().strip("[]"))
    except ValueError:
        raise CelEvalError(f"invalid IP address {short_repr(ip)}") from None
    net = _network(cidr.strip())
    if addr.version != net.version:
        return False
    return addr in net


def register_domain(r: Registry) -> None:
    r.add("endpointHost", "string.()->string; string->string", endpoint_host, cost=1)
    r.add("endpointPort", "string.()->int; string->int", endpoint_port, cost=1)
    r.add("isLocalhost", "string.()->bool; string->bool", is_localhost, cost=1)
    r.add("versionAtLeast", "string.(string)->bool", version_at_least, cost=1)
    r.add("compareVersions", "string,string->int", compare_versions, cost=1)
    r.add("quantity", "string->int; int->int", quantity, cost=1)
    r.add("inCidr", "string.(string)->bool", in_cidr, cost=1)
