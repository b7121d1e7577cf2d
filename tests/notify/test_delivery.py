"""Each channel against a real HTTP / SMTP server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import itertools
import threading
from pathlib import Path
from typing import Any

import pytest

from pdp.notify import (
    BACKLOG,
    DROPPED,
    FAILED,
    GIVEN_UP_EVENT,
    RETRIED,
    SENT,
    Channel,
    EmailChannel,
    GoogleChatChannel,
    Notifier,
    NotifySettings,
    OpsgenieChannel,
    PagerDutyChannel,
    WebhookChannel,
)
from tests.notify.conftest import HttpReceiver, SmtpSink
from tests.support.procs import free_port

SUMMARY: dict[str, Any] = {
    "decision_id": "d-123",
    "checkpoint": "push",
    "reasons": [{"code": "POLICY_DENY", "message": "TLS insecure on non-localhost"}],
    "subject": {"agent": "agent-7", "config": "cfg-9"},
}


def fast(**kw: Any) -> NotifySettings:
    base: dict[str, Any] = dict(backoff_initial_s=0.01, backoff_max_s=0.05,
                                attempt_timeout_s=2.0, http_trust_env=False)
    base.update(kw)
    return NotifySettings(**base)


def outcomes(n: Notifier) -> dict[tuple[str, str], int]:
    """The notifier's counts without the backlog levels (0 once all is delivered)."""
    return {k: v for k, v in n.counts().items() if k[1] != BACKLOG}


