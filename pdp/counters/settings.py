"""Counter-store settings; the server maps ``PDP_REDIS_URL`` and friends onto these."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_EVENT_BUCKET_SECONDS = 300
DEFAULT_EVENT_RETENTION_SECONDS = 7 * 86400
STATE_LOST_MODES = ("deny", "wait")
#: How long COOLDOWN and VELOCITY counters keep their pushes at least, whatever the window of
#: the rule in force: a new version of a policy that lengthens the window (up to this) sees
#: the pushes made before it. One timestamp per cooldown scope; velocity sets are also held
#: to HISTORY_MAX_ENTRIES (below), so memory stays bounded.
DEFAULT_HISTORY_SECONDS = DEFAULT_EVENT_RETENTION_SECONDS  # a week, as reported events
#: A velocity set keeps, beyond its window, at most this many of its newest pushes (or the
#: rule's max_count, if larger): a verdict needs only the newest max_count pushes, so a
#: lengthened window is judged exactly for any max_count up to this.
HISTORY_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class CounterSettings:
    """Where counters live and how long we wait for them.

    ``url`` None selects the in-process store (the embedded default). Otherwise
    ``redis://host:port/db``, ``rediss://`` (TLS) or ``unix:///path/to.sock?db=0``;
    ``cluster`` selects Redis Cluster (the URL names any one node).

    ``connect_timeout`` bounds a TCP/TLS connect, ``op_timeout`` bounds a single command
    at the socket level (a backstop: each call's own ``timeout`` normally fires first).
    ``pool_size`` is the maximum number of connections (per node in cluster mode).

    ROLLBACK_RATE events are counted in buckets of ``event_bucket_seconds`` (the window
    edge is that coarse) and kept ``event_retention_seconds``, which is also the longest
    rollback window a rule may ask for.

    ``history_seconds``: COOLDOWN and VELOCITY counters keep their pushes at least this long
    (see ``DEFAULT_HISTORY_SECONDS``).

    ``state_lost`` is what a Redis store does once it notices that the store lost its state
    (the epoch marker is gone): ``deny`` counter-bound rules until an admin runs
    ``pdp counters ack`` (default), or ``wait`` until the longest counter window has passed
    since the loss was noticed, then resume by itself.
    """

    url: str | None = None
    cluster: bool = False
    connect_timeout: float = 1.0
    op_timeout: float = 1.0
    pool_size: int = 50
    event_bucket_seconds: int = DEFAULT_EVENT_BUCKET_SECONDS
    event_retention_seconds: int = DEFAULT_EVENT_RETENTION_SECONDS
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    state_lost: str = "deny"
    history_seconds: int = DEFAULT_HISTORY_SECONDS

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.op_timeout <= 0:
            raise ValueError("counter store timeouts must be > 0")
        if self.pool_size < 1:
            raise ValueError("counter store pool_size must be >= 1")
        if self.event_bucket_seconds < 1:
            raise ValueError("event_bucket_seconds must be >= 1")
        if self.event_retention_seconds < self.event_bucket_seconds:
            raise ValueError("event_retention_seconds must be >= event_bucket_seconds")
        if not 0 <= self.history_seconds <= 366 * 86400:
            raise ValueError("history_seconds must be 0 to 366 days")
        if self.state_lost not in STATE_LOST_MODES:
            raise ValueError(f"state_lost must be one of {', '.join(STATE_LOST_MODES)}:"
                             f" {self.state_lost!r}")
