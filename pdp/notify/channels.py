"""Notification channels of one policy, and the parser for its YAML ``notify:`` list.

A policy's ``notify:`` is a list of one-key mappings, the key naming the channel kind::

    notify:
      - webhook: {url: https://hooks.example.com/pdp, secret_env: HOOK_SECRET}
      - pagerduty: {routing_key_env: PD_KEY, severity: critical}
      - opsgenie: {api_key_env: OPSGENIE_KEY, priority: P2}
      - google_chat: {url_env: CHAT_WEBHOOK_URL}
      - email: {to: [oncall@example.com]}

Every secret (webhook ``secret``, PagerDuty ``routing_key``, Opsgenie ``api_key``, the
Google Chat ``url``, which embeds its key) may be given literally or, better, as
``<field>_env: VARIABLE`` read from the environment when the policy is parsed. A policy
reads only its own tenant's variables, named ``NOTIFY_<tenant>__<NAME>``
(:func:`tenant_env_prefix`): the channel sends the value to the URL the policy names, so a
policy that could read any variable could send out pdp's credentials (``PDP_*``), the
host's (cloud keys) or another tenant's channel secrets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
DEFAULT_OPSGENIE_URL = "https://api.opsgenie.com/v2/alerts"

PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")
OPSGENIE_PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
_EMAIL = re.compile(r"\A[^@\s<>,;]+@[^@\s<>,;]+\Z")  # \Z: no final newline
#: pdp's own environment (settings such as PDP_REDIS_URL or PDP_POLICY_STORE, which may
#: carry a Redis password; a client's PDP_TOKEN): never a channel's secret. A policy's
#: author writes ``*_env`` and the channel sends the value to the URL the policy names, so
#: reading these would hand the operator's credentials (every tenant's store) to whoever
#: gets one policy of one tenant activated.
OWN_ENV_PREFIX = "PDP_"
#: Every variable a policy may read starts with this, then its tenant (tenant_env_prefix).
TENANT_ENV_PREFIX = "NOTIFY_"


def tenant_env_prefix(tenant: str) -> str:
    """``NOTIFY_<tenant>__``: the start of every variable a policy of ``tenant`` may read.

    Tenant names hold letters, digits, ``_`` and ``-``; variable names (in a shell) cannot
    hold ``-``. So ``_`` is written ``_5F`` and ``-`` ``_2D`` (``acme`` stays ``acme``,
    ``acme-eu`` is ``acme_2Deu``): an ``_`` in the encoded name is always followed by two hex
    digits, never by the ``__`` that ends it, so one tenant's prefix is never the start of
    another's (``NOTIFY_acme__`` does not match ``NOTIFY_acme_2Deu__KEY``)."""
    return (TENANT_ENV_PREFIX + tenant.replace("_", "_5F").replace("-", "_2D") + "__")


class ChannelConfigError(ValueError):
    """A ``notify:`` entry is malformed; the message starts with its path, e.g.
    ``notify[1].webhook.url: ...``."""


@dataclass(frozen=True, slots=True)
class WebhookChannel:
    """JSON POST, body signed: ``X-PDP-Signature: sha256=<hex HMAC-SHA256(secret, body)>``."""

    kind: ClassVar[str] = "webhook"
    url: str
    secret: str = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PagerDutyChannel:
    """PagerDuty Events API v2 ``trigger``; ``dedup_key`` may use ``{tenant}``, ``{policy}``
    (default ``pdp:{tenant}:{policy}``: repeated denies update one open incident)."""

    kind: ClassVar[str] = "pagerduty"
    routing_key: str = field(repr=False)
    severity: str = "error"
    dedup_key: str = "pdp:{tenant}:{policy}"
    url: str = DEFAULT_PAGERDUTY_URL


