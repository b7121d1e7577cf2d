"""`pdp policy ...`: the policy lifecycle from a terminal or a CI job, over PolicyAdminService.

Tenants: `pdp admin tenant create NAME` / `pdp admin tenant list` (:func:`add_admin_commands`),
also reachable as `pdp policy tenant create NAME`.

Credentials: a bearer token (``--token`` / ``PDP_TOKEN``) and/or TLS files (``--ca-file``,
``--cert-file``, ``--key-file``). Exit 0 on success, 1 when the server refused, 2 on errors.
"""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("--timeout", type=float, default=float(os.environ.get("PDP_TIMEOUT", "5")),
                   help="seconds to wait for the answer (env PDP_TIMEOUT)")


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
    """`pdp admin tenant create NAME | list`: add an ``admin`` parser to the top-level
    subparsers (its handler is :func:`run`)."""
    admin = sub.add_parser("admin", help="server administration: tenants")
    _add_tenant_commands(admin.add_subparsers(dest="admin_command", required=True))


def _add_tenant_commands(sub: Any) -> None:
    tenant = sub.add_parser("tenant", help="known tenants: create (admin), list (readers)")
    tsub = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tsub.add_parser("create", help="make a tenant known, so decisions for it are no"
                                            " longer denied UNKNOWN_TENANT (admin)")
    add_connection_args(create)
    create.add_argument("name")
    create.add_argument("--why", default="", help="justification (audited)")
    create.set_defaults(handler=_tenant_create, command_name="tenant create")
    listing = tsub.add_parser("list", help="the known tenants you may read")
    add_connection_args(listing)
    listing.set_defaults(handler=_tenant_list, command_name="tenant list")


def run(args: argparse.Namespace) -> int:
    handler: Callable[[admin_pb2_grpc.PolicyAdminServiceStub, argparse.Namespace, Any], int]
    handler = args.handler
    metadata = call_metadata(args)
    try:
        with channel(args) as ch:
            return handler(admin_pb2_grpc.PolicyAdminServiceStub(ch), args,
                           {"timeout": args.timeout, "metadata": metadata})
    except grpc.RpcError as exc:
        print(f"pdp {_what(args)}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1 if exc.code() != grpc.StatusCode.UNAVAILABLE else 2
    except (OSError, TLSConfigError) as exc:
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
    print(f"{'NAME':<44} {'KIND':<8} {'STATUS':<9} {'VERSION':>7}  {'AUTHOR':<14} APPROVER")
    for p in resp.policies:
        m = p.meta
        status = "Relaxed" if m.relaxed else _status(m.status)
        print(f"{p.name:<44} {'Built-in' if m.builtin else 'Custom':<8} {status:<9}"
              f" {m.version:>7}  {m.author or '-':<14} {m.approver or '-'}")
    return 0


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
    print(f"Active guardrails of tenant {args.tenant}:")
    for p in resp.policies:
        m = p.meta
        if m.builtin:
            state = "relaxed" if m.relaxed else "on"
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
