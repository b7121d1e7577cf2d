"""What each channel sends: pure functions from a :class:`Violation` to bytes / dicts /
mail, so the shapes can be checked without any network."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from pdp.notify.channels import EmailChannel, OpsgenieChannel, PagerDutyChannel, render_key

SIGNATURE_HEADER = "X-PDP-Signature"
EVENT_TYPE = "policy.deny"


@dataclass(frozen=True, slots=True)
class Violation:
    """One active-policy deny to report. ``summary`` is the caller's (already masked)
    decision summary: decision_id, checkpoint, reasons, subject... whatever it has."""

    policy: str
    tenant: str
    summary: Mapping[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    trace_id: str = ""  # the deciding call's trace, for the notification's log lines

    @property
    def decision_id(self) -> str:
        return str(self.summary.get("decision_id", ""))

    @property
    def checkpoint(self) -> str:
        return str(self.summary.get("checkpoint", ""))

    def reasons(self) -> list[str]:
        """Human-readable reasons of the deny, from ``summary["reasons"]`` if present."""
        raw = self.summary.get("reasons", [])
        if isinstance(raw, (str, Mapping)) or not isinstance(raw, (list, tuple)):
            raw = [raw]
        out: list[str] = []
        for r in raw:
            if isinstance(r, Mapping):
                code, msg = r.get("code"), r.get("message")
                out.append(f"{code}: {msg}" if code and msg else str(msg or code or dict(r)))
            else:
                out.append(str(r))
        return out

    def headline(self) -> str:
        where = f" at {self.checkpoint}" if self.checkpoint else ""
        return f"pdp: policy {self.policy} denied{where} (tenant {self.tenant})"

    def text(self, public_url: str | None = None) -> str:
        lines = [self.headline()]
        lines += [f"- {r}" for r in self.reasons()]
        if self.decision_id:
            lines.append(f"decision {self.decision_id}")
        if public_url and self.decision_id:
            lines.append(f"{public_url.rstrip('/')}/decisions/{self.decision_id}")
        return "\n".join(lines)


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, default=str,
                      ensure_ascii=False).encode()


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def webhook_body(v: Violation, source: str = "pdp") -> bytes:
    return _json({
        "id": v.id,
        "type": EVENT_TYPE,
        "source": source,
        "time": v.at.isoformat(),
        "tenant": v.tenant,
        "policy": v.policy,
        "decision": dict(v.summary),
    })


def sign(secret: str, body: bytes) -> str:
    """The ``X-PDP-Signature`` value: ``sha256=<hex HMAC-SHA256(secret, body)>``.

    Receivers recompute it over the raw body and compare with ``hmac.compare_digest``.
    """
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(sign(secret, body), header)


def pagerduty_payload(ch: PagerDutyChannel, v: Violation, source: str = "pdp") -> dict[str, Any]:
    """Events API v2 trigger (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/)."""
    return {
        "routing_key": ch.routing_key,
        "event_action": "trigger",
        "dedup_key": _clip(render_key(ch.dedup_key, v.tenant, v.policy), 255),
        "payload": {
            "summary": _clip(v.headline() + (": " + "; ".join(v.reasons()) if v.reasons() else ""),
                             1024),
            "source": source,
            "severity": ch.severity,
            "timestamp": v.at.isoformat(),
            "component": v.policy,
            "group": v.tenant,
            "class": EVENT_TYPE,
            "custom_details": json.loads(_json(dict(v.summary))),
        },
    }


def opsgenie_payload(ch: OpsgenieChannel, v: Violation, source: str = "pdp") -> dict[str, Any]:
    """Create-alert request (https://docs.opsgenie.com/docs/alert-api#create-alert)."""
    details = {"tenant": v.tenant, "policy": v.policy, "decision_id": v.decision_id,
               "checkpoint": v.checkpoint}
    return {
        "message": _clip(v.headline(), 130),
        "alias": _clip(render_key(ch.alias, v.tenant, v.policy), 512),
        "description": _clip(v.text() + "\n\n" + _json(dict(v.summary)).decode(), 15000),
        "details": {k: _clip(str(val), 8000) for k, val in details.items() if val},
        "tags": list(dict.fromkeys(("pdp", *ch.tags))),
        "entity": v.tenant,
        "source": source,
        "priority": ch.priority,
    }


def google_chat_payload(v: Violation, public_url: str | None = None) -> dict[str, Any]:
    return {"text": _clip(v.text(public_url), 4000)}


def email_message(
    ch: EmailChannel, v: Violation, sender: str, public_url: str | None = None
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(ch.to)
    msg["Subject"] = ch.subject or v.headline()
    msg["X-PDP-Policy"] = v.policy
    msg["X-PDP-Tenant"] = v.tenant
    body = (v.text(public_url)
            + "\n\nAt most one mail per policy per UTC day; see the audit log for every deny."
            + "\n\n" + json.dumps(dict(v.summary), indent=2, sort_keys=True, default=str))
    msg.set_content(body)
    return msg
