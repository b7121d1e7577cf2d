"""`pdp policy ...`: the policy lifecycle from a terminal or a CI job, over PolicyAdminService.

Tenants: `pdp admin tenant create NAME` / `pdp admin tenant list` (:func:`add_admin_commands`),
also reachable as `pdp policy tenant create NAME`. Tokens: `pdp admin token new --identity
NAME` makes a bearer token and its tokens-file entry, offline (:func:`_token_new`).

Credentials: a bearer token (``--token`` / ``PDP_TOKEN``) and/or TLS files (``--ca-file``,
``--cert-file``, ``--key-file``). Exit 0 on success, 1 when the server refused, 2 on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import grpc

from pdp.client import bearer_metadata
from pdp.server.tls import TLSConfigError
from pdp.server.tls import channel_credentials as channel_credentials_from
from pdp.v1 import admin_pb2 as apb
from pdp.v1 import admin_pb2_grpc
from pdp.v1 import common_pb2 as cpb


def _status(value: int) -> str:
    return cpb.PolicyStatus.Name(value).removeprefix("POLICY_STATUS_").capitalize()  # type: ignore[arg-type]


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("PDP_ADDRESS", "127.0.0.1:50051"),
                   help="server HOST:PORT or unix:PATH (env PDP_ADDRESS)")
    p.add_argument("--token", default=os.environ.get("PDP_TOKEN"),
                   help="bearer token (env PDP_TOKEN)")
    p.add_argument("--ca-file", default=os.environ.get("PDP_CA_FILE"),
                   help="CA that signed the server certificate: use TLS (env PDP_CA_FILE)")
    p.add_argument("--cert-file", default=os.environ.get("PDP_CERT_FILE"),
                   help="client certificate for mTLS (env PDP_CERT_FILE)")
    p.add_argument("--key-file", default=os.environ.get("PDP_KEY_FILE"),
                   help="client key for mTLS (env PDP_KEY_FILE)")
    # PDP_TIMEOUT is read where a call is made (timeout_of), never while the parser is
    # built: a bad value must not break `pdp --help` or commands that call nothing
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for the answer (env PDP_TIMEOUT; default 5)")


class ClientSettingError(ValueError):
    """A client flag or PDP_* variable with an unusable value; the message names it."""


def timeout_of(args: argparse.Namespace) -> float:
    """``--timeout``, else ``PDP_TIMEOUT``, else 5 seconds. Raises
    :class:`ClientSettingError` ("PDP_TIMEOUT: expected seconds, got 'x'")."""
    given = getattr(args, "timeout", None)
    if given is not None:
        name, raw = "--timeout", str(given)
    else:
        name, raw = "PDP_TIMEOUT", os.environ.get("PDP_TIMEOUT", "5")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ClientSettingError(f"{name}: expected seconds, got {raw!r}")
    return value


UNAUTHENTICATED_HINT = "(give a token with --token or PDP_TOKEN)"


def cli_error_text(code: str, details: str) -> str:
    """A server's error text as the CLI prints it: API field names it suggests become the
    flags that set them (``pass expected_version 1`` -> ``--expected-version 1``), and an
    UNAUTHENTICATED call says how to give credentials."""
    details = re.sub(r"\bexpected_version (\d+)", r"--expected-version \1", details)
    if code == "UNAUTHENTICATED" and "--token" not in details:
        details = f"{details} {UNAUTHENTICATED_HINT}"
    return details


def channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from ``--ca-file`` (and ``--cert-file`` / ``--key-file`` for mTLS);
    None for plaintext. Raises :class:`TLSConfigError` naming an unreadable file, or a client
    certificate given without the CA (it would otherwise be sent nowhere: plaintext)."""
    if not args.ca_file:
        if args.cert_file or args.key_file:
            raise TLSConfigError("--cert-file / --key-file need --ca-file (the CA that signed"
                                 " the server certificate): TLS is used only with it")
        return None
    return channel_credentials_from(args.ca_file, args.cert_file or None,
                                    args.key_file or None)


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """``authorization: Bearer <token>`` from ``--token`` / ``PDP_TOKEN``, if given."""
    return bearer_metadata(args.token)


def channel(args: argparse.Namespace) -> grpc.Channel:
    creds = channel_credentials(args)
    if creds is None:
        return grpc.insecure_channel(args.address)
    return grpc.secure_channel(args.address, creds)


