from __future__ import annotations

import pytest
import yaml

from pdp.notify import (
    ChannelConfigError,
    EmailChannel,
    GoogleChatChannel,
    OpsgenieChannel,
    PagerDutyChannel,
    WebhookChannel,
    parse_channels,
)

YAML = """
notify:
  - webhook: {url: "https://hooks.example.com/pdp", secret: s3cret, headers: {X-Team: infra}}
  - pagerduty: {routing_key_env: PD_KEY, severity: critical}
  - opsgenie: {api_key: og-key, priority: P2, tags: [prod]}
  - google_chat: {url_env: CHAT_URL}
  - email: {to: [oncall@example.com, "sre@example.com"], subject: "policy deny"}
"""


def test_parse_all_kinds() -> None:
    data = yaml.safe_load(YAML)["notify"]
    env = {"PD_KEY": "pd-routing", "CHAT_URL": "https://chat.googleapis.com/v1/spaces/x/messages?key=k"}
    chans = parse_channels(data, env=env)
    assert chans == [
        WebhookChannel(url="https://hooks.example.com/pdp", secret="s3cret",
                       headers={"X-Team": "infra"}),
        PagerDutyChannel(routing_key="pd-routing", severity="critical"),
        OpsgenieChannel(api_key="og-key", priority="P2", tags=("prod",)),
        GoogleChatChannel(url=env["CHAT_URL"]),
        EmailChannel(to=("oncall@example.com", "sre@example.com"), subject="policy deny"),
    ]
    # secrets never show in repr (policies get logged)
    assert "s3cret" not in repr(chans) and "pd-routing" not in repr(chans)
    assert "key=k" not in repr(chans) and "og-key" not in repr(chans)


def test_empty_and_none() -> None:
    assert parse_channels(None) == []
    assert parse_channels([]) == []


@pytest.mark.parametrize(("data", "message"), [
    ({"webhook": {}}, "notify: expected a list of channels"),
    ([{"slack": {"url": "https://x"}}], "notify[0]: unknown channel 'slack'"),
    ([{"googlechat": {"url": "https://x"}}], "did you mean google_chat?"),
    (["webhook"], "notify[0]: each channel is a mapping with exactly one key"),
    ([{"webhook": {"url": "https://x"}, "email": {"to": ["a@b"]}}], "exactly one key"),
    ([{"webhook": {"url": "https://x"}}], "notify[0].webhook.secret: required (or secret_env)"),
    ([{"webhook": {"url": "ftp://x", "secret": "s"}}], "notify[0].webhook.url: must be an http"),
    ([{"webhook": {"url": "https://x", "secret": "s", "retries": 3}}],
     "notify[0].webhook: unknown field(s) retries"),
    ([{"webhook": {"url": "https://x", "secret": "s", "secret_env": "S"}}],
     "give either secret or secret_env"),
    ([{"webhook": {"url": "https://x", "secret_env": "NOPE"}}],
     "notify[0].webhook.secret_env: environment variable NOPE is not set"),
    ([{"webhook": {"url": "https://x", "secret": "s", "headers": {"X-PDP-Signature": "x"}}}],
     "is set by pdp"),
    ([{"pagerduty": {"routing_key": "k", "severity": "fatal"}}],
     "notify[0].pagerduty.severity: must be one of critical, error, warning, info"),
    ([{"opsgenie": {"api_key": "k", "priority": "P9"}}], "priority: must be one of"),
    ([{"email": {}}], "notify[0].email.to: required"),
    ([{"email": {"to": []}}], "notify[0].email.to: must not be empty"),
    ([{"email": {"to": ["not-an-address"]}}], "not an email address"),
    ([{"email": {"to": "a@b.c", "subject": "x\nBcc: evil@x"}}], "subject: must be one line"),
    ([{"email": None}], "notify[0].email.to: required"),
    ([{"google_chat": "https://x"}], "notify[0].google_chat: expected a mapping"),
])
def test_errors(data: object, message: str) -> None:
    with pytest.raises(ChannelConfigError) as e:
        parse_channels(data, env={})
    assert message in str(e.value)


def test_email_to_single_string_and_path() -> None:
    assert parse_channels([{"email": {"to": "a@b.c"}}]) == [EmailChannel(to=("a@b.c",))]
    with pytest.raises(ChannelConfigError, match=r"^policies\[2\]\.notify\[0\]\.email"):
        parse_channels([{"email": {}}], path="policies[2].notify")


def test_a_tenants_policy_reads_only_its_tenants_variables() -> None:
    from pdp.notify import tenant_env_prefix

    assert tenant_env_prefix("acme") == "NOTIFY_acme__"
    assert tenant_env_prefix("acme-eu") == "NOTIFY_acme_2Deu__"
    assert tenant_env_prefix("acme_eu") == "NOTIFY_acme_5Feu__"
    env = {"NOTIFY_acme__K": "mine", "NOTIFY_acme_2Deu__K": "theirs", "HOME": "/root"}
    hook = [{"webhook": {"url": "https://x", "secret_env": "NOTIFY_acme__K"}}]
    [chan] = parse_channels(hook, env=env, tenant="acme")
    assert isinstance(chan, WebhookChannel) and chan.secret == "mine"
    for var in ("NOTIFY_acme_2Deu__K", "HOME", "NOTIFY_acme_K", "notify_acme__K"):
        with pytest.raises(ChannelConfigError) as e:
            parse_channels([{"webhook": {"url": "https://x", "secret_env": var}}], env=env,
                           tenant="acme")
        assert "reads only variables named NOTIFY_acme__<NAME>" in str(e.value), var
    # no tenant's prefix is the start of another's: '_' is always escaped, '__' ends it
    names = ["a", "a_", "a-", "a_5F", "a__b", "a-b", "a_b", "A", "ab"]
    for t in names:
        for u in names:
            if t != u:
                assert not tenant_env_prefix(u).startswith(tenant_env_prefix(t)), (t, u)
