"""The asynchronous sender: a bounded queue of (violation, channel) deliveries drained by a
few worker tasks, with retries, the daily email limit, and outcome counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import smtplib
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from pdp.counters import CounterKind, CounterRule, CounterStore, CounterStoreUnavailable
from pdp.notify.channels import (
    Channel,
    EmailChannel,
    GoogleChatChannel,
    OpsgenieChannel,
    PagerDutyChannel,
    WebhookChannel,
)
from pdp.notify.payloads import (
    SIGNATURE_HEADER,
    Violation,
    email_message,
    google_chat_payload,
    opsgenie_payload,
    pagerduty_payload,
    sign,
    webhook_body,
)
from pdp.notify.settings import NotifySettings

log = structlog.get_logger("pdp.notify")

# Outcome names in :meth:`Notifier.counts`.
SENT = "sent"            # delivered (2xx / SMTP accepted)
FAILED = "failed"        # gave up: permanent error or retries exhausted
RETRIED = "retried"      # one more attempt after a transient error
DROPPED = "dropped"      # queue full or notifier closed: never attempted
SUPPRESSED = "suppressed"  # email already sent today for this policy

EMAIL_COUNTER_PREFIX = "notify-email:"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Transient(Exception):
    def __init__(self, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class _Permanent(Exception):
    pass


def email_rule(policy: str) -> CounterRule:
    """The counter rule that limits mail to one per UTC day for ``policy`` (per tenant)."""
    cid = EMAIL_COUNTER_PREFIX + policy
    return CounterRule(rule_id=cid, kind=CounterKind.DAILY_CAP, scope_key="policy",
                       max_count=1, timezone="UTC", counter_id=cid)


class Notifier:
    """Deliver violation notifications without ever touching the decision path.

    * :meth:`notify` is synchronous, O(channels), never blocks and never raises: it copies
      the summary and enqueues one delivery per channel (dropped and counted when the queue
      is full).
    * :meth:`start` (on the server's event loop) spawns the workers; :meth:`close` drains
      what is queued (bounded by a timeout), then stops them.
    * Email consults the shared ``counter_store`` (``DAILY_CAP`` 1, UTC, counter
      ``notify-email:<policy>``) before sending. When the store is unreachable the
      sidecar falls back to a local once-a-day memory, so an outage costs at most one mail
      per sidecar per policy per day, never a flood. No store: local memory only.
    * :meth:`counts` returns ``{(channel_kind, outcome): n}`` for metrics
      (``Telemetry.observe_notifications(notifier.counts)``).
    """

    def __init__(
        self,
        settings: NotifySettings | None = None,
        counter_store: CounterStore | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings or NotifySettings()
        self.counter_store = counter_store
        self._queue: asyncio.Queue[tuple[Violation, Channel]] = asyncio.Queue(
            self.settings.queue_size)
        self._client = http_client
        self._own_client = http_client is None
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._counts: dict[tuple[str, str], int] = {}
        self._counts_lock = threading.Lock()
        # (tenant, policy) -> UTC date (YYYY-MM-DD) for which this sidecar knows a mail went
        self._emailed: dict[tuple[str, str], str] = {}
        self._email_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- public ----------------------------------------------------------------------------

    def notify(
        self,
        policy_name: str,
        tenant: str,
        decision_summary: Mapping[str, Any],
        channels: Sequence[Channel],
    ) -> int:
        """Queue one delivery per channel; returns how many were queued. Never raises."""
        if not channels:
            return 0
        try:
            v = Violation(policy_name, tenant, dict(decision_summary))
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
                except RuntimeError:
                    running = None
                if running is not loop:  # another thread: hand over to the loop's thread
                    loop.call_soon_threadsafe(self._enqueue, v, list(channels))
                    return len(channels)
            return self._enqueue(v, channels)
        except Exception:
            log.error("notify failed to enqueue", policy=policy_name, tenant=tenant,
                      exc_info=True)
            return 0

    def counts(self) -> dict[tuple[str, str], int]:
        with self._counts_lock:
            return dict(self._counts)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        if self._workers:
            return
        if self._closed:
            raise RuntimeError("notifier is closed")
        self._loop = asyncio.get_running_loop()
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.http_timeout_s, follow_redirects=False,
                trust_env=self.settings.http_trust_env,
                headers={"User-Agent": "pdp-notify/1"})
        for i in range(self.settings.workers):
            t = asyncio.create_task(self._worker(), name=f"pdp-notify-{i}")
            t.add_done_callback(self._worker_done)
            self._workers.append(t)

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued delivery finished (tests, shutdown); False on timeout."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, drain for up to ``timeout`` seconds, then stop the workers."""
        if self._closed:
            return
        self._closed = True
        if self._workers and not await self.drain(timeout):
            log.warning("notifier closed with deliveries pending", pending=self._queue.qsize())
        for t in self._workers:
            t.cancel()
        for t in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._workers.clear()
        while not self._queue.empty():
            _, ch = self._queue.get_nowait()
            self._queue.task_done()
            self._count(ch.kind, DROPPED)
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- internals -------------------------------------------------------------------------

    def _count(self, kind: str, outcome: str, n: int = 1) -> None:
        with self._counts_lock:
            key = (kind, outcome)
            self._counts[key] = self._counts.get(key, 0) + n

    def _enqueue(self, v: Violation, channels: Iterable[Channel]) -> int:
        queued = 0
        for ch in channels:
            if self._closed:
                self._count(ch.kind, DROPPED)
                continue
            try:
                self._queue.put_nowait((v, ch))
                queued += 1
            except asyncio.QueueFull:
                self._count(ch.kind, DROPPED)
                log.warning("notification dropped: queue full", channel=ch.kind,
                            policy=v.policy, tenant=v.tenant)
        return queued

    def _worker_done(self, t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("notify worker died", exc_info=t.exception())

    async def _worker(self) -> None:
        while True:
            v, ch = await self._queue.get()
            try:
                await self._deliver(v, ch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug, not a delivery failure: still never kill the worker
                self._count(ch.kind, FAILED)
                log.error("notification crashed", channel=ch.kind, policy=v.policy,
                          tenant=v.tenant, exc_info=True)
            finally:
                self._queue.task_done()

    async def _deliver(self, v: Violation, ch: Channel) -> None:
        if isinstance(ch, EmailChannel):
            if not await self._email_allowed(v):
                self._count(ch.kind, SUPPRESSED)
                log.info("notification email suppressed: already sent today",
                         policy=v.policy, tenant=v.tenant)
                return
            msg = email_message(ch, v, self.settings.smtp_from, self.settings.public_url)
            await self._with_retries(v, ch, lambda: self._send_mail(msg))
            return
        await self._with_retries(v, ch, lambda: self._send_http(v, ch))

    async def _with_retries(
        self, v: Violation, ch: Channel, attempt: Callable[[], Awaitable[None]]
    ) -> None:
        s = self.settings
        for n in range(s.max_attempts):
            try:
                await attempt()
            except _Permanent as e:
                self._fail(v, ch, str(e), n + 1)
                return
            except _Transient as e:
                if n + 1 >= s.max_attempts:
                    self._fail(v, ch, str(e), n + 1)
                    return
                delay = min(s.backoff_max_s, s.backoff_initial_s * 2**n) * random.uniform(0.8, 1.2)
                if e.retry_after is not None:
                    delay = min(s.backoff_max_s, max(delay, e.retry_after))
                self._count(ch.kind, RETRIED)
                log.info("notification retry", channel=ch.kind, policy=v.policy,
                         tenant=v.tenant, attempt=n + 1, error=str(e), delay_s=round(delay, 3))
                await asyncio.sleep(delay)
            else:
                self._count(ch.kind, SENT)
                log.info("notification sent", channel=ch.kind, policy=v.policy,
                         tenant=v.tenant, attempts=n + 1, decision_id=v.decision_id)
                return

    def _fail(self, v: Violation, ch: Channel, error: str, attempts: int) -> None:
        self._count(ch.kind, FAILED)
        log.error("notification failed", channel=ch.kind, policy=v.policy, tenant=v.tenant,
                  attempts=attempts, error=error, decision_id=v.decision_id)

    def _request(self, v: Violation, ch: Channel) -> tuple[str, bytes, dict[str, str]]:
        src = self.settings.source
        headers = {"Content-Type": "application/json"}
        if isinstance(ch, WebhookChannel):
            body = webhook_body(v, src)
            headers.update(ch.headers)
            headers[SIGNATURE_HEADER] = sign(ch.secret, body)
            headers["X-PDP-Event"] = "policy.deny"
            headers["X-PDP-Delivery"] = v.id
            return ch.url, body, headers
        if isinstance(ch, PagerDutyChannel):
            return ch.url, _dump(pagerduty_payload(ch, v, src)), headers
        if isinstance(ch, OpsgenieChannel):
            headers["Authorization"] = f"GenieKey {ch.api_key}"
            return ch.url, _dump(opsgenie_payload(ch, v, src)), headers
        if isinstance(ch, GoogleChatChannel):
            headers["Content-Type"] = "application/json; charset=UTF-8"
            return ch.url, _dump(google_chat_payload(v, self.settings.public_url)), headers
        raise _Permanent(f"not an HTTP channel: {ch.kind}")

    async def _send_http(self, v: Violation, ch: Channel) -> None:
        url, body, headers = self._request(v, ch)
        assert self._client is not None
        host = urlsplit(url).hostname  # never log the URL: chat webhooks embed their key
        try:
            r = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as e:
            raise _Transient(f"timeout talking to {host}: {type(e).__name__}") from None
        except httpx.TransportError as e:
            raise _Transient(f"cannot reach {host}: {type(e).__name__}: {e}") from None
        if 200 <= r.status_code < 300:
            return
        detail = f"{host} answered HTTP {r.status_code}: {r.text[:200]!r}"
        if r.status_code in _RETRY_STATUS:
            raise _Transient(detail, _retry_after(r.headers.get("Retry-After")))
        raise _Permanent(detail)

    async def _send_mail(self, msg: EmailMessage) -> None:
        try:
            await asyncio.to_thread(self._smtp_send, msg)
        except smtplib.SMTPResponseException as e:
            detail = f"SMTP {e.smtp_code}: {e.smtp_error!r}"
            if 400 <= e.smtp_code < 500:
                raise _Transient(detail) from None
            raise _Permanent(detail) from None
        except smtplib.SMTPRecipientsRefused as e:
            raise _Permanent(f"recipients refused: {sorted(e.recipients)}") from None
        except (OSError, smtplib.SMTPException) as e:
            raise _Transient(f"SMTP {type(e).__name__}: {e}") from None

    def _smtp_send(self, msg: EmailMessage) -> None:
        s = self.settings
        smtp: smtplib.SMTP
        if s.smtp_ssl:
            smtp = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s)
        with smtp:
            if s.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password or "")
            smtp.send_message(msg)

    async def _email_allowed(self, v: Violation) -> bool:
        """Claim today's mail for (tenant, policy): shared store first, local memory as the
        shortcut (already claimed here today) and the fallback (store unreachable)."""
        key = (v.tenant, v.policy)
        lock = self._email_locks.get(key)
        if lock is None:
            lock = self._email_locks[key] = asyncio.Lock()
        async with lock:  # workers of this sidecar claim one at a time per policy
            today = datetime.now(UTC).date().isoformat()
            if self._emailed.get(key) == today:
                return False
            allowed = True
            if self.counter_store is not None:
                try:
                    res = await self.counter_store.reserve(
                        v.tenant, [email_rule(v.policy)],
                        timeout=self.settings.email_counter_timeout_s)
                except CounterStoreUnavailable as e:
                    log.warning("email limit: counter store unavailable, using local limit",
                                policy=v.policy, tenant=v.tenant, error=str(e))
                else:
                    allowed = res.allowed
            if len(self._emailed) > 10_000:  # forget earlier days
                self._emailed = {k: d for k, d in self._emailed.items() if d == today}
                self._email_locks = {k: lk for k, lk in self._email_locks.items()
                                     if k in self._emailed or k == key}
            self._emailed[key] = today
            return allowed


def _dump(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