@dataclass(frozen=True, slots=True)
class OpsgenieChannel:
    """Opsgenie Alert API (``Authorization: GenieKey <api_key>``); ``alias`` deduplicates
    like PagerDuty's ``dedup_key``. EU accounts set ``url`` to api.eu.opsgenie.com."""

    kind: ClassVar[str] = "opsgenie"
    api_key: str = field(repr=False)
    priority: str = "P3"
    alias: str = "pdp:{tenant}:{policy}"
    tags: tuple[str, ...] = ()
    url: str = DEFAULT_OPSGENIE_URL


@dataclass(frozen=True, slots=True)
class GoogleChatChannel:
    """A Google Chat incoming webhook (``{"text": ...}``)."""

    kind: ClassVar[str] = "google_chat"
    url: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class EmailChannel:
    """Mail over SMTP (server in :class:`~pdp.notify.NotifySettings`); at most one per UTC
    day per tenant + policy, across all sidecars sharing the counter store."""

    kind: ClassVar[str] = "email"
    to: tuple[str, ...]
    subject: str | None = None


Channel = WebhookChannel | PagerDutyChannel | OpsgenieChannel | GoogleChatChannel | EmailChannel
CHANNEL_KINDS = ("webhook", "pagerduty", "opsgenie", "google_chat", "email")


def render_key(template: str, tenant: str, policy: str) -> str:
    """Substitute ``{tenant}`` / ``{policy}`` (plain replacement, no ``str.format``)."""
    return template.replace("{tenant}", tenant).replace("{policy}", policy)