def add_policy_admin_commands(sub: Any) -> None:
    """Add the lifecycle subcommands to the `pdp policy` subparsers."""
    def cmd(name: str, help_: str, *, tenant: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_)
        add_connection_args(p)
        if tenant:
            p.add_argument("--tenant", required=True, default=os.environ.get("PDP_TENANT"))
        p.set_defaults(handler=_handlers[name])
        return p

    put = cmd("put", "create a policy or a new draft version of it from a YAML file",
              tenant=False)
    put.add_argument("file")
    put.add_argument("--expected-version", type=int, default=0,
                     help="the version you edited (0 to create): refused if it moved on")
    for name, help_ in (("approve", "approve a draft (not its author)"),
                        ("activate", "activate an approved version (admin)")):
        p = cmd(name, help_)
        p.add_argument("name")
        p.add_argument("version", type=int)
    for name, help_ in (("retire", "retire the active version (admin)"),
                        ("reactivate", "bring back the last retired version (admin)"),
                        ("history", "versions and transitions")):
        cmd(name, help_).add_argument("name")
    get = cmd("get", "print a policy version as YAML")
    get.add_argument("name")
    get.add_argument("--version", type=int, default=0)
    cmd("list", "policies of a tenant with status, author and approver")
    cmd("summary", "the tenant's active guardrails, readable")
    for name, help_ in (("relax", "ask to turn a built-in off for the tenant (admin; in"
                                  " force until another admin runs approve-relax)"),
                        ("approve-relax", "approve another admin's relax request (admin)"),
                        ("restore", "turn a built-in back on at once, or withdraw a relax"
                                    " request (admin)")):
        p = cmd(name, help_)
        p.add_argument("builtin")
        if name != "approve-relax":
            p.add_argument("--why", default="", help="justification (required to relax)")
    _add_tenant_commands(sub)


def add_admin_commands(sub: Any) -> None:
    """`pdp admin tenant create NAME | list`, `pdp admin token new --identity NAME`: add an
    ``admin`` parser to the top-level subparsers (its handler is :func:`run`)."""
    admin = sub.add_parser("admin", help="server administration: tenants, tokens")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    _add_tenant_commands(admin_sub, prefix="admin")
    token = admin_sub.add_parser("token", help="bearer tokens for the tokens file"
                                               " (--auth-tokens-file)")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    new = token_sub.add_parser(
        "new", help="make a token: print it once, with its tokens-file entry (sha256 only)",
        description="Make a random bearer token. Prints the token (shown only here: the"
                    " tokens file keeps its sha256) and the entry for the tokens file; with"
                    " --append FILE the entry goes into FILE and only the token is printed."
                    " Nothing is sent to a server: send it SIGHUP to load the new file.")
    new.add_argument("--identity", required=True, help="who the token stands for (audited)")
    new.add_argument("--role", action="append", default=[], metavar="TENANT:ROLE",
                     help="a role on a tenant ('*' = every tenant); repeatable")
    new.add_argument("--append", metavar="FILE",
                     help="add the entry to this tokens file (created if missing) and print"
                          " only the token")
    new.set_defaults(local_handler=_token_new, command_name="admin token new")


def _add_tenant_commands(sub: Any, prefix: str = "policy") -> None:
    tenant = sub.add_parser("tenant", help="known tenants: create (admin), list (readers)")
    tsub = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tsub.add_parser("create", help="make a tenant known, so decisions for it are no"
                                            " longer denied UNKNOWN_TENANT (admin)")
    add_connection_args(create)
    create.add_argument("name")
    create.add_argument("--why", default="", help="justification (audited)")
    create.set_defaults(handler=_tenant_create, command_name=f"{prefix} tenant create")
    listing = tsub.add_parser("list", help="the known tenants you may read")
    add_connection_args(listing)
    listing.set_defaults(handler=_tenant_list, command_name=f"{prefix} tenant list")


def run(args: argparse.Namespace) -> int:
    handler: Callable[[admin_pb2_grpc.PolicyAdminServiceStub, argparse.Namespace, Any], int]
    local: Callable[[argparse.Namespace], int] | None = getattr(args, "local_handler", None)
    if local is not None:  # offline: `pdp admin token new`
        return local(args)
    handler = args.handler
    metadata = call_metadata(args)
    try:
        timeout = timeout_of(args)
        with channel(args) as ch:
            return handler(admin_pb2_grpc.PolicyAdminServiceStub(ch), args,
                           {"timeout": timeout, "metadata": metadata})
    except grpc.RpcError as exc:
        code = exc.code().name
        print(f"pdp {_what(args)}: {code}: {cli_error_text(code, exc.details() or '')}",
              file=sys.stderr)
        return 1 if exc.code() != grpc.StatusCode.UNAVAILABLE else 2
    except BrokenPipeError:  # stdout closed by its reader: pdp.cli.main ends quietly
        raise
    except (OSError, TLSConfigError, ClientSettingError) as exc:
        print(f"pdp {_what(args)}: {exc}", file=sys.stderr)
        return 2


