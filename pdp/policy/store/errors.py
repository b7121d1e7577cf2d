"""Policy-store errors, one class per gRPC status the admin API answers with.

``PolicyError`` (invalid content: YAML, schema, a CEL compile error with line:column, a tenant
mismatch, a bad name or actor) is re-exported from :mod:`pdp.policy.model`; it is a
``ValueError`` and maps to ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

from pdp.policy.model import PolicyError


class StoreError(Exception):
    """Base class of every store error except ``PolicyError``."""

    grpc_status = "INTERNAL"


class PolicyNotFound(StoreError, LookupError):
    """No such policy (or no such version of it) in the tenant. -> ``NOT_FOUND``"""

    grpc_status = "NOT_FOUND"


class UnknownTenant(PolicyNotFound):
    """The store was given a fixed tenant list and this tenant is not on it. -> ``NOT_FOUND``"""

    grpc_status = "NOT_FOUND"


class TenantExists(StoreError):
    """CreateTenant of a tenant the store knows already. -> ``ALREADY_EXISTS``"""

    grpc_status = "ALREADY_EXISTS"


class StaleVersion(StoreError):
    """Optimistic concurrency: the caller edited an older version. -> ``ABORTED``"""

    grpc_status = "ABORTED"

    def __init__(self, tenant: str, name: str, expected: int, actual: int) -> None:
        self.tenant = tenant
        self.name = name
        self.expected = expected
        self.actual = actual
        if actual == 0:
            msg = (f"policy {name!r} of tenant {tenant!r} does not exist yet: pass"
                   f" expected_version 0 to create it (got {expected})")
        elif expected == 0:
            msg = (f"policy {name!r} of tenant {tenant!r} already exists (latest version"
                   f" {actual}); pass expected_version {actual} to add a new draft")
        else:
            msg = (f"policy {name!r} of tenant {tenant!r} is at version {actual}, not {expected}:"
                   f" someone changed it meanwhile; re-read it and retry with"
                   f" expected_version {actual}")
        super().__init__(msg)


class FourEyesViolation(StoreError):
    """The approver is the author of the version. -> ``PERMISSION_DENIED``"""

    grpc_status = "PERMISSION_DENIED"


class InvalidTransition(StoreError):
    """The lifecycle does not allow this step from the current state. -> ``FAILED_PRECONDITION``"""

    grpc_status = "FAILED_PRECONDITION"


class StoreUnavailable(StoreError):
    """The backing store (Redis, the SQLite file) could not be reached. -> ``UNAVAILABLE``"""

    grpc_status = "UNAVAILABLE"


def grpc_status_name(exc: BaseException) -> str:
    """The gRPC status code name (``"NOT_FOUND"`` ...) for a store error."""
    if isinstance(exc, StoreError):
        return exc.grpc_status
    if isinstance(exc, PolicyError):
        return "INVALID_ARGUMENT"
    return "INTERNAL"


__all__ = [
    "FourEyesViolation",
    "InvalidTransition",
    "PolicyError",
    "PolicyNotFound",
    "StaleVersion",
    "StoreError",
    "StoreUnavailable",
    "TenantExists",
    "UnknownTenant",
    "grpc_status_name",
]
