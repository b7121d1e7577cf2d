"""Names and addresses are matched whole: a final newline is not part of an allowed name
("$" in a Python pattern matches before one), so "acme\\n" is not a second "acme" listed
beside it, nor "small-steps\\n" a look-alike policy, nor "ops@example.com\\n" an address."""

from __future__ import annotations

import pytest

from pdp.api.convert import InvalidRequest, tenant_of
from pdp.notify.channels import ChannelConfigError, parse_channels
from pdp.policy.loader import load_text
from pdp.policy.model import PolicyError, validate_name


@pytest.mark.parametrize("name", ["acme\n", "acme\r\n", "\nacme", "ac\nme"])
def test_a_tenant_with_a_newline_is_refused(name: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        tenant_of(name)
    assert err.value.field == "tenant"
    assert tenant_of("acme") == "acme"


def test_a_policy_name_with_a_final_newline_is_refused() -> None:
    assert validate_name("small-steps\n") is not None
    assert validate_name("small-steps") is None
    with pytest.raises(PolicyError):
        load_text('tenant: t\nname: "small-steps\\n"\nrule: {cel: {deny: "false"}}\n')
    with pytest.raises(PolicyError):
        load_text('tenant: t\nname: p\nrule:\n  cel:\n    variables: {"v\\n": "1"}\n'
                  '    deny: "false"\n')


def test_an_email_address_with_a_final_newline_is_refused() -> None:
    with pytest.raises(ChannelConfigError):
        parse_channels([{"email": {"to": ["ops@example.com\n"]}}])
    assert parse_channels([{"email": {"to": ["ops@example.com"]}}])
