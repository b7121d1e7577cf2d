"""Endpoint strings as collector configs write them: ``host:port``, URLs, unix sockets."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def endpoint_host(endpoint: str) -> str:
    """The host part of ``host:port``, ``scheme://host:port/path`` or ``[v6]:port``."""
    text = endpoint.strip()
    if text.startswith(("unix:", "/")):
        return ""
    if "://" in text:
        return (urlsplit(text).hostname or "").lower()
    if text.startswith("["):
        return text[1:text.find("]")].lower() if "]" in text else text.lower()
    if text.count(":") > 1:  # bare IPv6 without a port
        return text.lower()
    return text.rsplit(":", 1)[0].lower() if ":" in text else text.lower()


def is_localhost(endpoint: str) -> bool:
    """True for loopback names and addresses and for unix sockets (never leave the host)."""
    text = endpoint.strip()
    if text.startswith(("unix:", "/")):
        return True
    host = endpoint_host(text)
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
