"""Server ACL matching (protocol/server_acl.py) in the spec's order."""

from __future__ import annotations

import pytest

from coffeechat_home.protocol.server_acl import host_of, server_allowed

ACL = {"allow": ["*"], "deny": ["evil.com", "*.bad.org", "b?d.net"], "allow_ip_literals": False}


@pytest.mark.parametrize(("server", "allowed"), [
    ("good.org", True),
    ("evil.com", False),
    ("evil.com:8448", False),  # the port is not considered
    ("EVIL.Com:1234", False),  # case-insensitive
    ("notevil.com", True),
    ("x.y.bad.org", False),
    ("bad.org", True),  # '*.' needs a label before it
    ("bad.net", False),
    ("baad.net", True),  # '?' is one character
    ("127.0.0.1:8448", False),  # IP literals denied here
    ("[::1]:8448", False),
])
def test_deny_and_ip_literals(server: str, allowed: bool) -> None:
    assert server_allowed(ACL, server) is allowed


def test_defaults() -> None:
    assert server_allowed(None, "any.org")  # no ACL: allow
    assert not server_allowed({}, "any.org")  # no allow list: nobody
    assert server_allowed({"allow": ["*"]}, "1.2.3.4")  # IP literals allowed unless false
    assert server_allowed({"allow": ["*"], "allow_ip_literals": "no"}, "[::1]")  # not a boolean: default
    assert not server_allowed({"allow": ["good.org"]}, "other.org")
    assert not server_allowed({"allow": "*"}, "any.org")  # malformed lists match nothing
    assert server_allowed({"allow": ["*"], "deny": [5, None]}, "any.org")


def test_host_of() -> None:
    assert host_of("example.org:8448") == "example.org"
    assert host_of("[2001:db8::1]:8448") == "[2001:db8::1]"
    assert host_of("[2001:db8::1]") == "[2001:db8::1]"
    assert host_of("example.org") == "example.org"
