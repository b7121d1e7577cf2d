"""Policy stores: versions, lifecycle (draft -> approved -> active -> retired), built-in
settings per tenant, change notification. SQLite (embedded) and Redis (fleets) backends."""

from pdp.policy.model import PolicyError
from pdp.policy.store.base import PolicyStore, TenantState, Validator, compile_validator
from pdp.policy.store.errors import (
    FourEyesViolation,
    InvalidTransition,
    PolicyNotFound,
    StaleVersion,
    StoreError,
    StoreUnavailable,
    TenantExists,
    UnknownTenant,
    grpc_status_name,
)
from pdp.policy.store.records import (
    PolicyHistory,
    PolicyRecord,
    PolicySummary,
    RelaxRequest,
    StoreSnapshot,
    TenantInfo,
    TenantSnapshot,
    Transition,
    VersionRecord,
)
from pdp.policy.store.redis_store import RedisPolicyStore
from pdp.policy.store.seed import SeedResult, seed_from_directory
from pdp.policy.store.sqlite_store import SqlitePolicyStore

__all__ = [
    "FourEyesViolation",
    "InvalidTransition",
    "PolicyError",
    "PolicyHistory",
    "PolicyNotFound",
    "PolicyRecord",
    "PolicyStore",
    "PolicySummary",
    "RedisPolicyStore",
    "RelaxRequest",
    "SeedResult",
    "SqlitePolicyStore",
    "StaleVersion",
    "StoreError",
    "StoreSnapshot",
    "StoreUnavailable",
    "TenantExists",
    "TenantInfo",
    "TenantSnapshot",
    "TenantState",
    "Transition",
    "UnknownTenant",
    "Validator",
    "VersionRecord",
    "compile_validator",
    "grpc_status_name",
    "seed_from_directory",
]
