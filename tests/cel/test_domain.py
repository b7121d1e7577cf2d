"""pdp's domain helpers as CEL functions."""

from __future__ import annotations

from typing import Any

import pytest

from pdp.cel import CelEvalError, pdp_environment


def ev(src: str, **act: Any) -> Any:
    return pdp_environment().compile(src).evaluate(act)


@pytest.mark.parametrize(("endpoint", "host", "port"), [
    ("otel.example.com:4317", "otel.example.com", 4317),
    ("https://h.example.com:443/path", "h.example.com", 443),
    ("https://h.example.com/v1/traces", "h.example.com", 443),
    ("http://h", "h", 80),
    ("[::1]:4317", "::1", 4317),
    ("collector", "collector", 0),
    ("grpc://user@Collector.Example.com:55680", "collector.example.com", 55680),
])
def test_endpoint_host_and_port(endpoint: str, host: str, port: int) -> None:
    assert ev("config.e.endpointHost()", config={"e": endpoint}) == host
    assert ev("config.e.endpointPort()", config={"e": endpoint}) == port
    assert ev("endpointHost(config.e)", config={"e": endpoint}) == host


def test_endpoint_bad_port_is_cel_error() -> None:
    with pytest.raises(CelEvalError):
        ev("config.e.endpointPort()", config={"e": "h:99999"})


@pytest.mark.parametrize(("value", "local"), [
    ("localhost", True), ("LOCALHOST:4317", True), ("127.0.0.1", True),
    ("127.8.9.10:55680", True), ("::1", True), ("[::1]:4317", True),
    ("http://localhost:8080/x", True), ("unix:///var/run/otel.sock", True),
    ("/var/run/otel.sock", True), ("api.localhost", True),
    ("10.0.0.1:4317", False), ("otel.example.com:4317", False), ("", False),
    ("https://127.0.0.1.example.com", False),
])
def test_is_localhost(value: str, local: bool) -> None:
    assert ev("isLocalhost(config.v)", config={"v": value}) is local
    assert ev("config.v.isLocalhost()", config={"v": value}) is local


@pytest.mark.parametrize(("a", "b", "want"), [
    ("16.4.1", "16", 1), ("16", "16.0.0", 0), ("1.2.3", "1.10.0", -1), ("v2.0", "2.0.0", 0),
    ("1.2.0-rc1", "1.2.0", -1), ("1.2.0-rc.2", "1.2.0-rc.10", -1), ("10.0", "9.99.99", 1),
])
def test_compare_versions(a: str, b: str, want: int) -> None:
    assert ev("compareVersions(config.a, config.b)", config={"a": a, "b": b}) == want


def test_version_at_least() -> None:
    assert ev('agent.version.versionAtLeast("16")', agent={"version": "16.4.1"}) is True
    assert ev('agent.version.versionAtLeast("16.5")', agent={"version": "16.4.1"}) is False
    with pytest.raises(CelEvalError):
        ev('agent.version.versionAtLeast("x.y")', agent={"version": "16.4.1"})


@pytest.mark.parametrize(("q", "n"), [
    ("4GB", 4_000_000_000), ("4GiB", 4 * 1024**3), ("512MiB", 512 * 1024**2),
    ("1.5KB", 1500), ("100", 100), ("2Ki", 2048), ("1TB", 10**12), ("3 mb", 3_000_000),
])
def test_quantity(q: str, n: int) -> None:
    assert ev("quantity(config.q)", config={"q": q}) == n


def test_quantity_in_policy_and_errors() -> None:
    assert ev('device.memory_bytes >= quantity("4GB")', device={"memory_bytes": 8 * 10**9})
    with pytest.raises(CelEvalError):
        ev('quantity("4 parsecs")')


@pytest.mark.parametrize(("ip", "cidr", "want"), [
    ("10.1.2.3", "10.0.0.0/8", True), ("11.1.2.3", "10.0.0.0/8", False),
    ("2001:db8::1", "2001:db8::/32", True), ("2001:db9::1", "2001:db8::/32", False),
    ("10.1.2.3", "2001:db8::/32", False), ("192.168.1.7", "192.168.1.0/24", True),
])
def test_in_cidr(ip: str, cidr: str, want: bool) -> None:
    assert ev("config.ip.inCidr(config.c)", config={"ip": ip, "c": cidr}) is want


def test_in_cidr_invalid() -> None:
    with pytest.raises(CelEvalError):
        ev('"10.1.2.3".inCidr("10.0.0.0/33")')
    with pytest.raises(CelEvalError):
        ev('"not-an-ip".inCidr("10.0.0.0/8")')


def test_helpers_are_type_checked() -> None:
    from pdp.cel import CelCompileError

    with pytest.raises(CelCompileError):
        pdp_environment().compile("quantity(1.5)")
    with pytest.raises(CelCompileError):
        pdp_environment().compile('"x".inCidr(3)')