def _what(args: argparse.Namespace) -> str:
    named = getattr(args, "command_name", None)
    return named or f"policy {getattr(args, 'policy_command', '')}".strip()


def _show(policy: Any) -> int:
    m = policy.meta
    print(f"{policy.name} v{m.version} {_status(m.status)}  author={m.author or '-'}"
          f" approver={m.approver or '-'} {m.content_hash}")
    return 0


def _print(text: str) -> int:
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def _put(stub: Any, args: argparse.Namespace, kw: Any) -> int:
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    return _show(stub.PutDraft(apb.PutDraftRequest(yaml=text,
                                                   expected_version=args.expected_version),
                               **kw).policy)


def _list(stub: Any, args: argparse.Namespace, kw: Any) -> int:
    resp = stub.ListPolicies(apb.ListPoliciesRequest(tenant=args.tenant, include_builtins=True),
                             **kw)
    pending = {r.builtin: r for r in resp.pending_relaxations}
    print(f"{'NAME':<44} {'KIND':<8} {'STATUS':<9} {'VERSION':>7}  {'AUTHOR':<14} APPROVER")
    for p in resp.policies:
        m = p.meta
        status = "Relaxed" if m.relaxed else _status(m.status)
        line = (f"{p.name:<44} {'Built-in' if m.builtin else 'Custom':<8} {status:<9}"
                f" {m.version:>7}  {m.author or '-':<14} {m.approver or '-'}")
        request = pending.get(p.name) if m.builtin else None
        if request is not None:  # still in force: a second admin has to approve-relax
            line += f"  {_relax_request(request)}"
        print(line)
    return 0


def _relax_request(request: Any) -> str:
    return (f"relax requested by {request.requested_by}: {request.justification or '-'}"
            " (in force until another admin runs approve-relax)")


def _history(stub: Any, args: argparse.Namespace, kw: Any) -> int:
    h = stub.GetPolicyHistory(apb.GetPolicyHistoryRequest(tenant=args.tenant, name=args.name),
                              **kw)
    for v in h.versions:
        _show(v)
    for t in h.transitions:
        before = _status(t.from_status) if t.from_status else "-"
        print(f"  {t.time.ToJsonString()}  v{t.version} {before} -> {_status(t.to_status)}"
              f" by {t.actor}")
    return 0


def _summary(stub: Any, args: argparse.Namespace, kw: Any) -> int:
    from pdp.policy.loader import load_text
    from pdp.policy.summary import describe_policy

    resp = stub.ListPolicies(apb.ListPoliciesRequest(tenant=args.tenant, include_builtins=True),
                             **kw)
    pending = {r.builtin: r for r in resp.pending_relaxations}
    print(f"Active guardrails of tenant {args.tenant}:")
    for p in resp.policies:
        m = p.meta
        if m.builtin:
            state = "relaxed" if m.relaxed else "on"
            request = pending.get(p.name)
            if request is not None and not m.relaxed:
                state += f"; {_relax_request(request)}"
            print(f"  [built-in] {p.name}: {state}")
            continue
        if not m.active_version:
            continue
        got = stub.GetPolicy(apb.GetPolicyRequest(tenant=args.tenant, name=p.name,
                                                  version=m.active_version), **kw).policy
        [policy] = load_text(got.yaml, f"{p.name} v{m.active_version}")
        print(f"  [{policy.rule.kind}] {p.name} v{m.active_version}: {describe_policy(policy)}")
    return 0


def _relaxed(resp: Any) -> int:
    _print("relaxed: " + (", ".join(resp.relaxed_builtins) or "(none)"))
    for p in resp.pending_relaxations:
        print(f"pending: {p.builtin} requested by {p.requested_by} ({p.justification});"
              " in force until another admin approves")
    return 0


def _tenant_create(stub: Any, args: argparse.Namespace, kw: Any) -> int:
    t = stub.CreateTenant(apb.CreateTenantRequest(tenant=args.name, justification=args.why),
                          **kw).tenant
    return _print(f"created tenant {t.name} (by {t.created_by})")


def _tenant_list(stub: Any, args: argparse.Namespace, kw: Any) -> int:
    for t in stub.ListTenants(apb.ListTenantsRequest(), **kw).tenants:
        made = (f"created by {t.created_by} {t.created_at.ToJsonString()}" if t.created_by
                else "has policies")
        print(f"{t.name:<40} {made}")
    return 0


