"""``pdp eval --now`` gives the decision a server gave at that instant, retry hints included:
the server answers each clock rule's ``retry_after``; eval's reasons carry it as
``retry_after_s`` (before, eval dropped it, so a DST edge probed offline could not be
checked against what rollout engines are told)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from pdp import zones
from pdp.authoring import eval as pdp_eval
from pdp.client import PdpClient
from tests.support.pdpserver import PdpServer

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _policies(now: datetime) -> str:
    """Three clock rules that all deny now and for a while (a minute or an hour passing
    between here and the server's decision does not change that)."""
    end = (now + timedelta(hours=30)).astimezone(timezone(timedelta(hours=-5)))
    h = now.astimezone(zones.zone("Australia/Lord_Howe")).hour
    day = now.astimezone(zones.zone("Asia/Kolkata")).weekday()
    return f"""\
tenant: t
name: freeze
rule:
  freeze_windows:
    windows:
      - {{start: "{(now - timedelta(hours=1)).isoformat()}", end: "{end.isoformat()}",
         reason: release}}
---
tenant: t
name: hours
rule:
  allowed_hours: {{start_hour: {(h + 3) % 24}, end_hour: {(h + 5) % 24 or 24},
                  timezone: Australia/Lord_Howe}}
---
tenant: t
name: days
rule:
  blocked_days: {{days: [{WEEKDAYS[day]}, {WEEKDAYS[(day + 1) % 7]}], timezone: Asia/Kolkata}}
"""


def test_eval_at_the_servers_instant_gives_its_reasons_and_retry_hints(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(_policies(datetime.now(UTC)))
    request = tmp_path / "req.yaml"
    request.write_text("kind: push\ntenant: t\nagent: {id: a1}\nconfig: 'a: 1'\n")
    (tmp_path / "srv").mkdir()
    server = PdpServer(tmp_path / "srv", policy_dir=policies).start()
    try:
        d = PdpClient(server.address, timeout=30).check_push("t", "a1", config_yaml="a: 1")
    finally:
        server.stop()
    assert not d.allowed
    at = d.raw.decided_at.ToDatetime(tzinfo=UTC)
    result = pdp_eval.evaluate(policies, request, now=at.isoformat())
    assert not result["allowed"]
    served = {r.policy: (r.code, r.message, r.retry_after_s) for r in d.reasons}
    offline = {r["policy"]: (r["code"], r["message"], r.get("retry_after_s"))
               for r in result["reasons"]}
    assert set(served) == set(offline) == {"freeze", "hours", "days"}
    for name, (code, message, retry) in served.items():
        assert retry is not None and retry > 0, (name, served)
        got = offline[name]
        assert got[:2] == (code, message), (name, got, served[name])
        assert got[2] is not None and abs(got[2] - retry) <= 1.0, (name, got, retry)
    out = io.StringIO()
    assert pdp_eval.main(policies, request, now=at.isoformat(), out=out) == 1
    assert "(retry after " in out.getvalue()
    out = io.StringIO()
    pdp_eval.main(policies, request, now=at.isoformat(), as_json=True, out=out)
    assert {r["policy"] for r in json.loads(out.getvalue())["reasons"]
            if r.get("retry_after_s")} == {"freeze", "hours", "days"}
