"""pdp replay over a recorded audit file of 10 000 decisions (speed: bench/replay_bench.py)."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pdp.audit.verify import verify_paths
from pdp.authoring.replay import audit_files, main, parse_since, replay
from pdp.policy.loader import load_text
from tests.authoring.auditgen import CONFIGS, generate

N = 10_000
END = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
STEP = timedelta(seconds=30)

DRAFT = """
tenant: acme
name: no-debug-anywhere
status: draft
checkpoints: [push]
rule:
  cel:
    deny: >
      type(config) == map && "exporters" in config && type(config.exporters) == map
      && config.exporters.exists(n, n == "debug" || n.startsWith("debug/"))
    message: '"debug exporter on " + agent.id'
"""


def _expected(since_index: int = 0) -> tuple[int, int, int]:
    """(considered, would deny, newly denied) from the generator's formula."""
    considered = deny = newly = 0
    for i in range(since_index, N):
        if i % 10 == 0:
            continue  # another tenant
        considered += 1
        if i % len(CONFIGS) == 1:
            deny += 1
            newly += (i // 4) % 2 == 0  # staging: was allowed at the time
    return considered, deny, newly


def test_replay_of_10000_recorded_decisions(tmp_path: Path) -> None:
    path = generate(tmp_path / "audit.jsonl", N, end=END, step=STEP)
    assert verify_paths([str(path)]).ok
    report = asyncio.run(replay(load_text(DRAFT, "draft.yaml"), audit_files([tmp_path]),
                                END - timedelta(days=30)))
    considered, deny, newly = _expected()
    assert report.records == N
    assert (report.considered, report.replayed, report.skipped) == (considered, considered, 0)
    assert (report.would_deny, report.newly_denied) == (deny, newly)
    [group] = report.sorted_groups()
    assert (group.policy, group.code, group.count) == ("no-debug-anywhere", "POLICY_DENIED", deny)
    assert len(group.examples) == 3
    ex = group.examples[0]
    assert ex.message == f"debug exporter on {ex.subject}"
    assert ex.values["n"] == "debug"
    assert sum(group.messages.values()) == deny


def test_since_window_rotated_files_and_json(tmp_path: Path) -> None:
    # two files: a rotated one (older half) and the active one
    generate(tmp_path / "audit.jsonl.000000000001", 1000, end=END - STEP * 1000, step=STEP)
    generate(tmp_path / "audit.jsonl", 1000, end=END, step=STEP)
    files = audit_files([tmp_path / "audit.jsonl"])
    assert [f.name for f in files] == ["audit.jsonl.000000000001", "audit.jsonl"]
    out = io.StringIO()
    since = (END - STEP * 500).isoformat()
    assert main_json(DRAFT, tmp_path, since, out) == 0
    data = json.loads(out.getvalue())
    assert data["records"] == 2000
    # only the last 500 decisions of the active file are in the window
    considered = sum(1 for i in range(500, 1000) if i % 10)
    assert data["considered"] == considered
    assert data["groups"][0]["policy"] == "no-debug-anywhere"


def main_json(draft: str, audit: Path, since: str, out: io.StringIO) -> int:
    policy = audit / "draft.yaml"
    policy.write_text(draft)
    return main(str(policy), since, [str(audit)], as_json=True, out=out)


def test_counter_rules_replay_on_recorded_time_with_fresh_counters(tmp_path: Path) -> None:
    generate(tmp_path / "audit.jsonl", 400, end=END, step=timedelta(minutes=10))
    cap = load_text("tenant: acme\nname: cap\nstatus: draft\ncheckpoints: [push]\nrule:\n"
                    "  daily_cap: {max_count: 50, timezone: UTC, scope: tenant}\n")
    report = asyncio.run(replay(cap, audit_files([tmp_path]), END - timedelta(days=10)))
    # 144 decisions a day, 9 of 10 of them acme's: each UTC day allows 50, denies the rest
    days: dict[str, int] = {}
    start = END - timedelta(minutes=10) * 400
    for i in range(400):
        if i % 10:
            day = (start + timedelta(minutes=10) * i).date().isoformat()
            days[day] = days.get(day, 0) + 1
    assert report.would_deny == sum(max(0, n - 50) for n in days.values())
    assert {g.code for g in report.sorted_groups()} == {"DAILY_CAP_EXCEEDED"}


def test_bad_inputs_exit_2(tmp_path: Path) -> None:
    out = io.StringIO()
    assert main(str(tmp_path / "nope.yaml"), "7d", [str(tmp_path)], out=out) == 2
    policy = tmp_path / "p.yaml"
    policy.write_text(DRAFT)
    assert main(str(policy), "seven days", [str(tmp_path)], out=out) == 2
    assert main(str(policy), "7d", [str(tmp_path / "missing")], out=out) == 2
    assert parse_since("2h", END) == END - timedelta(hours=2)
    assert parse_since("2025-01-01T00:00:00Z") == datetime(2025, 1, 1, tzinfo=UTC)


def test_replay_reads_configs_named_by_hash(tmp_path: Path) -> None:
    """Decisions that name their config by hash (Config.Seen events hold the texts) replay
    like the inline form; a hash with no Config.Seen is skipped and says why."""
    n, end = 2_000, END
    inline = generate(tmp_path / "a" / "audit.jsonl", n, end=end, step=STEP)
    refs = generate(tmp_path / "b" / "audit.jsonl", n, end=end, step=STEP, config_refs=True)
    assert verify_paths([str(refs)]).ok
    assert b'"config_sha256"' in refs.read_bytes()
    assert refs.stat().st_size < inline.stat().st_size
    since = END - timedelta(days=30)
    draft = load_text(DRAFT, "draft.yaml")
    a = asyncio.run(replay(draft, audit_files([inline.parent]), since))
    b = asyncio.run(replay(draft, audit_files([refs.parent]), since))
    assert (b.records, b.considered, b.replayed, b.skipped) == \
        (a.records, a.considered, a.replayed, 0)
    assert (b.would_deny, b.newly_denied) == (a.would_deny, a.newly_denied) != (0, 0)
    # Without its Config.Seen events the history cannot be replayed: skipped, with a reason.
    lines = [ln for ln in refs.read_bytes().splitlines(keepends=True)
             if b'"type":"Config.Seen"' not in ln]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "audit.jsonl").write_bytes(b"".join(lines))
    c = asyncio.run(replay(draft, audit_files([tmp_path / "c"]), since))
    assert c.replayed == 0 and c.skipped == b.considered
    assert all("Config.Seen" in reason for reason in c.skip_reasons)


