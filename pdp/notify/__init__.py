"""Violation notifications: when an *active* policy denies, tell the people who own it —
webhook (HMAC-signed JSON), PagerDuty Events v2, Opsgenie, Google Chat, email (SMTP, at
most one per UTC day per tenant + policy across all sidecars, via the counter store).

No gRPC here. Delivery is asynchronous and never affects a decision.

Seams (how the policy loader / engine / server wire it in)
---------------------------------------------------------
Policy loader: a policy's YAML ``notify:`` value goes through :func:`parse_channels`
(raises :class:`ChannelConfigError` with a ``notify[i].kind.field: ...`` message; map it
to an admission error). Keep the resulting ``list[Channel]`` on the policy (frozen
dataclasses, hashable config, secrets hidden from ``repr``).

Server start-up (on the event loop)::

    notifier = Notifier(NotifySettings(smtp_host=..., smtp_port=...), counter_store)
    await notifier.start()
    telemetry.observe_notifications(notifier.counts)
    ...
    await notifier.close(timeout=5)   # drains, then stops

Engine, after the decision is final (only for *active* denies, not shadow would-denies, and
only for the policies that denied)::

    notifier.notify(policy.name, tenant, summary, policy.notify)   # never blocks or raises

``summary`` should be the masked decision as audited (decision_id, checkpoint, reasons
[{code, message}], subject...). It is shallow-copied at call time. ``notify`` may also be
called from another thread once started.

Outcomes per channel kind: ``notifier.counts()`` -> ``{("webhook", "sent"): 3, ...}`` with
outcomes sent / failed / retried / dropped / suppressed.
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
)
from pdp.notify.notifier import (
    DROPPED,
    FAILED,
    RETRIED,
    SENT,
    SUPPRESSED,
    Notifier,
    email_rule,
)
from pdp.notify.payloads import SIGNATURE_HEADER, Violation, sign, verify
from pdp.notify.settings import NotifySettings

__all__ = [
    "CHANNEL_KINDS",
    "DROPPED",
    "FAILED",
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
    "OpsgenieChannel",
    "PagerDutyChannel",
    "Violation",
    "WebhookChannel",
    "email_rule",
    "parse_channels",
    "sign",
    "verify",
]
