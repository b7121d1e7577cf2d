"""``pdp eval POLICIES REQUEST``: decide a request file against a policy directory offline.

Like ``opa eval``: no server, no counter store, no audit. The policies (and the built-ins)
run on the authoring Sandbox, the same in-process engine ``pdp test`` uses, so the decision is
the one a server with those policies would give (drafts run in shadow and only report
"would deny"; counters start empty). It prints the decision, each policy's verdict and, with
``--explain``, the values that made each deny. Exit codes as ``pdp check``: 0 allow, 1 deny,
2 error (unreadable policies or request, a policy that does not compile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

EVAL_BUDGET_S = 1.0


def add_parser(sub: Any) -> None:
    """The ``eval`` subcommand (light: the engine is imported when it runs)."""
    p = sub.add_parser("eval", help="decide a request file against a policy directory"
                                    " offline; exit 0 allow, 1 deny, 2 error",
                       description="Decide REQUEST (a request file, as for `pdp check`)"
                                   " against the policies of POLICIES (a directory or file)"
                                   " and the built-ins, in-process: no server.")
    p.add_argument("policies", help="policy directory (or one policy file)")
    p.add_argument("request", help="request YAML (see examples/requests)")
    p.add_argument("--explain", action="store_true",
                   help="also print the values that made each deny")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-builtins", action="store_true", help="leave the built-ins out")
    p.add_argument("--now", metavar="TIME",
                   help="decide as at this instant, with its UTC offset (e.g."
                        " 2026-11-01T01:30:00-04:00): clock rules, daily-cap days, CEL `now`")


def run(args: argparse.Namespace) -> int:
    return main(args.policies, args.request, explain=args.explain, as_json=args.json,
                builtins=not args.no_builtins, now=args.now)


def main(policies: str | Path, request: str | Path, *, explain: bool = False,
         as_json: bool = False, builtins: bool = True, out: TextIO | None = None,
         now: str | None = None) -> int:
    out = out or sys.stdout
    result = evaluate(policies, request, explain=explain, builtins=builtins, now=now)
    if "error" in result:
        print(f"pdp eval: {result['error']}", file=sys.stderr if out is sys.stdout else out)
        return 2
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True), file=out)
    else:
        print(render(result), file=out)
    return 0 if result["allowed"] else 1


def evaluate(policies: str | Path, request: str | Path, *, explain: bool = False,
             builtins: bool = True, now: str | None = None) -> dict[str, Any]:
    """The decision as a plain mapping: ``allowed``, ``reasons``, ``shadow_denies``,
    ``policies`` (name -> verdict) and, with ``explain``, ``explanations``; or ``error``.
    ``now``: the instant to decide at (RFC 3339 with its offset; default the clock's)."""
    from pdp.authoring.harness import CONVERTERS, Sandbox, load_policies, parse_time
    from pdp.client import request_from_file
    from pdp.engine.request import Caller, InvalidRequest
    from pdp.policy.model import PolicyError

    try:
        loaded = load_policies(Path(policies))
    except PolicyError as exc:
        return {"error": str(exc)}
    try:
        method, msg = request_from_file(request)
        req = CONVERTERS[method](msg, Caller("pdp-eval", frozenset({"checker"})))
    except (ValueError, InvalidRequest) as exc:
        return {"error": f"bad request file: {exc}"}
    if explain:
        req = replace(req, explain=True)
    try:  # what a server refuses (compile error, cost over its limit) is not decided
        sandbox = Sandbox.of(loaded, builtins=builtins)
    except PolicyError as exc:
        return {"error": f"policy does not compile: {exc}"}
    if now is not None:
        try:
            sandbox.set_time(parse_time(now))
        except ValueError as exc:
            return {"error": f"--now: {exc}"}
    decision = asyncio.run(sandbox.engine.check(req, EVAL_BUDGET_S))
    denied = {r.policy for r in decision.reasons if r.policy}
    would = {r.policy for r in decision.shadow_denies if r.policy}
    evaluated = {ref.name for ref in decision.evaluated}
    verdicts: dict[str, str] = {}
    mine = [p for p in sandbox.policies.policies if p.policy.tenant == req.tenant]
    for p in [*sandbox.policies.builtins, *mine]:
        name = p.name
        if name in denied:
            verdicts[name] = "deny"
        elif name in would:
            verdicts[name] = "would deny (draft)"
        elif name in evaluated:
            verdicts[name] = "allow"
        else:
            verdicts[name] = "not applicable (checkpoint, match or status)"
    result: dict[str, Any] = {
        "allowed": decision.allowed,
        "reasons": [_reason(r) for r in decision.reasons],
        "shadow_denies": [_reason(r) for r in decision.shadow_denies],
        "policies": verdicts,
    }
    if explain:
        result["explanations"] = {e.policy: e.values for e in decision.explanations}
    return result


def _reason(r: Any) -> dict[str, Any]:
    """A reason as the server answers it, with its retry hint (``retry_after_s``, when the
    rule gives one: the server's ``retry_after``); without it, a DST edge probed with
    ``--now`` could not be checked offline."""
    out = {"policy": r.policy or "system", "version": r.version, "code": str(r.code),
           "message": r.message}
    if r.retry_after_s is not None:
        out["retry_after_s"] = r.retry_after_s
    return out


def _retry(r: dict[str, Any]) -> str:
    from pdp.counters.messages import human_duration

    s = r.get("retry_after_s")
    return "" if s is None else f" (retry after {human_duration(s)})"


def render(result: dict[str, Any]) -> str:
    lines = ["ALLOW" if result["allowed"] else "DENY"]
    for r in result["reasons"]:
        lines.append(f"  deny: [{r['policy']} v{r['version']}] {r['code']}: {r['message']}"
                     f"{_retry(r)}")
    for r in result["shadow_denies"]:
        lines.append(f"  would deny (draft): [{r['policy']} v{r['version']}] {r['code']}:"
                     f" {r['message']}{_retry(r)}")
    lines.append("policies:")
    width = max((len(n) for n in result["policies"]), default=0)
    for name, verdict in result["policies"].items():
        lines.append(f"  {name:<{width}}  {verdict}")
    for policy, values in (result.get("explanations") or {}).items():
        lines.append(f"explanation of {policy}:")
        lines.extend(f"  {k} = {v}" for k, v in values.items())
    return "\n".join(lines)