def test_replay_merges_the_ledgers_of_several_workers_in_time_order(tmp_path: Path) -> None:
    """--workers N writes one ledger per worker; given their directory, replay reads every
    ledger and replays the decisions in time order across them (counter windows and clock
    rules see time move forward), not one worker's history after the other's."""
    from pdp.authoring.harness import parse_time
    from pdp.authoring.replay import ReplayReport, merged_decisions

    generate(tmp_path / "audit-w0.jsonl", 200, end=END, step=STEP, config_refs=True)
    generate(tmp_path / "audit-w1.jsonl", 200, end=END - STEP / 2, step=STEP,
             config_refs=True)
    files = audit_files([tmp_path])
    assert {f.name for f in files} == {"audit-w0.jsonl", "audit-w1.jsonl"}
    report = ReplayReport([], END, [str(f) for f in files])
    times = [parse_time(e["time"]) for e in merged_decisions(files, report)]
    assert len(times) == 400 == report.records
    assert times == sorted(times) and times[0] < times[1] < times[2]
    draft = load_text(DRAFT, "draft.yaml")
    both = asyncio.run(replay(draft, files, END - timedelta(days=1)))
    one = asyncio.run(replay(draft, audit_files([tmp_path / "audit-w0.jsonl"]),
                             END - timedelta(days=1)))
    assert both.replayed > one.replayed > 0
