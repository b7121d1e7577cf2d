"""A recorded audit history for replay tests and the replay benchmark.

Decisions are made into audit records the way the server does: the engine's
``decision_event`` -> pdp.audit's ``with_derived`` (Decision + PushDenied events) ->
``to_jsonable`` -> chained with ``make_entry``. The result verifies with ``pdp audit verify``.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pdp.audit.chain import ChainHead, make_entry
from pdp.audit.events import config_seen, to_jsonable, with_derived
from pdp.engine.decision import Decision, PolicyRef, Reason
from pdp.engine.recorder import decision_event
from pdp.engine.request import CheckRequest
from pdp.policy.model import Checkpoint

CONFIGS = [
    # 0: fine everywhere
    "exporters:\n  otlp/eu: {endpoint: 'otel.acme.eu:4317'}\n"
    "service:\n  pipelines:\n    traces: {receivers: [otlp], processors: [tail_sampling, batch],"
    " exporters: [otlp/eu]}\n",
    # 1: debug exporter
    "exporters:\n  debug: {verbosity: detailed}\n  otlp/eu: {endpoint: 'otel.acme.eu:4317'}\n"
    "service:\n  pipelines:\n    logs: {receivers: [otlp], exporters: [debug]}\n",
    # 2: a US endpoint
    "exporters:\n  otlp/us: {endpoint: 'ingest.us.example.com:4317'}\n",
    # 3: insecure TLS towards a remote host
    "exporters:\n  otlp/x: {endpoint: 'x.example.com:4317', tls: {insecure: true}}\n",
]


def generate(path: Path, n: int, *, end: datetime | None = None, tenant: str = "acme",
             step: timedelta = timedelta(seconds=30), distinct_configs: int = 200,
             config_refs: bool = False) -> Path:
    """Write ``n`` chained Decision records (plus the PushDenied events denies imply) to
    ``path``, one every ``step`` ending at ``end`` (default now), round-robin over agents,
    labels and ``distinct_configs`` config texts (variants of CONFIGS). Every 10th decision
    is of another tenant. ``config_refs``: the form the server writes now (decisions name
    the config by hash, its text is in a ``Config.Seen`` event the first time); otherwise
    the older inline form."""
    end = end or datetime.now(UTC)
    start = end - step * n
    head = ChainHead()
    seen: set[tuple[str, str]] = set()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for i in range(n):
            kind = i % len(CONFIGS)
            variant = i % distinct_configs
            config = CONFIGS[kind] + f"# variant {variant}\n"
            region = "eu" if i % 3 else "us"
            env = "prod" if (i // 4) % 2 else "staging"
            req = CheckRequest(
                tenant=tenant if i % 10 else "other", checkpoint=Checkpoint.PUSH,
                change={"subject": "otel-collector", "source": "ui", "type": "config"},
                agent={"id": f"agent-{i % 500}", "labels": {"env": env, "region": region},
                       "group": f"g{i % 7}", "version": "", "hostname": "",
                       "active_exporters": []},
                rollout={"id": f"rollout-{i // 100}", "step": 1, "step_percent": 10.0,
                         "previous_step_percent": 0.0},
                config_yaml=config, request_id=f"req-{i}")
            allowed = (kind == 0 or (kind == 2 and region == "us")
                       or (kind == 1 and env == "staging"))
            d = Decision(str(uuid.UUID(int=i + 1)), allowed, "push", start + step * i,
                         evaluated=[PolicyRef("no-debug-exporter-in-prod", 1, "sha256:x",
                                              "active")])
            if not allowed:
                d.reasons.append(Reason("some-policy", 1, "cel", "POLICY_DENIED", "denied"))
            events = []
            if config_refs:
                sha = hashlib.sha256(config.encode()).hexdigest()
                if (req.tenant, sha) not in seen:
                    seen.add((req.tenant, sha))
                    events.append(config_seen(req.tenant, "config", sha, config))
                events += with_derived(decision_event(req, d, configs=(sha, None)).to_event())
            else:
                events = with_derived(decision_event(req, d).to_event())
            for event in events:
                entry = make_entry(to_jsonable(event), head)
                f.write(entry.line)
                head = ChainHead(entry.seq, entry.record["hash"])
    return path
