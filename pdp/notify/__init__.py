"""Violation notifications: when an *active* policy denies, tell the people who own it —
webhook (HMAC-signed JSON), PagerDuty Events v2, Opsgenie, Google Chat, email (SMTP, at
most one per UTC day per tenant + policy across all sidecars, counted when sent).

No gRPC here. Delivery is asynchronous, durable and never affects a decision.

Seams (how the policy loader / engine / server wire it in)
---------------------------------------------------------
Policy loader: a policy's YAML ``notify:`` value goes through :func:`parse_channels`
(raises :class:`ChannelConfigError` with a ``notify[i].kind.field: ...`` message; map it
to an admission error). Keep the resulting ``list[Channel]`` on the policy (frozen
dataclasses, hashable config, secrets hidden from ``repr``).

Server start-up (on the event loop)::

    notifier = Notifier(NotifySettings(state_path="var/audit/notify.sqlite3",  # or redis_url
                                       smtp_host=..., smtp_port=...), emit=audit.emit)
    await notifier.start()
    telemetry.observe_notifications(notifier.counts)
    ...
    await notifier.close(timeout=5)   # stores what is queued; the store keeps the rest

Engine, after the decision is final (only for *active* denies, not shadow would-denies, and
only for the policies that denied), inside the decision's span::

    notifier.notify(policy.name, tenant, summary, policy.notify)   # never blocks or raises

``summary`` should be the masked decision as audited (decision_id, checkpoint, reasons
[{code, message}], subject...). It is shallow-copied at call time, with the current trace
id (for the notification's log lines). ``notify`` may also be called from another thread
once started.

Deliveries are kept in a store (:mod:`pdp.notify.store`: SQLite beside the audit file, or
Redis in a fleet) until sent, suppressed or given up after ``retry_for_s`` (audit event
``Notification.GivenUp``); each channel's go out in order.

Outcomes per channel kind: ``notifier.counts()`` -> ``{("webhook", "sent"): 3, ...}`` with
outcomes sent / failed / retried / dropped / suppressed, and ``backlog`` (a level: waiting
in the store now).
"""

from pdp.notify.channels import (
    CHANNEL_KINDS,
    Channel,
    ChannelConfigError,
    EmailChannel,
    GoogleChatChannel,
    OpsgenieChannel,
    PagerDutyChannel,
    WebhookChannel,
    parse_channels,
    tenant_env_prefix,
)
from pdp.notify.notifier import (
    BACKLOG,
    DROPPED,
    FAILED,
    GIVEN_UP_EVENT,
    RETRIED,
    SENT,
    SUPPRESSED,
    Notifier,
    channel_key,
)
from pdp.notify.payloads import SIGNATURE_HEADER, Violation, sign, verify
from pdp.notify.settings import NotifySettings
from pdp.notify.store import (
    NotifyState,
    RedisNotifyState,
    SqliteNotifyState,
    StateUnavailable,
    open_state,
)

__all__ = [
    "BACKLOG",
    "CHANNEL_KINDS",
    "DROPPED",
    "FAILED",
    "GIVEN_UP_EVENT",
    "RETRIED",
    "SENT",
    "SIGNATURE_HEADER",
    "SUPPRESSED",
    "Channel",
    "ChannelConfigError",
    "EmailChannel",
    "GoogleChatChannel",
    "Notifier",
    "NotifySettings",
    "NotifyState",
    "OpsgenieChannel",
    "PagerDutyChannel",
    "RedisNotifyState",
    "SqliteNotifyState",
    "StateUnavailable",
    "Violation",
    "WebhookChannel",
    "channel_key",
    "open_state",
    "parse_channels",
    "sign",
    "tenant_env_prefix",
    "verify",
]
