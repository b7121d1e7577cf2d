"""Load the adversarial corpus and drive it through a real ``pdp serve``.

Used by ``bench/adversarial.py`` (timings, memory, interference) and by
``tests/test_adversarial_corpus.py`` (outcomes only). Nothing here asserts on time.

A policy case goes in through the admin API like an operator's policy would: ``PutDraft``
(admission: compile, type check, static cost estimate), then ``ApprovePolicy`` by a second
person and ``ActivatePolicy``; drafts (expectation ``shadow``) stay drafts. Each case has its
own tenant, ``adv-<id>``, so its decision shows only its own policy (and the built-ins).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from . import inputs as I

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
POLICY_DIR = HERE / "policies"
EXPECTATIONS = ("refused", "deny", "shadow")
ACCEPTED_REFUSAL_CODES = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED")
FIELD_MESSAGE = re.compile(r"^[A-Za-z_][\w.\[\]\-]*: \S")  # "agent.id: too long"
FIELD_PATH = re.compile(r"\b[a-z_]+(?:\.[a-z_]+|\[\d+\])+")  # "... (config.yaml)"
CONTROL_TENANT = "adv-control"  # no policies of its own: the live answer without a draft


# -- the corpus ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyCase:
    id: str
    family: str
    why: str
    expect: str  # "refused" (at admission), "deny" (within the deadline) or "shadow"
    config: tuple[str, ...]
    policy: dict[str, Any] = field(hash=False, compare=False)
    source: str = ""

    @property
    def tenant(self) -> str:
        return f"adv-{self.id}"

    @property
    def name(self) -> str:
        return str(self.policy.get("name", self.id))

    def policy_yaml(self) -> str:
        doc = {"tenant": self.tenant, "name": self.id, "description": self.why, **self.policy}
        return yaml.safe_dump(doc, width=2**31 - 1, sort_keys=False, allow_unicode=True)

    def request(self) -> bytes:
        return bytes(I.push(self.tenant, I.config_yaml(list(self.config))).SerializeToString())


def _expand_var(spec: dict[str, Any]) -> str:
    times = int(spec.get("times", 1))
    if "repeat" in spec:
        return str(spec["repeat"]) * times
    if "join" in spec:
        text = str(spec["join"])
        return str(spec.get("sep", "")).join(text.replace("{i}", str(i)) for i in range(times))
    if "nest" in spec:
        open_, close = spec["nest"]
        depth = int(spec["depth"])
        return str(open_) * depth + str(spec.get("inner", "")) + str(close) * depth
    raise ValueError(f"unknown var spec {spec!r}")


def _substitute(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], value)
    if isinstance(value, dict):
        return {k: _substitute(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values) for v in value]
    return value


def load_cases(directory: Path = POLICY_DIR) -> list[PolicyCase]:
    """Every case of every ``*.yaml`` file in ``directory``, in file order."""
    cases: list[PolicyCase] = []
    seen: set[str] = set()
    for path in sorted(directory.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        values = {k: _expand_var(v) for k, v in (doc.get("vars") or {}).items()}
        for raw in doc["cases"]:
            cid = str(raw["id"])
            if cid in seen:
                raise ValueError(f"{path.name}: duplicate case id {cid!r}")
            if raw["expect"] not in EXPECTATIONS:
                raise ValueError(f"{path.name}: {cid}: expect must be one of {EXPECTATIONS}")
            for part in raw.get("config") or []:
                if part not in I.CONFIG_PARTS:
                    raise ValueError(f"{path.name}: {cid}: unknown config part {part!r}")
            seen.add(cid)
            cases.append(PolicyCase(
                id=cid, family=str(doc["family"]), why=str(raw["why"]),
                expect=str(raw["expect"]), config=tuple(raw.get("config") or ()),
                policy=_substitute(raw["policy"], values), source=path.name))
    return cases


# -- outcomes --------------------------------------------------------------------------------

@dataclass
class Result:
    kind: str  # refused | deny | allow | invalid_argument | rpc:<CODE> | unspecified | died
    detail: str = ""
    client_s: float = 0.0
    server_s: float | None = None  # Decision.elapsed (the slowest one of a batch)
    reasons: list[tuple[str, str, str]] = field(default_factory=list)  # (code, policy, message)
    shadow: list[tuple[str, str, str]] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    control: Result | None = None  # drafts: the same request where no draft exists

    def short(self, n: int = 160) -> str:
        if self.reasons:
            code, policy, msg = self.reasons[0]
            text = f"{code} {policy}: {msg}"
        else:
            text = self.detail
        text = text.replace("\n", " ").replace("|", "\\|")
        return text if len(text) <= n else text[: n - 1] + "…"


def problem(result: Result, expect: str) -> str | None:
    """Why ``result`` is not an acceptable end for a case, or None when it is.

    Acceptable: refused at admission with a message; a DENY whose reasons each carry a code
    and a message; INVALID_ARGUMENT whose message names a field. A draft (``shadow``) must
    leave the live answer as it is for the same request in a tenant without the draft.
    """
    if expect == "shadow":
        if result.control is not None and result.kind == result.control.kind \
                and [r[0] for r in result.reasons] == [r[0] for r in result.control.reasons]:
            return None
        control = "?" if result.control is None else (
            f"{result.control.kind} {result.control.short(200)}")
        return (f"a draft changed the live answer: {result.kind} {result.short(300)}"
                f" (without the draft: {control})")
    if result.kind == "refused":
        return None if result.detail.strip() else "refused at admission without a message"
    if result.kind == "deny":
        if not result.reasons:
            return "DENY without any reason"
        bad = [r for r in result.reasons if r[0] == "REASON_CODE_UNSPECIFIED" or not r[2].strip()]
        return f"DENY with a reason lacking code or message: {bad}" if bad else None
    if result.kind == "invalid_argument":
        if FIELD_MESSAGE.match(result.detail) or FIELD_PATH.search(result.detail):
            return None
        return f"INVALID_ARGUMENT without naming a field: {result.detail[:300]!r}"
    return f"{result.kind}: {result.short(400)}"


# -- the server ------------------------------------------------------------------------------

def limit_memory(pid: int) -> None:
    """Cap the server's address space (``PDP_ADV_MEMORY_LIMIT_MIB``, default 4096) so a
    blow-up that the server does not stop fails as MemoryError or a crash, on a shared machine,
    instead of taking its memory."""
    mib = int(os.environ.get("PDP_ADV_MEMORY_LIMIT_MIB", "4096"))
    if mib > 0 and hasattr(resource, "prlimit"):
        resource.prlimit(pid, resource.RLIMIT_AS, (mib << 20, mib << 20))


class People:
    """Bearer tokens on every tenant: an author, an approver, an admin, a checker."""

    ROLES = {"alice": ["author"], "bob": ["approver"], "carol": ["admin"],
             "engine": ["checker"]}

    def __init__(self, directory: Path) -> None:
        from pdp.server.auth import new_token

        self.tokens: dict[str, str] = {}
        entries = []
        for who, roles in self.ROLES.items():
            token, digest = new_token()
            self.tokens[who] = token
            entries.append({"sha256": digest, "identity": who, "roles": {"*": roles}})
        self.file = directory / "tokens.yaml"
        self.file.write_text(yaml.safe_dump({"tokens": entries}))

    def md(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[who]}"),)


class Harness:
    """One real ``pdp serve`` (embedded default) with the corpus admitted into it."""

    def __init__(self, workdir: Path, *, extra_policies: dict[str, str] | None = None,
                 args: list[str] | None = None, timeout: float = 30.0) -> None:
        self.base = workdir
        self.extra_policies = extra_policies or {}
        self.args = args or []
        self.timeout = timeout
        self.restarts = 0
        self.admission: dict[str, Result] = {}
        self._admitted: list[PolicyCase] = []
        self.server: Any = None
        self.channel: grpc.Channel | None = None
        self.people: People | None = None

    # lifecycle
    def start(self) -> Harness:
        from tests.support.pdpserver import PdpServer

        work = self.base / f"server-{self.restarts}"
        if work.exists():
            shutil.rmtree(work)
        (work / "policies").mkdir(parents=True)
        (work / "policies" / "inputs.yaml").write_text(I.INPUT_POLICIES)
        (work / "policies" / "control.yaml").write_text(  # a known tenant, nothing denies
            f"tenant: {CONTROL_TENANT}\nname: never-denies\nrule:\n  cel:\n    deny: 'false'\n")
        for name, text in self.extra_policies.items():
            (work / "policies" / f"{name}.yaml").write_text(text)
        self.people = People(work)
        self.server = PdpServer(work, policy_dir=work / "policies", args=[
            "--auth-tokens-file", str(self.people.file), "--log-level", "info", *self.args])
        self.server.start()
        limit_memory(self.pid)
        self.channel = grpc.insecure_channel(self.server.address, options=[
            ("grpc.max_send_message_length", 64 * I.MIB),
            ("grpc.max_receive_message_length", 64 * I.MIB)])
        return self

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.server is not None:
            self.server.stop()

    @property
    def pid(self) -> int:
        return int(self.server.proc.pid)

    def alive(self) -> bool:
        return self.server is not None and self.server.proc.poll() is None

    def restart(self) -> None:
        """The server died: start a fresh one and admit again what was admitted."""
        self.stop()
        self.restarts += 1
        self.start()
        for case in self._admitted:
            self._put(case)
        time.sleep(1.5)

    # admission
    def _unary(self, method: str, payload: bytes, who: str = "engine") -> bytes:
        assert self.channel is not None and self.people is not None
        call = self.channel.unary_unary(method)
        return bytes(call(payload, timeout=self.timeout, metadata=self.people.md(who)))

    def _put(self, case: PolicyCase) -> Result:
        from pdp.v1 import admin_pb2 as apb

        admin = "/pdp.v1.PolicyAdminService/"
        t0 = time.perf_counter()
        if case.expect == "shadow":  # drafts alone leave a tenant unknown: an admin makes it
            with contextlib.suppress(grpc.RpcError):  # (ALREADY_EXISTS on a second admission)
                self._unary(admin + "CreateTenant", apb.CreateTenantRequest(
                    tenant=case.tenant, justification="adversarial corpus: a draft's tenant"
                ).SerializeToString(), "carol")
        try:
            put = apb.PutDraftResponse.FromString(self._unary(
                admin + "PutDraft",
                apb.PutDraftRequest(yaml=case.policy_yaml()).SerializeToString(), "alice"))
        except grpc.RpcError as exc:
            return self._rpc_error(exc, time.perf_counter() - t0, at_admission=True)
        if case.expect != "shadow":
            version = put.policy.meta.version
            for method, who, req in (
                    ("ApprovePolicy", "bob", apb.ApprovePolicyRequest),
                    ("ActivatePolicy", "carol", apb.ActivatePolicyRequest)):
                try:
                    self._unary(admin + method, req(tenant=case.tenant, name=case.id,
                                                    version=version).SerializeToString(), who)
                except grpc.RpcError as exc:
                    r = self._rpc_error(exc, time.perf_counter() - t0, at_admission=True)
                    r.detail = f"{method}: {r.detail}"
                    return r
        return Result("admitted", client_s=time.perf_counter() - t0)

    def admit(self, cases: list[PolicyCase]) -> dict[str, Result]:
        """PutDraft (+ approve + activate) every case; wait until the server has them."""
        for case in cases:
            if not self.alive():
                self.restart()
            r = self._put(case)
            if not self.alive():
                r = Result("died", f"the server exited during admission:\n{self._log_tail()}")
                self.restart()
            self.admission[case.id] = r
            if r.kind == "admitted":
                self._admitted.append(case)
        time.sleep(1.5)  # the policy store is followed within a second
        return self.admission

    # decisions
    def check_case(self, case: PolicyCase) -> Result:
        admitted = self.admission.get(case.id)
        if admitted is None:
            admitted = self.admit([case])[case.id]
        if admitted.kind != "admitted":
            return admitted
        payload = case.request()
        if case.expect == "shadow":
            r = self.call(I.CHECK_PUSH, payload)
            r.control = self.call(I.CHECK_PUSH, bytes(I.push(
                CONTROL_TENANT, I.config_yaml(list(case.config))).SerializeToString()))
            return r
        for _ in range(10):  # until the decision has evaluated the case's policy
            r = self.call(I.CHECK_PUSH, payload)
            if r.kind == "died" or case.id in r.evaluated or case.expect == "shadow" \
                    or r.kind != "allow":
                return r
            time.sleep(0.5)
        r.detail = (f"the policy was never evaluated ({r.evaluated}); " + r.detail).strip()
        return r

    def call(self, method: str, payload: bytes, who: str = "engine") -> Result:
        if not self.alive():
            self.restart()
        t0 = time.perf_counter()
        try:
            raw = self._unary(method, payload, who)
        except grpc.RpcError as exc:
            r = self._rpc_error(exc, time.perf_counter() - t0)
            if not self.alive():
                r = Result("died", f"the server exited:\n{self._log_tail()}",
                           client_s=r.client_s)
                self.restart()
            return r
        client_s = time.perf_counter() - t0
        return decision_result(I.RESPONSES[method].FromString(raw), client_s)

    def _rpc_error(self, exc: grpc.RpcError, client_s: float, *,
                   at_admission: bool = False) -> Result:
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details() or ""  # type: ignore[attr-defined]
        if at_admission and code.name in ACCEPTED_REFUSAL_CODES:
            return Result("refused", f"{code.name}: {details}", client_s)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return Result("invalid_argument", details, client_s)
        prefix = "admission " if at_admission else ""
        return Result(f"{prefix}rpc:{code.name}", details, client_s)

    def _log_tail(self, n: int = 1500) -> str:
        return str(self.server.log()[-n:]) if self.server is not None else ""


def _reasons(rs: Any) -> list[tuple[str, str, str]]:
    from pdp.v1 import common_pb2 as cpb

    return [(cpb.ReasonCode.Name(r.code), r.policy, r.message) for r in rs]


def decision_result(resp: Any, client_s: float) -> Result:
    """Classify a CheckPush/CheckRollout/CheckDevice/CheckPushBatch response."""
    from pdp.v1 import common_pb2 as cpb

    if hasattr(resp, "decisions"):  # a batch: deny only if every agent is denied
        decisions = [d.decision for d in resp.decisions]
        evaluated = [p.name for s in resp.evaluated_sets for p in s.policies]
    else:
        decisions = [resp.decision]
        evaluated = [p.name for p in resp.decision.evaluated_policies]
    if not decisions:
        return Result("unspecified", "an empty batch answer", client_s)
    outcomes = {d.outcome for d in decisions}
    server_s = max(d.elapsed.ToTimedelta().total_seconds() for d in decisions)
    reasons = [r for d in decisions[:1] for r in _reasons(d.reasons)]
    shadow = [r for d in decisions[:1] for r in _reasons(d.shadow_denies)]
    if cpb.OUTCOME_ALLOW in outcomes:
        kind = "allow"
    elif outcomes == {cpb.OUTCOME_DENY}:
        kind = "deny"
        for d in decisions[1:]:
            if not d.reasons:
                reasons = []  # one agent denied without a reason fails the case
    else:
        kind = "unspecified"
    return Result(kind, "", client_s, server_s, reasons, shadow, evaluated)


@contextlib.contextmanager
def harness(workdir: Path, **kw: Any) -> Any:
    h = Harness(workdir, **kw).start()
    try:
        yield h
    finally:
        h.stop()