class _Fields:
    """One channel's mapping being read; tracks unknown keys and builds messages."""

    def __init__(self, path: str, data: object, env: Mapping[str, str],
                 tenant: str | None = None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ChannelConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
        for k in data:
            if not isinstance(k, str):
                raise ChannelConfigError(f"{path}: keys must be strings, got {k!r}")
        self.path = path
        self.data: Mapping[str, Any] = data
        self.env = env
        self.tenant = tenant
        self.used: set[str] = set()

    def err(self, key: str, msg: str) -> ChannelConfigError:
        return ChannelConfigError(f"{self.path}.{key}: {msg}")

    def str_(self, key: str, default: str | None = None, *, required: bool = False,
             secret: bool = False) -> str | None:
        self.used.add(key)
        env_key = f"{key}_env"
        if secret:
            self.used.add(env_key)
        has, has_env = key in self.data, secret and env_key in self.data
        if has and has_env:
            raise self.err(key, f"give either {key} or {env_key}, not both")
        if has_env:
            var = self.data[env_key]
            if not isinstance(var, str) or not var:
                raise self.err(env_key, "must name an environment variable")
            if var.upper().startswith(OWN_ENV_PREFIX):
                raise self.err(env_key, f"{var} is one of pdp's own variables (its settings and"
                                        " credentials); a policy may not read it: name a"
                                        " variable set for this channel")
            if self.tenant is not None and not var.startswith(
                    prefix := tenant_env_prefix(self.tenant)):
                raise self.err(env_key, f"a policy of tenant {self.tenant} reads only variables"
                                        f" named {prefix}<NAME> (its tenant's), not {var}")
            value = self.env.get(var)
            if not value:
                raise self.err(env_key, f"environment variable {var} is not set or empty")
            return value
        if not has:
            if required:
                hint = f" (or {env_key})" if secret else ""
                raise self.err(key, f"required{hint}")
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.err(key, "must be a non-empty string")
        return value

    def req(self, key: str, *, secret: bool = False) -> str:
        value = self.str_(key, required=True, secret=secret)
        assert value is not None
        return value

    def url(self, key: str, default: str | None = None, *, secret: bool = False) -> str:
        value = self.str_(key, default, required=default is None, secret=secret)
        assert value is not None
        try:
            parts = urlsplit(value)
        except ValueError as e:
            raise self.err(key, f"not a URL: {e}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.err(key, "must be an http:// or https:// URL with a host")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.str_(key, default)
        assert value is not None
        if value not in choices:
            raise self.err(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def str_list(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.err(key, "required")
            return ()
        value = self.data[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.err(key, "must be a string or a list of non-empty strings")
        if required and not value:
            raise self.err(key, "must not be empty")
        return tuple(value)

    def headers(self, key: str) -> dict[str, str]:
        self.used.add(key)
        value = self.data.get(key, {})
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.err(key, "must be a mapping of header names to strings")
        for k, v in value.items():
            if not re.fullmatch(r"[A-Za-z0-9-]+", k) or "\n" in v or "\r" in v:
                raise self.err(key, f"invalid header {k!r}")
            if k.lower() in ("x-pdp-signature", "content-type", "content-length", "host"):
                raise self.err(key, f"header {k!r} is set by pdp")
        return dict(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ChannelConfigError(
                f"{self.path}: unknown field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self.used))}")


def _parse_one(kind: str, f: _Fields) -> Channel:
    ch: Channel
    if kind == "webhook":
        ch = WebhookChannel(url=f.url("url"), secret=f.req("secret", secret=True),
                            headers=f.headers("headers"))
    elif kind == "pagerduty":
        ch = PagerDutyChannel(
            routing_key=f.req("routing_key", secret=True),
            severity=f.choice("severity", "error", PAGERDUTY_SEVERITIES),
            dedup_key=f.str_("dedup_key") or "pdp:{tenant}:{policy}",
            url=f.url("url", DEFAULT_PAGERDUTY_URL))
    elif kind == "opsgenie":
        ch = OpsgenieChannel(
            api_key=f.req("api_key", secret=True),
            priority=f.choice("priority", "P3", OPSGENIE_PRIORITIES),
            alias=f.str_("alias") or "pdp:{tenant}:{policy}",
            tags=f.str_list("tags"),
            url=f.url("url", DEFAULT_OPSGENIE_URL))
    elif kind == "google_chat":
        ch = GoogleChatChannel(url=f.url("url", secret=True))
    else:  # email
        to = f.str_list("to", required=True)
        for addr in to:
            if not _EMAIL.match(addr):
                raise f.err("to", f"not an email address: {addr!r}")
        subject = f.str_("subject")
        if subject is not None and ("\n" in subject or "\r" in subject):
            raise f.err("subject", "must be one line")
        ch = EmailChannel(to=to, subject=subject)
    f.done()
    return ch


def parse_channels(
    data: object, *, path: str = "notify", env: Mapping[str, str] | None = None,
    tenant: str | None = None
) -> list[Channel]:
    """Parse a policy's ``notify:`` value (None or a list) into channels.

    Raises :class:`ChannelConfigError` naming the offending entry and field. ``env``
    defaults to ``os.environ`` (for ``*_env`` secrets). ``tenant``: the policy's; its
    ``*_env`` may name only that tenant's variables (None: any but pdp's own, for tests of
    the channels themselves).
    """
    if data is None:
        return []
    if not isinstance(data, list):
        raise ChannelConfigError(f"{path}: expected a list of channels, got {type(data).__name__}")
    environ: Mapping[str, str] = os.environ if env is None else env
    out: list[Channel] = []
    for i, item in enumerate(data):
        here = f"{path}[{i}]"
        if not isinstance(item, Mapping) or len(item) != 1:
            raise ChannelConfigError(
                f"{here}: each channel is a mapping with exactly one key, one of "
                f"{', '.join(CHANNEL_KINDS)}")
        ((kind, body),) = item.items()
        if kind not in CHANNEL_KINDS:
            alt = {"googlechat": "google_chat", "google-chat": "google_chat",
                   "pager_duty": "pagerduty", "smtp": "email", "mail": "email"}.get(str(kind))
            hint = f" (did you mean {alt}?)" if alt else ""
            raise ChannelConfigError(
                f"{here}: unknown channel {kind!r}{hint}; known: {', '.join(CHANNEL_KINDS)}")
        out.append(_parse_one(kind, _Fields(f"{here}.{kind}", body, environ, tenant)))
    return out
