"""``pdp audit show DECISION_ID [PATH...]``: one decision, as an investigation needs it.

Decision records name their config texts and their list of evaluated policy versions by
SHA-256; the texts are in ``Config.Seen`` / ``Policies.Seen`` events earlier in the history.
This finds the decision by the id its caller got in the response, puts those texts back in
place (``request.config``, ``request.previous_config``, ``policies``) and lists the events
derived from it (``Rollout.PushDenied``, ``Policy.WouldDeny``), each with the record's file,
line, seq and hash (``pdp audit verify`` says whether the chain holding them is intact).

Two passes over the files, reading only lines that contain the id or a hash being looked
up: histories are large, and the Seen events a decision needs may be anywhere before it. A
directory means every ledger in it (``--workers N`` writes one per worker); a Seen event is
matched by its hash, so the copy in any ledger before the decision will do.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pdp.audit.chain import parse_line
from pdp.audit.events import CONFIG_SEEN, DECISION, POLICIES_SEEN
from pdp.audit.files import history_files

_CONFIG_FIELDS = ("config", "previous_config")


@dataclass
class Found:
    """A record: where it is and what it holds."""

    file: str
    line: int
    seq: int
    hash: str
    event: dict[str, Any]
    order: tuple[int, int] = (0, 0)  # (file index, line): position in the history

    def where(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "seq": self.seq, "hash": self.hash}


@dataclass
class Shown:
    decision: Found
    resolved: dict[str, Any]
    related: list[Found] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"decision": self.resolved, "record": self.decision.where(),
                "related": [{**r.where(), "event": r.event} for r in self.related],
                "unresolved": self.unresolved}


def _records(files: Iterable[Path], needles: Sequence[bytes]) -> Iterator[Found]:
    """Parsed records whose line contains one of ``needles`` (unreadable lines skipped)."""
    for index, path in enumerate(files):
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if not any(x in line for x in needles):
                    continue
                try:
                    rec = parse_line(line)
                except ValueError:
                    continue
                event = rec["event"]
                if isinstance(event, dict):
                    yield Found(str(path), n, rec["seq"], rec["hash"], event, (index, n))


def show(decision_id: str, files: Sequence[Path]) -> Shown | None:
    """The decision ``decision_id`` with its references resolved, or None if not found."""
    needle = json.dumps(decision_id).encode()  # the id as a JSON string, quotes included
    decision: Found | None = None
    related: list[Found] = []
    for found in _records(files, [needle]):
        if found.event.get("decision_id") != decision_id:
            continue
        if found.event.get("type") == DECISION and decision is None:
            decision = found
        else:
            related.append(found)
    if decision is None:
        return None
    ev = decision.event
    tenant = ev.get("tenant")
    raw_request = ev.get("request")
    request: dict[str, Any] = raw_request if isinstance(raw_request, dict) else {}
    wanted = {f: request.get(f"{f}_sha256") for f in _CONFIG_FIELDS}
    wanted_configs = {f: sha for f, sha in wanted.items()
                      if isinstance(sha, str) and request.get(f) is None}
    policies_sha = ev.get("policies_sha256") if "policies" not in ev else None
    # The latest Seen event before the decision wins (they are re-written from time to
    # time; the texts are the same, the nearest one is the one a reader would have used).
    configs: dict[str, Any] = {}
    policies: Any = None
    needles = [json.dumps(s).encode() for s in (*wanted_configs.values(), policies_sha) if s]
    for found in _records(files, needles) if needles else ():
        if found.order >= decision.order:
            break
        seen = found.event
        if seen.get("tenant") != tenant:
            continue
        if seen.get("type") == CONFIG_SEEN:
            f = seen.get("field")
            if f in wanted_configs and seen.get("config_sha256") == wanted_configs[f]:
                configs[f] = (seen.get("request") or {}).get(f)
        elif seen.get("type") == POLICIES_SEEN and seen.get("policies_sha256") == policies_sha:
            policies = seen.get("policies")
    resolved = dict(ev)
    unresolved: list[str] = []
    if wanted_configs:
        req = dict(request)  # the event stays as parsed; the view gets the texts
        for f, sha in wanted_configs.items():
            if f in configs:
                req[f] = configs[f]
            else:
                unresolved.append(f"request.{f}: no Config.Seen event for {sha} before the"
                                  " decision in these files")
        resolved["request"] = req
    if policies_sha is not None:
        if policies is not None:
            resolved["policies"] = policies
        else:
            unresolved.append(f"policies: no Policies.Seen event for {policies_sha} before"
                              " the decision in these files")
    return Shown(decision, resolved, related, unresolved)


def main(decision_id: str, paths: Sequence[str], out: TextIO = sys.stdout) -> int:
    """Print the decision as JSON; 0 found (even with something unresolved, which the
    output names), 1 not found, 2 no audit files."""
    files = history_files(paths, every_ledger=True)  # --workers: one ledger per worker
    if not files:
        print(f"no audit files at {', '.join(paths)}", file=sys.stderr)
        return 2
    shown = show(decision_id, files)
    if shown is None:
        print(f"decision {decision_id} not found in {len(files)} audit file(s)",
              file=sys.stderr)
        return 1
    try:
        json.dump(shown.as_json(), out, indent=2, ensure_ascii=False)
        out.write("\n")
        out.flush()
    except BrokenPipeError:  # piped into head / less and cut short: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return 0
