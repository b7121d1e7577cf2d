"""Process-wide notification settings (the per-policy part is in :mod:`pdp.notify.channels`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """Queue, retry, storage and SMTP settings shared by every policy's channels.

    Deliveries are durable: each one is written to the notification store before it is
    attempted, and stays there until it is sent, suppressed (email already sent today) or
    given up. Where the store lives:

    * ``redis_url`` set (a fleet): Redis, shared by every sidecar — one list per channel,
      the email slots as keys that expire at the end of their UTC day;
    * else ``state_path``: a SQLite file (the embedded default; the server puts it beside
      the audit file). One process per file;
    * neither: in memory (tests, tools) — nothing survives a restart.

    Retries: a transient failure (connection error, timeout, HTTP 408 / 425 / 429 / 5xx,
    SMTP 4xx) is retried after ``backoff_initial_s * 2**n`` (capped at ``backoff_max_s``,
    +-20 % jitter; a longer ``Retry-After`` is honoured up to the cap) until
    ``retry_for_s`` after the notification was made, then given up (counted ``failed``,
    audited as ``Notification.GivenUp``). ``max_attempts`` optionally caps the attempts
    too (None: only time limits them). Permanent errors (other 4xx, SMTP 5xx) are given up
    at once. A channel's notifications go out in order: a later one waits for the first.

    ``attempt_timeout_s`` bounds one attempt (connect, send, answer): a receiver that
    accepts and never answers costs one worker this long, never more. ``workers`` is the
    number of channels delivered to concurrently, so one hanging receiver never holds up
    the others.

    ``queue_size`` bounds notifications not yet in the store (the decision path never
    waits); when full, new ones are dropped and counted.

    ``public_url``: if set, a link prefix shown in messages (e.g. the audit UI).
    """

    queue_size: int = 1000
    workers: int = 4
    retry_for_s: float = 6 * 3600.0
    max_attempts: int | None = None
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    attempt_timeout_s: float = 10.0
    state_path: str | None = None
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_timeout_s: float = 2.0
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_from: str = "pdp@localhost"
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    source: str = "pdp"
    public_url: str | None = None
    http_trust_env: bool = True  # honour HTTPS_PROXY / NO_PROXY / SSL_CERT_FILE

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.workers < 1:
            raise ValueError("queue_size and workers must be >= 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (or None: limited by retry_for_s)")
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        if self.retry_for_s <= 0:
            raise ValueError("retry_for_s must be > 0")
        if self.attempt_timeout_s <= 0 or self.redis_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        if self.smtp_ssl and self.smtp_starttls:
            raise ValueError("choose smtp_ssl or smtp_starttls, not both")
