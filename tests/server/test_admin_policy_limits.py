"""ValidatePolicy / PutDraft on the real server with hostile policy YAML: an alias bomb, deep
nesting, a huge integer are refused quickly with the line:column of the problem (never a
hang or INTERNAL), and every problem text sent back is cut to 1 KiB with its place and field
path first."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pdp.v1 import admin_pb2 as apb
from pdp.v1 import admin_pb2_grpc
from tests.server.test_admin_e2e import People, start
from tests.support.pdpserver import PdpServer

HEAD = "tenant: acme\nname: yf\nrule: {cel: {deny: 'false'}}\n"
BOMB = ("a: &l0 [x,x,x,x,x,x,x,x,x,x]\n"
        + "".join(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]\n"
                  for i in range(1, 8))
        + "tenant: acme\nname: b\nrule: {cel: {deny: 'false'}}\n")
DEEP_MAP = HEAD + "x: " + "{a: " * 5000 + "1" + "}" * 5000
DEEP_LIST = HEAD + "description: " + "[" * 20000 + "]" * 20000
BIG_INT = HEAD + "version: " + "7" * 5000 + "\n"
LONG_CEL = ("tenant: acme\nname: long\nrule:\n  cel:\n    deny: '"
            + " || ".join(f"agent.id == \"a{i}\"" for i in range(9000)) + "'\n")
LONG_TZ = ("tenant: acme\nname: tz\nrule:\n  blocked_days:\n    days: [saturday]\n"
           "    timezone: " + "Europe/" + "x" * 100_000 + "\n")
FINE = HEAD.replace("'false'", "'agent.id == \"x\"'")

STATUS_TEXT_BYTES = 1024


class Admin:
    """An author's admin API on a real server (shared by the admin-policy tests)."""

    def __init__(self, server: PdpServer, people: People) -> None:
        self.stub = admin_pb2_grpc.PolicyAdminServiceStub(grpc.insecure_channel(server.address))
        self.md = people.md("alice")

    def validate(self, text: str) -> apb.ValidatePolicyResponse:
        answer: apb.ValidatePolicyResponse = self.stub.ValidatePolicy(
            apb.ValidatePolicyRequest(yaml=text), timeout=10, metadata=self.md)
        return answer

    def put_error(self, text: str) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as err:
            self.stub.PutDraft(apb.PutDraftRequest(yaml=text), timeout=10, metadata=self.md)
        return err.value

    def stored(self, name: str) -> bool:
        try:
            self.stub.GetPolicy(apb.GetPolicyRequest(tenant="acme", name=name), timeout=10,
                                metadata=self.md)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
            return False
        return True


@contextlib.contextmanager
def admin_server(tmp: Path) -> Iterator[Admin]:
    people = People(tmp)
    server = start(tmp, people)
    try:
        yield Admin(server, people)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    with admin_server(tmp_path_factory.mktemp("limits")) as a:
        yield a


@pytest.mark.parametrize("text, line, problem, field", [
    (BOMB, 4, "policy YAML: more than 10000 values after alias expansion (aliases expand)",
     "l3["),
    (DEEP_MAP, 4, "policy YAML: nesting deeper than 64 levels", "x.a.a"),
    (DEEP_LIST, 4, "policy YAML: nesting deeper than 64 levels", "description[0]"),
    (BIG_INT, 4, "policy YAML: integer too long: 5000 digits", "version"),
], ids=["alias-bomb", "deep-map", "deep-list", "big-int"])
def test_hostile_yaml_is_refused_with_its_place(admin: Admin, text: str, line: int,
                                                 problem: str, field: str) -> None:
    answer = admin.validate(text)
    assert not answer.valid
    [p] = answer.problems
    assert p.line == line and p.column > 0
    assert p.field.startswith(field)
    assert p.message.startswith(f"<request>:{line}:{p.column}: {field}")
    assert problem in p.message
    assert "Exceeds the limit" not in p.message

    err = admin.put_error(text)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith(f"<request>:{line}:{p.column}: {field}")
    assert problem in (err.details() or "")

    assert admin.validate(FINE).valid  # and the server answers as before


# The place first: the request's (ValidatePolicy) or the draft's (PutDraft compiles it).
@pytest.mark.parametrize("text, front", [
    (LONG_CEL, r"[^:]+:5:12: rule\.cel\.deny: "),
    (LONG_TZ, r"[^:]+:6:15: rule\.blocked_days\.timezone: "),
], ids=["long-cel", "long-timezone"])
def test_problem_texts_are_cut_to_one_kib(admin: Admin, text: str, front: str) -> None:
    answer = admin.validate(text)
    assert not answer.valid and answer.problems
    for p in answer.problems:
        assert len(p.message.encode()) <= STATUS_TEXT_BYTES
        assert re.match(front, p.message), p.message
        assert len(p.field.encode()) <= STATUS_TEXT_BYTES

    err = admin.put_error(text)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.details() or ""
    assert len(details.encode()) <= STATUS_TEXT_BYTES
    assert re.match(front, details), details


def test_a_long_field_path_does_not_push_out_the_problem(admin: Admin) -> None:
    key = "k" * 100_000  # an explicit key: an implicit one is at most 1024 characters
    answer = admin.validate(HEAD + f"? {key}\n: 1\n")
    assert not answer.valid
    [p] = answer.problems
    assert (p.line, p.column) == (5, 3)  # where its value is
    assert len(p.field.encode()) <= 256 and p.field.startswith("kkk")
    assert len(p.message.encode()) <= STATUS_TEXT_BYTES
    assert p.message.startswith("<request>:5:3: kkk")
    assert p.message.endswith(": unknown field")
