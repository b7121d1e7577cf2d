"""The `pdp` command: serve, check, health, audit verify / show; authoring: test, policy
lint, replay.

Exit codes of `pdp check` are made for pipelines: 0 allow, 1 deny, 2 error.
Every flag also reads a PDP_* environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pdp.admin_cli import (
    ClientSettingError,
    add_admin_commands,
    add_connection_args,
    add_policy_admin_commands,
    channel_credentials,
    cli_error_text,
    timeout_of,
)
from pdp.settings import FIELDS, SettingsError, describe, is_switch, load_settings

if TYPE_CHECKING:
    import grpc

    from pdp.client import PdpClient


def _serve_parser(sub: Any) -> None:
    rows = describe()
    epilog = "settings (flag / environment variable / default):\n" + "\n".join(
        f"  {flag:<26} {env:<28} {default}" for flag, env, default, _ in rows)
    p = sub.add_parser("serve", help="run the decision point",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
                       description="Run the gRPC decision point. Settings come from --config"
                                   " FILE (YAML), PDP_* environment variables and these flags"
                                   " (later wins).")
    p.add_argument("--config", help="YAML settings file (env PDP_CONFIG)")
    for (flag, env, default, help_), name in zip(rows, FIELDS, strict=True):
        if is_switch(name):  # `--reflection` alone is true; `--reflection false` still works
            p.add_argument(flag, dest=name, default=None, metavar="BOOL", nargs="?",
                           const="true", help=f"{help_} [env {env}; default {default}]")
        else:
            p.add_argument(flag, dest=name, default=None, metavar="VALUE",
                           help=f"{help_} [env {env}; default {default}]")


def _client_args(p: argparse.ArgumentParser) -> None:
    """--address, --timeout and the credentials (--token / PDP_TOKEN, --ca-file,
    --cert-file, --key-file): the same flags as the `pdp policy` commands."""
    add_connection_args(p)


def _client(args: argparse.Namespace) -> PdpClient:
    """A PdpClient with the flags' address, timeout, token and TLS credentials. Raises
    TLSConfigError for a certificate file that cannot be used, ClientSettingError for a bad
    --timeout / PDP_TIMEOUT."""
    from pdp.client import PdpClient

    return PdpClient(args.address, timeout=timeout_of(args), token=args.token,
                     credentials=channel_credentials(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdp", description="policy decision point")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    check = sub.add_parser("check", help="ask a running server about a request file;"
                                         " exit 0 allow, 1 deny, 2 error")
    _client_args(check)
    check.add_argument("file", help="request YAML (see examples/requests)")
    check.add_argument("--json", action="store_true", help="print the decision as JSON")
    health = sub.add_parser("health", help="print the server's health status")
    _client_args(health)
    audit = sub.add_parser("audit", help="audit file tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain of audit files")
    verify.add_argument("paths", nargs="+")
    verify.add_argument("--key", metavar="FILE", action="append",
                        help="anchor key file (audit_anchor_key_file): also check the signed"
                             " checkpoints (re-chaining, records cut off the end); repeat it"
                             " after a key change: every key the ledger was signed with")
    verify.add_argument("--anchors", metavar="FILE", action="append",
                        help="anchor file to check against, e.g. a copy shipped off the host"
                             " (repeatable; default: <audit file>.anchors)")
    show = audit_sub.add_parser(
        "show", help="one decision by id, with the config texts and policy list it names"
                     " by hash put back in place, and the events derived from it")
    show.add_argument("decision_id")
    show.add_argument("paths", nargs="*", help="audit files or directories, rotated"
                                               " siblings included (default: every ledger"
                                               " beside the audit_file setting)")
    _authoring_parsers(sub)
    add_admin_commands(sub)  # `pdp admin tenant create NAME | list`
    return parser


def _authoring_parsers(sub: Any) -> None:
    test = sub.add_parser("test", help="run policy unit tests (*.test.yaml) in-process;"
                                       " exit 0 pass, 1 fail, 2 error",
                          description="Policy unit tests: the policies of DIR (or FILE) plus"
                                      " the built-ins on an in-process engine with in-memory"
                                      " counters; cases from the *.test.yaml files beside"
                                      " them (see pdp/authoring/unit_tests.py).")
    test.add_argument("path", help="policy directory (or one policy file)")
    test.add_argument("--tests", help="test file or directory (default: PATH)")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    from pdp.authoring.eval import add_parser as add_eval_parser
    add_eval_parser(sub)
    policy = sub.add_parser("policy", help="policy authoring tools")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    lint = policy_sub.add_parser("lint", help="compile errors, cost warnings, ineffective"
                                              " match filters; exit 1 on errors")
    lint.add_argument("paths", nargs="+", help="policy files or directories")
    add_policy_admin_commands(policy_sub)
    lint.add_argument("--strict", action="store_true", help="warnings fail too")
    lint.add_argument("--max-cost", type=int, default=None,
                      help="cost estimate the server rejects (default: the server setting"
                           " cel_max_cost_estimate)")
    lint.add_argument("--warn-cost", type=int, default=1_000_000,
                      help="warn above this cost estimate (default 1000000)")
    replay = sub.add_parser("replay", help="what a draft policy would have denied, from the"
                                           " audit history (touches nothing live)")
    replay.add_argument("--policy", required=True, help="policy YAML file (the draft)")
    replay.add_argument("--since", default="7d", help="window: 7d, 12h, 30m or an ISO time")
    replay.add_argument("--audit", action="append", default=None, metavar="PATH",
                        help="audit file or directory, rotated siblings included (repeatable;"
                             " default: every ledger beside the audit_file setting)")
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    counters = sub.add_parser("counters", help="counter store administration")
    counters.add_argument("counters_command", choices=["ack"],
                          help="ack: accept a lost counter state (see `pdp counters ack -h`)")
    counters.add_argument("argv", nargs=argparse.REMAINDER)


def _quiet() -> None:
    from pdp.logging import configure_logging

    configure_logging("warning", "console")


def cmd_test(args: argparse.Namespace) -> int:
    from pdp.authoring.unit_tests import main as test_main

    _quiet()
    return test_main(args.path, args.tests, verbose=args.verbose)


def cmd_admin(args: argparse.Namespace) -> int:
    from pdp.admin_cli import run

    return run(args)


def cmd_policy(args: argparse.Namespace) -> int:
    if args.policy_command != "lint":
        from pdp.admin_cli import run

        return run(args)
    from pdp.authoring.lint import main as lint_main

    max_cost = args.max_cost
    if max_cost is None:
        try:
            max_cost = load_settings().cel_max_cost_estimate
        except SettingsError:
            max_cost = 100_000_000
    return lint_main(args.paths, strict=args.strict, max_cost=max_cost,
                     warn_cost=args.warn_cost)


def _audit_paths(given: list[str] | None, command: str) -> list[str] | None:
    """``given``, or else the audit file's directory: every ledger in it (``--workers N``
    writes one per worker). None (after saying why) when the settings are invalid."""
    if given:
        return list(given)
    try:
        return [str(Path(load_settings().audit_file).parent)]
    except SettingsError as exc:
        print(f"pdp {command}: invalid setting: {exc}", file=sys.stderr)
        return None


def cmd_replay(args: argparse.Namespace) -> int:
    from pdp.authoring.replay import main as replay_main

    _quiet()
    audit = _audit_paths(args.audit, "replay")
    if audit is None:
        return 2
    return replay_main(args.policy, args.since, audit, as_json=args.json)


def cmd_serve(args: argparse.Namespace) -> int:
    from pdp.logging import configure_logging

    overrides = {name: getattr(args, name) for name in FIELDS}
    try:
        settings = load_settings(config_file=args.config, overrides=overrides)
    except SettingsError as exc:
        print(f"pdp serve: invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from pdp.server.workers import serve_workers

        try:
            return serve_workers(settings)
        except SettingsError as exc:
            print(f"pdp serve: invalid setting: {exc}", file=sys.stderr)
            return 2
    from pdp.server.app import StartupError, serve

    try:
        return asyncio.run(serve(settings))
    except StartupError as exc:
        holder = _lock_holder(Path(settings.audit_file + ".lock")) if str(exc).startswith(
            "audit:") else None
        print(f"pdp serve: cannot start: {exc}" + (f" (held by {holder})" if holder else ""),
              file=sys.stderr)
        return 2


def _lock_holder(lock: Path) -> str | None:
    """Which process holds the flock on ``lock``: "pid N: its command line", from
    /proc/locks (Linux), so a second `pdp serve` in the same directory says whom to stop.
    None where that cannot be told (another OS, the holder already gone)."""
    try:
        st = lock.stat()
        entries = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for entry in entries:
        fields = entry.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF" (blocked waiters have a "->")
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
            pid = fields[4]
            if pid == str(os.getpid()):
                continue
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                command = " ".join(raw.decode(errors="replace").split("\0")).strip()
            except OSError:
                command = ""
            return f"pid {pid}" + (f": {command[:200]}" if command else "")
    return None


def cmd_check(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from pdp.client import request_from_file
    from pdp.server.tls import TLSConfigError

    try:
        method, req = request_from_file(args.file)
    except ValueError as exc:  # RequestFileError: one line naming the file
        print(f"pdp check: bad request file: {exc}", file=sys.stderr)
        return 2
    try:
        with _client(args) as client:
            d = client.call(method, req)
    except grpc.RpcError as exc:
        print(f"pdp check: {_rpc_error(exc)}", file=sys.stderr)
        return 2
    except (TLSConfigError, ClientSettingError) as exc:
        print(f"pdp check: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json_format.MessageToJson(d.raw))
    else:
        print(f"{'ALLOW' if d.allowed else 'DENY'} decision {d.decision_id}"
              + (" (overridden)" if d.overridden else ""))
        for r in d.reasons:
            print(f"  deny: [{r.policy or 'system'} v{r.policy_version}] {r.code}: {r.message}")
        for r in d.shadow_denies:
            print(f"  would deny (draft): [{r.policy} v{r.policy_version}] {r.code}: {r.message}")
    return 0 if d.allowed else 1


def cmd_health(args: argparse.Namespace) -> int:
    import grpc

    from pdp.server.tls import TLSConfigError

    try:
        with _client(args) as client:
            status = client.health()
    except grpc.RpcError as exc:  # no answer at all: an error (2), not a status (1)
        print(f"pdp health: {args.address}: {_rpc_error(exc)}", file=sys.stderr)
        return 2
    except (TLSConfigError, ClientSettingError) as exc:
        print(f"pdp health: {exc}", file=sys.stderr)
        return 2
    print(status)
    return 0 if status == "SERVING" else 1


def _rpc_error(exc: grpc.RpcError) -> str:
    """One line for a failed call: the status code, then grpc's text on one line (for a
    server that is not there it repeats the code and adds a multi-part connection error)."""
    call = cast(Any, exc)  # an RpcError raised by a call is also a grpc.Call
    code = str(call.code().name) if hasattr(call, "code") else "UNKNOWN"
    details = " ".join(str(call.details() if hasattr(call, "details") else exc).split())
    details = details.removeprefix(f"{code}: ")
    if code == "UNAVAILABLE" and "failed to connect" in details:
        reason = details.rsplit(": ", 1)[-1]
        return f"UNAVAILABLE: no server answers ({reason})"
    return f"{code}: {cli_error_text(code, details)}"


def cmd_audit(args: argparse.Namespace) -> int:
    if args.audit_command == "show":
        from pdp.audit.show import main as show_main

        paths = _audit_paths(args.paths, "audit show")
        if paths is None:
            return 2
        return show_main(args.decision_id, paths)
    from pdp.audit.verify import main as verify_main

    extra = [a for k in args.key or () for a in ("--key", k)]
    for anchors in args.anchors or ():
        extra += ["--anchors", anchors]
    return verify_main([*extra, "--", *args.paths])


def cmd_counters(args: argparse.Namespace) -> int:
    from pdp.counters.ack import main as counters_main

    return counters_main([args.counters_command, *args.argv])


def cmd_eval(args: argparse.Namespace) -> int:
    from pdp.authoring.eval import run

    _quiet()
    return run(args)


def main(argv: list[str] | None = None) -> int:
    handlers = {"serve": cmd_serve, "check": cmd_check, "health": cmd_health,
                "audit": cmd_audit, "test": cmd_test, "policy": cmd_policy,
                "replay": cmd_replay, "counters": cmd_counters, "eval": cmd_eval,
                "admin": cmd_admin}
    try:
        try:
            args = build_parser().parse_args(argv)  # --help and usage errors exit from here
            return handlers[args.command](args)
        finally:
            sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
    except BrokenPipeError:
        # stdout closed by its reader (`pdp policy list | head`): stop quietly, as the
        # coreutils do. Point stdout at devnull so the flush at exit does not fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # stdout replaced (tests, embedding)
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it


if __name__ == "__main__":
    sys.exit(main())
