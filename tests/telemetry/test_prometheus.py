"""The Prometheus scrape endpoint serves every metric of the issue."""

from __future__ import annotations

import re

import httpx

from pdp.telemetry import Telemetry, TelemetrySettings


def sample(text: str, name: str, **labels: str) -> float:
    """Value of the one sample ``name{...}`` whose labels include ``labels``."""
    found = []
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            found.append(float(m.group(3)))
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_scrape_serves_all_metrics() -> None:
    tel = Telemetry(TelemetrySettings(enabled=True, prometheus_port=0))
    hits_misses = [30, 10]
    tel.observe_cache(lambda: (hits_misses[0], hits_misses[1]))
    tel.observe_audit(lambda: 4, lambda: 17)
    tel.observe_notifications(lambda: {("webhook", "sent"): 3, ("email", "suppressed"): 2,
                                       ("webhook", "backlog"): 7})
    tel.observe_lane(lambda: (5, 2))
    tel.start()
    try:
        assert tel.prometheus_port
        for _ in range(3):
            tel.record_decision("allow", "acme", "push", 0.0002)
        tel.record_decision("deny", "acme", "push", 0.003)
        tel.record_decision("deny", "globex", "device", 0.06)
        tel.record_deadline_exceeded("globex", "device")
        tel.record_counter_error("acme")
        text = httpx.get(f"http://127.0.0.1:{tel.prometheus_port}/metrics", timeout=5,
                         trust_env=False).text

        assert sample(text, "pdp_decisions_total", outcome="allow", tenant="acme",
                      checkpoint="push") == 3
        assert sample(text, "pdp_decisions_total", outcome="deny", tenant="acme",
                      checkpoint="push") == 1
        assert sample(text, "pdp_decisions_total", outcome="deny", tenant="globex",
                      checkpoint="device") == 1
        assert sample(text, "pdp_decision_duration_seconds_count", tenant="acme",
                      checkpoint="push") == 4
        assert sample(text, "pdp_decision_duration_seconds_bucket", tenant="acme",
                      checkpoint="push", le="0.00025") == 3
        assert sample(text, "pdp_decision_duration_seconds_bucket", tenant="globex",
                      checkpoint="device", le="0.05") == 0
        assert sample(text, "pdp_deadline_exceeded_total", tenant="globex",
                      checkpoint="device") == 1
        assert sample(text, "pdp_counter_store_errors_total", tenant="acme",
                      code="COUNTER_STORE_UNAVAILABLE") == 1
        assert sample(text, "pdp_cel_cache_hit_ratio") == 0.75
        assert sample(text, "pdp_cel_cache_lookups_total", result="hit") == 30
        assert sample(text, "pdp_audit_queue_depth") == 4
        assert sample(text, "pdp_audit_spooled_events") == 17
        assert sample(text, "pdp_notifications_total", channel="webhook", result="sent") == 3
        # the backlog is a level (a gauge), not one of the counted results
        assert sample(text, "pdp_notifications_backlog", channel="webhook") == 7
        assert 'result="backlog"' not in text
        assert sample(text, "pdp_server_bulk_lane_waits_total", result="turn") == 3
        assert sample(text, "pdp_server_bulk_lane_waits_total", result="timed_out") == 2

        # observable gauges are read at scrape time
        hits_misses[:] = [90, 10]
        text = httpx.get(f"http://127.0.0.1:{tel.prometheus_port}/metrics", timeout=5,
                         trust_env=False).text
        assert sample(text, "pdp_cel_cache_hit_ratio") == 0.9
    finally:
        tel.shutdown()
    # the endpoint is gone after shutdown
    try:
        httpx.get(f"http://127.0.0.1:{tel.prometheus_port}/metrics", timeout=1, trust_env=False)
        raise AssertionError("scrape endpoint still up")
    except httpx.TransportError:
        pass


def test_failing_callback_does_not_break_scrape() -> None:
    tel = Telemetry(TelemetrySettings(enabled=True, prometheus_port=0, tenant_label=False))

    def broken() -> tuple[int, int]:
        raise RuntimeError("cache gone")

    tel.observe_cache(broken)
    tel.observe_audit(lambda: 1, lambda: 2)
    tel.start()
    try:
        tel.record_decision("allow", "acme", "push", 0.001)
        text = httpx.get(f"http://127.0.0.1:{tel.prometheus_port}/metrics", timeout=5,
                         trust_env=False).text
        assert sample(text, "pdp_audit_queue_depth") == 1
        assert sample(text, "pdp_cel_cache_hit_ratio") == 0  # no lookups seen
        # tenant_label=False keeps the tenant off the series
        assert sample(text, "pdp_decisions_total", outcome="allow", checkpoint="push") == 1
        assert 'tenant="acme"' not in text
    finally:
        tel.shutdown()


def test_two_instances_do_not_collide() -> None:
    a = Telemetry(TelemetrySettings(enabled=True, prometheus_port=0))
    b = Telemetry(TelemetrySettings(enabled=True, prometheus_port=0))
    a.start()
    b.start()
    try:
        a.record_decision("allow", "t", "push", 0.001)
        ta = httpx.get(f"http://127.0.0.1:{a.prometheus_port}/metrics", trust_env=False).text
        tb = httpx.get(f"http://127.0.0.1:{b.prometheus_port}/metrics", trust_env=False).text
        assert "pdp_decisions_total{" in ta and "pdp_decisions_total{" not in tb
    finally:
        a.shutdown()
        b.shutdown()