async def test_all_http_channels(http_receiver: HttpReceiver) -> None:
    rec = http_receiver
    chans: list[Channel] = [
        WebhookChannel(url=rec.url("/hook"), secret="topsecret", headers={"X-Team": "infra"}),
        PagerDutyChannel(routing_key="R0UTING", url=rec.url("/pd"), severity="critical"),
        OpsgenieChannel(api_key="GK-1", url=rec.url("/og"), tags=("prod",)),
        GoogleChatChannel(url=rec.url("/chat?key=abc&token=xyz")),
    ]
    n = Notifier(fast())
    await n.start()
    try:
        assert n.notify("no-insecure-tls", "acme", SUMMARY, chans) == 4
        assert await n.drain(10)
    finally:
        await n.close()
    kinds = ("webhook", "pagerduty", "opsgenie", "google_chat")
    assert outcomes(n) == {(k, SENT): 1 for k in kinds}

    (hook,) = rec.on("/hook")
    expected = "sha256=" + hmac.new(b"topsecret", hook.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(hook.headers["x-pdp-signature"], expected)
    assert hook.headers["content-type"] == "application/json"
    assert hook.headers["x-team"] == "infra"
    body = hook.json()
    assert body["type"] == "policy.deny"
    assert body["policy"] == "no-insecure-tls" and body["tenant"] == "acme"
    assert body["decision"] == SUMMARY
    assert hook.headers["x-pdp-delivery"] == body["id"]

    (pd,) = rec.on("/pd")
    p = pd.json()
    assert p["routing_key"] == "R0UTING"
    assert p["event_action"] == "trigger"
    assert p["dedup_key"] == "pdp:acme:no-insecure-tls"
    assert set(p["payload"]) >= {"summary", "source", "severity"}
    assert p["payload"]["severity"] == "critical"
    assert "no-insecure-tls" in p["payload"]["summary"]
    assert "TLS insecure" in p["payload"]["summary"]
    assert p["payload"]["custom_details"]["decision_id"] == "d-123"

    (og,) = rec.on("/og")
    assert og.headers["authorization"] == "GenieKey GK-1"
    o = og.json()
    assert 0 < len(o["message"]) <= 130 and "no-insecure-tls" in o["message"]
    assert o["alias"] == "pdp:acme:no-insecure-tls"
    assert o["priority"] == "P3" and o["tags"] == ["pdp", "prod"]
    assert o["details"]["decision_id"] == "d-123"
    assert all(isinstance(v, str) for v in o["details"].values())

    (chat,) = rec.on("/chat?key=abc&token=xyz")
    assert chat.headers["content-type"].startswith("application/json")
    c = chat.json()
    assert set(c) == {"text"}
    assert "no-insecure-tls" in c["text"] and "d-123" in c["text"]


async def test_webhook_retries_with_backoff_then_succeeds(http_receiver: HttpReceiver) -> None:
    rec = http_receiver
    rec.script["/hook"] = [503, 429, 200]
    n = Notifier(fast(max_attempts=4, backoff_initial_s=0.05, backoff_max_s=1.0))
    await n.start()
    try:
        n.notify("p", "t", SUMMARY, [WebhookChannel(url=rec.url("/hook"), secret="s")])
        assert await n.drain(10)
    finally:
        await n.close()
    hits = rec.on("/hook")
    assert len(hits) == 3
    assert len({h.body for h in hits}) == 1  # same delivery, same signature, on every try
    assert outcomes(n) == {("webhook", RETRIED): 2, ("webhook", SENT): 1}


async def test_backoff_grows_exponentially(http_receiver: HttpReceiver) -> None:
    rec = http_receiver
    rec.script["/hook"] = [500, 500, 500, 200]
    n = Notifier(fast(max_attempts=4, backoff_initial_s=0.1, backoff_max_s=5.0))
    await n.start()
    try:
        n.notify("p", "t", SUMMARY, [WebhookChannel(url=rec.url("/hook"), secret="s")])
        assert await n.drain(10)
    finally:
        await n.close()
    stamps = [r.at for r in rec.on("/hook")]
    assert len(stamps) == 4
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # waits ~0.1, ~0.2, ~0.4 s (+-20 % jitter)
    assert 0.07 < gaps[0] < 0.2 and 0.15 < gaps[1] < 0.35 and 0.3 < gaps[2] < 0.65


async def test_permanent_error_not_retried_and_counted(http_receiver: HttpReceiver) -> None:
    rec = http_receiver
    rec.script["/pd"] = [400]
    n = Notifier(fast())
    await n.start()
    try:
        n.notify("p", "t", SUMMARY, [PagerDutyChannel(routing_key="k", url=rec.url("/pd"))])
        assert await n.drain(10)
    finally:
        await n.close()
    assert len(rec.on("/pd")) == 1
    assert outcomes(n) == {("pagerduty", FAILED): 1}


async def test_unreachable_endpoint_fails_after_retries() -> None:
    port = free_port()  # nothing listens there
    n = Notifier(fast(max_attempts=3))
    await n.start()
    try:
        n.notify("p", "t", SUMMARY,
                 [GoogleChatChannel(url=f"http://127.0.0.1:{port}/chat?key=k")])
        assert await n.drain(10)
    finally:
        await n.close()
    assert outcomes(n) == {("google_chat", RETRIED): 2, ("google_chat", FAILED): 1}


async def test_notify_never_blocks_and_drops_when_full(http_receiver: HttpReceiver) -> None:
    rec = http_receiver
    rec.delay_s = 0.3  # a slow endpoint
    n = Notifier(fast(queue_size=3, workers=1))
    await n.start()
    chan = [WebhookChannel(url=rec.url("/hook"), secret="s")]
    try:
        # A plain function, not a coroutine: it cannot wait for the slow endpoint or for room
        # in the queue. The ten calls run without the loop turning, so the worker has taken
        # none yet: three fit, seven are dropped (and counted) instead of blocking.
        assert not inspect.iscoroutinefunction(n.notify)
        queued = [n.notify("p", "t", SUMMARY, chan) for _ in range(10)]
        assert sum(queued) == 3
        assert n.counts()[("webhook", DROPPED)] == 7
        assert await n.drain(10)
    finally:
        await n.close()
    assert n.counts()[("webhook", SENT)] == 3


async def test_notify_never_raises(http_receiver: HttpReceiver) -> None:
    from collections.abc import Iterator, Mapping

    class Broken(Mapping[str, Any]):
        def __getitem__(self, k: str) -> Any:
            raise RuntimeError("boom")

        def __iter__(self) -> Iterator[str]:
            raise RuntimeError("boom")

        def __len__(self) -> int:
            return 1

    n = Notifier(fast())
    await n.start()
    chan = [WebhookChannel(url=http_receiver.url("/hook"), secret="s")]
    try:
        assert n.notify("p", "t", Broken(), chan) == 0  # cannot even be copied
        # not JSON-encodable values are sent as strings, not lost
        assert n.notify("p", "t", {"x": object(), "reasons": 5}, chan) == 1
        assert await n.drain(10)
    finally:
        await n.close()
    (hit,) = http_receiver.on("/hook")
    assert hit.json()["decision"]["x"].startswith("<object object")


async def test_notify_from_another_thread(http_receiver: HttpReceiver) -> None:
    rec = http_receiver
    n = Notifier(fast())
    await n.start()
    try:
        th = threading.Thread(target=n.notify, args=(
            "p", "t", SUMMARY, [WebhookChannel(url=rec.url("/hook"), secret="s")]))
        th.start()
        th.join()
        await asyncio.to_thread(rec.wait_for, 1, "/hook")
        assert await n.drain(10)
    finally:
        await n.close()
    assert outcomes(n) == {("webhook", SENT): 1}


async def test_email_delivered(smtp_sink: SmtpSink) -> None:
    n = Notifier(fast(smtp_port=smtp_sink.port, smtp_from="pdp@example.com"))
    await n.start()
    try:
        n.notify("freeze", "acme", SUMMARY, [EmailChannel(to=("oncall@example.com",))])
        assert await n.drain(10)
    finally:
        await n.close()
    (msg,) = smtp_sink.messages
    assert msg["To"] == "oncall@example.com"
    assert msg["From"] == "pdp@example.com"
    assert "freeze" in msg["Subject"] and "acme" in msg["Subject"]
    assert msg["X-PDP-Policy"] == "freeze"
    assert "TLS insecure on non-localhost" in msg.get_payload()
    assert smtp_sink.envelopes == [("pdp@example.com", ["oncall@example.com"])]


async def test_close_keeps_what_it_could_not_send(http_receiver: HttpReceiver,
                                                  tmp_path: Path) -> None:
    """What is not delivered at close stays in the store; the next start delivers it."""
    rec = http_receiver
    rec.delay_s = 0.5
    state = str(tmp_path / "notify.sqlite3")
    n = Notifier(fast(workers=1, state_path=state))
    await n.start()
    chan = [WebhookChannel(url=rec.url("/hook"), secret="s")]
    for i in range(5):
        n.notify("p", "t", {**SUMMARY, "decision_id": f"d-{i}"}, chan)
    await n.close(timeout=0.2)
    assert n.counts().get(("webhook", DROPPED), 0) == 0
    assert n.notify("p", "t", SUMMARY, chan) == 0  # closed: dropped, not raised
    rec.delay_s = 0.0
    again = Notifier(fast(state_path=state))
    await again.start()
    try:
        assert await again.drain(10)
    finally:
        await again.close()
    ids = [h.json()["decision"]["decision_id"] for h in rec.on("/hook")]
    assert sorted(set(ids)) == [f"d-{i}" for i in range(5)]  # at least once, none lost
    first = [i for k, i in enumerate(ids) if i not in ids[:k]]
    assert first == [f"d-{i}" for i in range(5)]  # in order


async def test_permanent_error_is_given_up_and_audited(http_receiver: HttpReceiver) -> None:
    http_receiver.script["/hook"] = [410]
    events: list[dict[str, Any]] = []
    n = Notifier(fast(), emit=events.append)
    await n.start()
    try:
        n.notify("p", "t", SUMMARY, [WebhookChannel(url=http_receiver.url("/hook"),
                                                    secret="s")])
        assert await n.drain(10)
    finally:
        await n.close()
    (ev,) = events
    assert ev["type"] == GIVEN_UP_EVENT and ev["channel"] == "webhook"
    assert ev["decision_id"] == "d-123" and ev["policy"] == "p" and ev["tenant"] == "t"
    assert ev["reason"] == "permanent error" and "410" in ev["error"]
    assert outcomes(n) == {("webhook", FAILED): 1}
    assert n.counts()[("webhook", BACKLOG)] == 0


@pytest.mark.parametrize("status", [200, 202, 204])
async def test_any_2xx_is_success(http_receiver: HttpReceiver, status: int) -> None:
    http_receiver.script["/pd"] = [status]
    n = Notifier(fast())
    await n.start()
    try:
        n.notify("p", "t", SUMMARY, [PagerDutyChannel(routing_key="k",
                                                      url=http_receiver.url("/pd"))])
        assert await n.drain(10)
    finally:
        await n.close()
    assert outcomes(n) == {("pagerduty", SENT): 1}


async def test_close_ends_the_dispatcher_even_if_its_cancellation_is_swallowed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On Python 3.11 a cancellation landing as an ``asyncio.timeout`` expires is lost (it
    becomes the TimeoutError the loop suppresses): the dispatcher ran on after close(),
    and the event loop's shutdown waited for it forever. close() now tells it to stop too."""
    n = Notifier(fast())
    await n.start()
    tasks = list(n._tasks)
    for t in tasks:  # every cancellation of the notifier's own loops is lost
        monkeypatch.setattr(t, "cancel", lambda msg=None: False)
    await n.close()
    dispatcher = [t for t in tasks if "dispatch" in (t.get_coro().__qualname__)]
    assert dispatcher
    await asyncio.wait(dispatcher, timeout=30)
    assert all(t.done() for t in dispatcher)
    for t in tasks:  # the store loop has no timeout to race: cancelled for real here
        if not t.done():
            asyncio.Task.cancel(t)
    await asyncio.gather(*tasks, return_exceptions=True)
