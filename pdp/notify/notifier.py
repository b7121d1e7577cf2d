"""The asynchronous sender: notifications go from a bounded in-memory queue into a durable
outbox (:mod:`pdp.notify.store`), from which each channel's oldest is attempted, retried
with backoff for hours, and finally sent, suppressed or given up (and audited).
Timeouts are ``asyncio.timeout`` blocks, never ``asyncio.wait_for``: on Python 3.11 a
``wait_for`` whose awaitable finishes just as its task is cancelled swallows the
cancellation, and a loop that sets the event it waits on while closing hit exactly that (a
shutdown that never finished). Shutdown also waits for cancelled tasks only so long.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import json
import smtplib
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from pdp.backoff import delay_after
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
from pdp.notify.store import (
    ALREADY_SENT,
    BUSY,
    Delivery,
    NotifyState,
    StateUnavailable,
    open_state,
)
from pdp.telemetry.logs import current_trace_id

log = structlog.get_logger("pdp.notify")

# Outcome names in :meth:`Notifier.counts`.
SENT = "sent"            # delivered (2xx / SMTP accepted)
FAILED = "failed"        # given up: permanent error, or retried for retry_for_s in vain
RETRIED = "retried"      # one more attempt scheduled after a transient error
DROPPED = "dropped"      # queue full or notifier closed: never stored
SUPPRESSED = "suppressed"  # email already sent today for this policy
BACKLOG = "backlog"      # a level, not a count: deliveries waiting in the store now

GIVEN_UP_EVENT = "Notification.GivenUp"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_BATCH = 256  # notifications stored per write
_STATE_RETRY_MAX_S = 5.0  # store unreachable: look again at least this often
_SHARED_POLL_S = 1.0  # a shared (Redis) outbox: other sidecars' deliveries are seen this soon


class _Transient(Exception):
    def __init__(self, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class _Permanent(Exception):
    pass


def channel_key(ch: Channel) -> str:
    """The ordering key of a channel: its kind and a hash of its whole configuration, so
    two policies naming the same endpoint share one ordered line, and no secret shows."""
    blob = json.dumps(asdict(ch), sort_keys=True, default=str).encode()
    return f"{ch.kind}:{hashlib.sha256(blob).hexdigest()[:24]}"


class Notifier:
    """Deliver violation notifications without ever touching the decision path.

    * :meth:`notify` is synchronous, O(channels), never blocks and never raises: it copies
      the summary (and the current trace id) and queues one delivery per channel (dropped
      and counted when the queue is full).
    * :meth:`start` (on the server's event loop) starts the task that writes queued
      deliveries to the store and the one that attempts them; :meth:`close` stores what is
      queued, lets due attempts finish (bounded by a timeout), then stops. What was not
      delivered stays in the store for the next start (or another sidecar).
    * Email: at most one per UTC day per tenant + policy, counted when a mail is *sent*:
      an attempt leases the day's slot, confirms it once the SMTP server accepted the mail
      and frees it when sending failed. When the store is unreachable this sidecar falls
      back to its own memory (at most one mail per sidecar per policy per day).
    * Delivery is at least once: a receiver may see a delivery again after a crash or a
      lost answer (webhooks carry ``X-PDP-Delivery`` to recognise it).
    * :meth:`counts` returns ``{(channel_kind, outcome): n}`` for metrics, plus
      ``(kind, "backlog")``: deliveries waiting in the store.
    * ``emit`` receives the ``Notification.GivenUp`` audit events.
    """

    def __init__(
        self,
        settings: NotifySettings | None = None,
        *,
        state: NotifyState | None = None,
        http_client: httpx.AsyncClient | None = None,
        emit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = s = settings or NotifySettings()
        self._state = state if state is not None else open_state(
            s.state_path, s.redis_url, cluster=s.redis_cluster, timeout_s=s.redis_timeout_s)
        self._own_state = state is None
        self._emit = emit
        self._queue: asyncio.Queue[tuple[Violation, Channel]] = asyncio.Queue(s.queue_size)
        self._client = http_client
        self._own_client = http_client is None
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._stopping = False  # close() is cancelling the tasks
        self._holder = uuid.uuid4().hex  # this notifier, as the holder of channel leases
        self._counts: dict[tuple[str, str], int] = {}
        self._backlog: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self._next_due: float | None = 0.0
        self._holding = 0  # taken from the queue, not in the store yet
        self._state_down = False  # say so once per outage, not on every look
        # (tenant, policy) -> UTC day for which this sidecar knows a mail went out
        self._emailed: dict[tuple[str, str], str] = {}

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
            v = Violation(policy_name, tenant, dict(decision_summary),
                          trace_id=current_trace_id())
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
        """Outcomes so far, and the backlog per kind (once a kind has had one)."""
        with self._counts_lock:
            out = dict(self._counts)
            for kind, n in self._backlog.items():
                out[(kind, BACKLOG)] = n
            return out

    @property
    def pending(self) -> int:
        """Queued in memory plus waiting in the store (as last seen)."""
        with self._counts_lock:
            return self._queue.qsize() + sum(self._backlog.values())

    async def start(self) -> None:
        if self._tasks:
            return
        if self._closed:
            raise RuntimeError("notifier is closed")
        self._loop = asyncio.get_running_loop()
        s = self.settings
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=s.attempt_timeout_s, follow_redirects=False,
                trust_env=s.http_trust_env, headers={"User-Agent": "pdp-notify/1"})
        for name, coro in (("pdp-notify-store", self._store_loop()),
                           ("pdp-notify-send", self._dispatch_loop())):
            t = asyncio.create_task(coro, name=name)
            t.add_done_callback(self._task_done)
            self._tasks.append(t)

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every delivery was sent, suppressed or given up (tests, tools);
        False when some are still queued, in flight or waiting for a retry at ``timeout``."""
        until = time.monotonic() + timeout
        while True:
            if self._queue.empty() and not self._holding and not self._inflight:
                with contextlib.suppress(StateUnavailable):
                    if not sum((await self._refresh_backlog()).values()):
                        return True
            if time.monotonic() >= until:
                return False
            self._wake.set()
            await asyncio.sleep(0.02)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting; store what is queued and let the attempts due now finish for up
        to ``timeout`` seconds; then stop. The rest stays in the store for the next start."""
        if self._closed:
            return
        self._closed = True
        until = time.monotonic() + timeout
        if self._tasks:
            while time.monotonic() < until and not self._settled():
                self._wake.set()
                await asyncio.sleep(0.02)
            if not self._settled():
                log.warning("notifier closed with deliveries in flight or queued",
                            queued=self._queue.qsize(), in_flight=len(self._inflight))
        tasks = [*self._tasks, *self._inflight.values()]
        self._stopping = True  # the dispatcher ends even if its cancellation is swallowed
        self._wake.set()
        for t in tasks:
            t.cancel()
        if tasks:  # bounded: a task that ignored its cancellation must not hang shutdown
            _, stuck = await asyncio.wait(tasks, timeout=2.0)
            if stuck:
                log.error("notifier tasks did not stop when cancelled", tasks=len(stuck))
        self._tasks.clear()
        self._inflight.clear()
        while not self._queue.empty():
            _, ch = self._queue.get_nowait()
            self._queue.task_done()
            self._count(ch.kind, DROPPED)
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._own_state:
            await self._state.close()

    # -- internals -------------------------------------------------------------------------

    def _settled(self) -> bool:
        """Nothing queued, nothing in flight, nothing in the store due now."""
        due = self._next_due is not None and self._next_due <= time.time()
        return self._queue.empty() and not self._holding and not self._inflight and not due

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
                            policy=v.policy, tenant=v.tenant, trace_id=v.trace_id or None,
                            decision_id=v.decision_id)
        return queued

    def _task_done(self, t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("notify task died", task=t.get_name(), exc_info=t.exception())

    async def _store_loop(self) -> None:
        """Queue -> store, in batches, in order. While the store is unreachable the batch
        is held (and the queue fills, then drops) rather than lost."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            items: list[Delivery] = []
            for v, ch in batch:
                try:
                    items.append(self._render(v, ch))
                except Exception:
                    self._count(ch.kind, FAILED)
                    log.error("notification cannot be rendered", channel=ch.kind,
                              policy=v.policy, tenant=v.tenant, trace_id=v.trace_id or None,
                              exc_info=True)
            delay = 0.1
            self._holding = len(batch)
            while items:
                try:
                    await self._state.push(items)
                    self._state_up()
                    break
                except StateUnavailable as e:
                    self._state_failed(e, held=len(items))
                    await asyncio.sleep(delay)
                    delay = min(_STATE_RETRY_MAX_S, delay * 2)
            self._holding = 0
            for _ in batch:
                self._queue.task_done()
            self._next_due = 0.0
            self._wake.set()

    async def _dispatch_loop(self) -> None:
        """Attempt every channel's due head, at most ``workers`` at a time; sleep until
        the next one is due, or something is stored or finished."""
        s = self.settings
        lease_s = s.attempt_timeout_s + 30.0
        # Not ``while True``: on Python 3.11 a cancellation that lands as the timeout below
        # expires is swallowed (it becomes the TimeoutError suppressed there), and the loop
        # would run on after close() -- the event loop's shutdown then waited for it forever.
        while not self._stopping:
            self._wake.clear()
            wait: float | None = _SHARED_POLL_S if self._state.shared else None
            free = s.workers - len(self._inflight)
            if free > 0:
                try:
                    heads, later = await self._state.heads(
                        time.time(), self._holder, lease_s, set(self._inflight), free)
                    self._state_up()
                except StateUnavailable as e:
                    self._state_failed(e)
                    heads, later, wait = [], None, _STATE_RETRY_MAX_S
                for d in heads:
                    t = asyncio.create_task(self._attempt(d), name=f"pdp-notify-{d.kind}")
                    self._inflight[d.channel] = t
                # a full batch may have left due heads behind: not settled yet
                self._next_due = 0.0 if len(heads) >= free else later
                if later is not None:
                    left = max(0.0, later - time.time())
                    wait = left if wait is None else min(wait, left)
                with contextlib.suppress(StateUnavailable):
                    await self._refresh_backlog()
            if wait is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):  # not wait_for: see module docstring
                        await self._wake.wait()

    def _state_failed(self, e: StateUnavailable, **kw: Any) -> None:
        if not self._state_down:
            self._state_down = True
            log.warning("notification store unavailable; notifications are held in memory"
                        " until it is back", error=str(e), **kw)

    def _state_up(self) -> None:
        if self._state_down:
            self._state_down = False
            log.info("notification store reachable again")

    async def _refresh_backlog(self) -> dict[str, int]:
        backlog = await self._state.backlog()
        with self._counts_lock:
            for kind in self._backlog:
                self._backlog[kind] = 0
            self._backlog.update(backlog)
        return backlog

    async def _attempt(self, d: Delivery) -> None:
        try:
            if d.kind == EmailChannel.kind:
                outcome, error, retry_after = await self._try_email(d)
            else:
                outcome, error, retry_after = await self._try_http(d)
            await self._settle(d, outcome, error, retry_after)
        except asyncio.CancelledError:
            raise
        except StateUnavailable as e:  # it stays in the store; its lease runs out
            log.warning("notification outcome not stored; it will be attempted again",
                        channel=d.kind, policy=d.policy, tenant=d.tenant, error=str(e),
                        trace_id=d.trace_id or None, decision_id=d.decision_id)
        except Exception:  # a bug, not a delivery failure: never kill the dispatcher
            log.error("notification crashed", channel=d.kind, policy=d.policy,
                      tenant=d.tenant, trace_id=d.trace_id or None, exc_info=True)
        finally:
            self._inflight.pop(d.channel, None)
            self._wake.set()

    async def _settle(self, d: Delivery, outcome: str, error: str,
                      retry_after: float | None) -> None:
        s = self.settings
        where = {"channel": d.kind, "policy": d.policy, "tenant": d.tenant,
                 "decision_id": d.decision_id, "trace_id": d.trace_id or None}
        if outcome in (SENT, SUPPRESSED):
            await self._state.finish(d, self._holder)
            self._count(d.kind, outcome)
            if outcome == SENT:
                log.info("notification sent", attempts=d.attempts + 1, **where)
            else:
                log.info("notification email suppressed: already sent today", **where)
            return
        d.attempts += 1
        d.error = error
        now = time.time()
        delay = delay_after(d.attempts, s.backoff_initial_s, s.backoff_max_s, jitter=0.2)
        if retry_after is not None:
            delay = min(s.backoff_max_s, max(delay, retry_after))
        out_of_time = now + delay > d.give_up_at
        out_of_tries = s.max_attempts is not None and d.attempts >= s.max_attempts
        if outcome == FAILED or out_of_time or out_of_tries:
            await self._state.finish(d, self._holder)
            self._count(d.kind, FAILED)
            why = ("permanent error" if outcome == FAILED else
                   "retried for too long" if out_of_time else "too many attempts")
            log.error("notification failed", attempts=d.attempts, error=error, given_up=why,
                      **where)
            self._given_up(d, why)
            return
        d.next_at = now + delay
        await self._state.retry_later(d, self._holder)
        self._count(d.kind, RETRIED)
        log.info("notification retry", attempt=d.attempts, error=error,
                 delay_s=round(delay, 3), **where)

    def _given_up(self, d: Delivery, why: str) -> None:
        if self._emit is None:
            return
        event: dict[str, Any] = {
            "type": GIVEN_UP_EVENT,
            "time": _iso(time.time()), "tenant": d.tenant, "policy": d.policy,
            "channel": d.kind, "decision_id": d.decision_id, "delivery_id": d.id,
            "first_at": _iso(d.created), "attempts": d.attempts, "reason": why,
            "error": d.error[:500]}
        if d.trace_id:
            event["trace_id"] = d.trace_id
        try:
            self._emit(event)
        except Exception:
            log.error("notification given up, and its audit event failed", channel=d.kind,
                      policy=d.policy, tenant=d.tenant, exc_info=True)

    # -- rendering -------------------------------------------------------------------------

    def _render(self, v: Violation, ch: Channel) -> Delivery:
        now = time.time()
        request: dict[str, Any]
        if isinstance(ch, EmailChannel):
            msg = email_message(ch, v, self.settings.smtp_from, self.settings.public_url)
            request = {"message": msg.as_string()}
        else:
            url, body, headers = self._request(v, ch)
            request = {"url": url, "headers": headers, "body": body.decode()}
        return Delivery(id=uuid.uuid4().hex, channel=channel_key(ch), kind=ch.kind,
                        tenant=v.tenant, policy=v.policy, decision_id=v.decision_id,
                        trace_id=v.trace_id, created=now,
                        give_up_at=now + self.settings.retry_for_s, request=request,
                        next_at=now)

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
        raise ValueError(f"not an HTTP channel: {ch.kind}")

    # -- attempts: (outcome, error, retry_after); outcome SENT / SUPPRESSED / RETRIED /
    # FAILED (permanent) ---------------------------------------------------------------------

    async def _try_http(self, d: Delivery) -> tuple[str, str, float | None]:
        try:
            async with asyncio.timeout(self.settings.attempt_timeout_s):
                await self._send_http(d)
        except TimeoutError:
            host = urlsplit(d.request["url"]).hostname
            return RETRIED, (f"{host} gave no answer within"
                             f" {self.settings.attempt_timeout_s:g} s"), None
        except _Transient as e:
            return RETRIED, str(e), e.retry_after
        except _Permanent as e:
            return FAILED, str(e), None
        return SENT, "", None

    async def _send_http(self, d: Delivery) -> None:
        url: str = d.request["url"]
        assert self._client is not None
        host = urlsplit(url).hostname  # never log the URL: chat webhooks embed their key
        try:
            r = await self._client.post(url, content=d.request["body"].encode(),
                                        headers=d.request["headers"])
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

    async def _try_email(self, d: Delivery) -> tuple[str, str, float | None]:
        """Lease the day's slot, send, then confirm the slot (sent) or free it (failed)."""
        s = self.settings
        key = (d.tenant, d.policy)
        day = datetime.now(UTC).date().isoformat()
        if self._emailed.get(key) == day:
            return SUPPRESSED, "", None
        shared = True
        try:
            claim = await self._state.claim_email(d.tenant, d.policy, day, d.id,
                                                  s.attempt_timeout_s + 30.0)
        except StateUnavailable as e:
            log.warning("email limit: notification store unavailable, using local limit",
                        policy=d.policy, tenant=d.tenant, error=str(e),
                        trace_id=d.trace_id or None)
            shared = False
        else:
            if claim == ALREADY_SENT:
                self._remember_email(key, day)
                return SUPPRESSED, "", None
            if claim == BUSY:
                return RETRIED, "another attempt is sending today's mail", None
        msg = email.message_from_string(d.request["message"], policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        try:
            async with asyncio.timeout(s.attempt_timeout_s):
                await self._send_mail(msg)
        except TimeoutError:  # it may still go out: keep the lease until it runs out
            return RETRIED, f"SMTP gave no answer within {s.attempt_timeout_s:g} s", None
        except (_Transient, _Permanent) as e:
            if shared:
                with contextlib.suppress(StateUnavailable):
                    await self._state.release_email(d.tenant, d.policy, day, d.id)
            return (RETRIED if isinstance(e, _Transient) else FAILED), str(e), None
        self._remember_email(key, day)
        if shared:
            try:
                await self._state.confirm_email(d.tenant, d.policy, day, d.id)
            except StateUnavailable as e:
                log.warning("email sent but not recorded in the notification store",
                            policy=d.policy, tenant=d.tenant, error=str(e),
                            trace_id=d.trace_id or None)
        return SENT, "", None

    def _remember_email(self, key: tuple[str, str], day: str) -> None:
        if len(self._emailed) > 10_000:  # forget earlier days
            self._emailed = {k: v for k, v in self._emailed.items() if v == day}
        self._emailed[key] = day

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
            smtp = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.attempt_timeout_s,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.attempt_timeout_s)
        with smtp:
            if s.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password or "")
            smtp.send_message(msg)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dump(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
