"""Replay benchmark: a draft policy against a recorded audit file of 10 000+ decisions.

Writes a chained audit file (tests/authoring/auditgen.py: real decision events, valid hash
chain, 200 distinct configs), then times ``pdp replay`` over it end to end (reading, rebuilding
requests, parsing each distinct config once, deciding, grouping). The target is < 10 s.
This is a benchmark, not a test.

    python bench/replay_bench.py [N]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pdp, tests

from pdp.authoring.replay import audit_files, format_report, replay
from pdp.logging import configure_logging
from pdp.policy.loader import load_text
from tests.authoring.auditgen import generate

DRAFT = """
tenant: acme
name: eu-endpoints-everywhere
status: draft
checkpoints: [push, auto_apply]
rule:
  cel:
    deny: >
      type(config) == map && "exporters" in config && type(config.exporters) == map
      && config.exporters.exists(n, type(config.exporters[n]) == map
           && "endpoint" in config.exporters[n]
           && !config.exporters[n].endpoint.isLocalhost()
           && !config.exporters[n].endpoint.endpointHost().endsWith(".eu"))
    message: '"non-EU endpoint on " + agent.id'
"""


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        t0 = time.perf_counter()
        generate(path, n, step=timedelta(seconds=20))
        print(f"generated {n} decisions ({path.stat().st_size / 1e6:.1f} MB) in"
              f" {time.perf_counter() - t0:.2f}s")
        policies = load_text(DRAFT, "draft.yaml")
        t0 = time.perf_counter()
        report = asyncio.run(replay(policies, audit_files([path]),
                                    datetime.now(UTC) - timedelta(days=7)))
        elapsed = time.perf_counter() - t0
    print(format_report(report))
    print(f"\nreplay of {report.replayed} decisions ({report.records} records read):"
          f" {elapsed:.2f}s ({elapsed / max(1, report.records) * 1e6:.0f} µs per record)"
          f" -> {'OK' if elapsed < 10 else 'TOO SLOW'} (target < 10 s)")
    return 0 if elapsed < 10 else 1


if __name__ == "__main__":
    sys.exit(main())