def _token_new(args: argparse.Namespace) -> int:
    """`pdp admin token new`: a random token and its tokens-file entry (sha256 only)."""
    import yaml

    from pdp.server.credentials import AuthConfigError, load_tokens, new_token
    from pdp.server.roles import ROLES

    where = f"pdp {args.command_name}"
    roles: dict[str, list[str]] = {}
    for given in args.role:
        tenant, sep, role = given.partition(":")
        if not sep or not tenant or role not in ROLES:
            print(f"{where}: --role {given!r} is not TENANT:ROLE with ROLE one of"
                  f" {', '.join(sorted(ROLES))}", file=sys.stderr)
            return 2
        if role not in roles.setdefault(tenant, []):
            roles[tenant].append(role)
    token, digest = new_token()
    entry = yaml.safe_dump([{"sha256": digest, "identity": args.identity, "roles": roles}],
                           sort_keys=False, default_flow_style=None)
    if args.append is None:
        print(f"token for {args.identity} (shown only now; give it with --token or PDP_TOKEN):")
        print(token)
        print("tokens file entry (under `tokens:`; the file keeps only the sha256):")
        print(entry, end="")
        return 0
    mode = 0o600  # a new file: owner-only (it names who may do what)
    try:
        with open(args.append, encoding="utf-8") as f:
            old = f.read()
        mode = os.stat(args.append).st_mode & 0o777
    except FileNotFoundError:
        old = ""
    except OSError as exc:
        print(f"{where}: {args.append}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    base = old if old.strip() else "tokens:\n"
    if not base.endswith("\n"):
        base += "\n"
    before = len(_token_list(base))
    # the new item indented as the file's own (block lists at column 0 or 2 are both common)
    for indent in ("  ", ""):
        text = base + "".join(indent + line + "\n" for line in entry.splitlines())
        items = _token_list(text)
        if len(items) == before + 1 and isinstance(items[-1], dict) \
                and items[-1].get("sha256") == digest:
            break
    else:
        print(f"{where}: {args.append} does not hold a `tokens:` list this entry can be"
              f" appended to; add it by hand:\n{entry}", file=sys.stderr)
        return 2
    new_file = args.append + ".new"
    try:
        with open(os.open(new_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w",
                  encoding="utf-8") as f:
            f.write(text)
        os.chmod(new_file, mode)  # the file's own mode, whatever the umask
        load_tokens(new_file)  # the server must accept it: refuse to write one it would not
        os.replace(new_file, args.append)
    except (OSError, AuthConfigError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(new_file)
        print(f"{where}: {args.append}: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _token_list(text: str) -> list[Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    if not isinstance(data, dict):
        return []
    items = data.get("tokens")
    return items if isinstance(items, list) else []


_handlers: dict[str, Callable[..., int]] = {
    "put": _put,
    "approve": lambda s, a, kw: _show(s.ApprovePolicy(apb.ApprovePolicyRequest(
        tenant=a.tenant, name=a.name, version=a.version), **kw).policy),
    "activate": lambda s, a, kw: _show(s.ActivatePolicy(apb.ActivatePolicyRequest(
        tenant=a.tenant, name=a.name, version=a.version), **kw).policy),
    "retire": lambda s, a, kw: _show(s.RetirePolicy(apb.RetirePolicyRequest(
        tenant=a.tenant, name=a.name), **kw).policy),
    "reactivate": lambda s, a, kw: _show(s.ReactivatePolicy(apb.ReactivatePolicyRequest(
        tenant=a.tenant, name=a.name), **kw).policy),
    "get": lambda s, a, kw: _print(s.GetPolicy(apb.GetPolicyRequest(
        tenant=a.tenant, name=a.name, version=a.version), **kw).policy.yaml),
    "list": _list,
    "history": _history,
    "summary": _summary,
    "relax": lambda s, a, kw: _relaxed(s.SetBuiltinRelaxed(apb.SetBuiltinRelaxedRequest(
        tenant=a.tenant, builtin=a.builtin, relaxed=True, justification=a.why), **kw)),
    "approve-relax": lambda s, a, kw: _relaxed(s.ApproveBuiltinRelaxation(
        apb.ApproveBuiltinRelaxationRequest(tenant=a.tenant, builtin=a.builtin), **kw)),
    "restore": lambda s, a, kw: _relaxed(s.SetBuiltinRelaxed(apb.SetBuiltinRelaxedRequest(
        tenant=a.tenant, builtin=a.builtin, relaxed=False, justification=a.why), **kw)),
}
