"""TLS server credentials for the gRPC listener.

Modes:

* ``client_auth="require"`` (mTLS): the client must present a certificate signed by one of the
  client CAs; its identity (SAN URI / DNS, else CN) then maps to roles through the roles file.
* ``client_auth="none"``: server-side TLS only; callers authenticate with bearer tokens.
  Note that gRPC's ``ssl_server_credentials`` does not *request* a client certificate unless
  it is required, so there is no "optional mTLS": a certificate identity needs ``require``.

Files are read once, at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

ClientAuth = Literal["require", "none"]


class TLSConfigError(ValueError):
    """A certificate, key or CA file is missing or unreadable; the message names it."""


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TLSConfigError(f"{what} {path}: not a PEM file")
    return data


@dataclass(frozen=True)
class TLSFiles:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth: ClientAuth = "require"


def server_credentials(cert_file: str, key_file: str, client_ca_file: str | None = None,
                       client_auth: ClientAuth | bool = "require") -> grpc.ServerCredentials:
    """``grpc.ssl_server_credentials`` from PEM files.

    ``client_auth`` ``"require"`` (or ``True``) needs ``client_ca_file`` and refuses clients
    without a valid certificate at the handshake; ``"none"`` (or ``False``) is server TLS only.
    """
    if isinstance(client_auth, bool):
        client_auth = "require" if client_auth else "none"
    if client_auth not in ("require", "none"):
        raise TLSConfigError(f"client_auth: {client_auth!r} must be 'require' or 'none'")
    cert = _read(cert_file, "tls cert_file")
    key = _read(key_file, "tls key_file")
    if client_auth == "require":
        if not client_ca_file:
            raise TLSConfigError("tls: client_auth 'require' needs client_ca_file (the CA"
                                 " that signs client certificates)")
        ca = _read(client_ca_file, "tls client_ca_file")
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                           require_client_auth=True)
    ca_opt = _read(client_ca_file, "tls client_ca_file") if client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca_opt,
                                       require_client_auth=False)


def credentials_from(files: TLSFiles) -> grpc.ServerCredentials:
    return server_credentials(files.cert_file, files.key_file, files.client_ca_file,
                              files.client_auth)


def channel_credentials(ca_file: str, cert_file: str | None = None,
                        key_file: str | None = None) -> grpc.ChannelCredentials:
    """Client side (pdp client, tests): trust ``ca_file``; present a certificate if given."""
    ca = _read(ca_file, "tls ca_file")
    if (cert_file is None) != (key_file is None):
        raise TLSConfigError("tls: give both cert_file and key_file, or neither")
    cert = _read(cert_file, "tls cert_file") if cert_file else None
    key = _read(key_file, "tls key_file") if key_file else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)
