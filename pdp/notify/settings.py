"""Process-wide notification settings (the per-policy part is in :mod:`pdp.notify.channels`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """Queue, retry and SMTP settings shared by every policy's channels.

    Retries (HTTP channels and SMTP): up to ``max_attempts`` tries per message, waiting
    ``backoff_initial_s * 2**n`` (capped at ``backoff_max_s``, with +-20 % jitter) between
    them. Only transient failures are retried: connection errors, timeouts, HTTP 408 / 429 /
    5xx, SMTP 4xx. ``queue_size`` bounds pending deliveries; when full, new ones are dropped
    and counted (the decision path never waits).

    ``public_url``: if set, a link prefix shown in messages (e.g. the audit UI).
    """

    queue_size: int = 1000
    workers: int = 4
    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    http_timeout_s: float = 5.0
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_from: str = "pdp@localhost"
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_timeout_s: float = 10.0
    email_counter_timeout_s: float = 2.0
    source: str = "pdp"
    public_url: str | None = None
    http_trust_env: bool = True  # honour HTTPS_PROXY / NO_PROXY / SSL_CERT_FILE

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.workers < 1 or self.max_attempts < 1:
            raise ValueError("queue_size, workers and max_attempts must be >= 1")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("need 0 <= backoff_initial_s <= backoff_max_s")
        if self.http_timeout_s <= 0 or self.smtp_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        if self.email_counter_timeout_s <= 0:
            raise ValueError("email_counter_timeout_s must be > 0")
        if self.smtp_ssl and self.smtp_starttls:
            raise ValueError("choose smtp_ssl or smtp_starttls, not both")
