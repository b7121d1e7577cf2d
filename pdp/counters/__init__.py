"""Counter stores: atomic reservations for DAILY_CAP, COOLDOWN, VELOCITY, ROLLBACK_RATE and
MIN_STEP_DURATION rules, in process (default) or in Redis / Redis Cluster.
"""

from pdp.counters.base import CounterStore
from pdp.counters.clock import Clock, ManualClock, SystemClock
from pdp.counters.factory import open_counter_store
from pdp.counters.memory import MemoryCounterStore
from pdp.counters.model import (
    CODE_STATE_LOST,
    CODE_UNAVAILABLE,
    CounterEventKind,
    CounterKind,
    CounterRule,
    CounterStateChange,
    CounterStateLost,
    CounterStoreUnavailable,
    ReserveResult,
)
from pdp.counters.redis_store import RedisCounterStore
from pdp.counters.scopes import scope_key
from pdp.counters.settings import CounterSettings

__all__ = [
    "CODE_STATE_LOST",
    "CODE_UNAVAILABLE",
    "Clock",
    "CounterEventKind",
    "CounterKind",
    "CounterRule",
    "CounterSettings",
    "CounterStateChange",
    "CounterStateLost",
    "CounterStore",
    "CounterStoreUnavailable",
    "ManualClock",
    "MemoryCounterStore",
    "RedisCounterStore",
    "ReserveResult",
    "SystemClock",
    "open_counter_store",
    "scope_key",
]
