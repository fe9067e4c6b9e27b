"""Pure parts of the federation transport: the X-Matrix header, the
address guard's ranges, server discovery's rules, key response checks."""

from __future__ import annotations

import time

import pytest

from coffeechat_home.federation.addresses import AddressGuard
from coffeechat_home.federation.discovery import Route, ServerResolver, parse_well_known, split_host_port
from coffeechat_home.protocol.request_auth import (
    BadAuthHeader, XMatrixAuth, format_header, parse_header, request_json, sign_request,
)
from coffeechat_home.protocol.signing import (
    generate_signing_key, get_verify_key, sign_json, verify_json_signature, verify_key_base64,
)
from coffeechat_home.services.server_keys import KeyUnavailable, LocalKeys, parse_key_response
from coffeechat_home.storage.server_keys import OldKey


def test_header_round_trip_and_signature() -> None:
    key = generate_signing_key("abc")
    header = sign_request("PUT", "/_matrix/federation/v1/send/1?x=%40a", "a.org", "b.org", key, {"pdus": []})
    auth = parse_header(header)
    assert (auth.origin, auth.destination, auth.key_id) == ("a.org", "b.org", "ed25519:abc")
    obj = request_json("PUT", "/_matrix/federation/v1/send/1?x=%40a", "a.org", "b.org", {"pdus": []})
    obj["signatures"] = {"a.org": {auth.key_id: auth.signature}}
    verify_json_signature(obj, "a.org", get_verify_key(key))
    # other forms servers send: unquoted values, spaces, any case
    parsed = parse_header('X-Matrix origin=a.org, Destination="b.org",key="ed25519:abc",sig="c2ln"')
    assert parsed == XMatrixAuth("a.org", "b.org", "ed25519:abc", "c2ln")
    assert parse_header(format_header(XMatrixAuth('we"ird', None, "k", "s"))).origin == 'we"ird'
    for bad in ("Bearer x", "X-Matrix origin=a.org", 'X-Matrix origin="a",origin="b",key="k",sig="s"',
                'X-Matrix origin="a",key="k",sig="s",junk'):
        with pytest.raises(BadAuthHeader):
            parse_header(bad)


def test_address_guard_ranges() -> None:
    guard = AddressGuard()
    for private in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.1.1", "100.64.0.1", "::1",
                    "fe80::1", "fc00::1", "0.0.0.0", "::ffff:127.0.0.1", "224.0.0.1", "192.0.2.1"):
        assert not guard.permits(private), private
    for public in ("1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"):
        assert guard.permits(public), public
    allowed = AddressGuard(["127.0.0.0/8", "::1/128"])
    assert allowed.permits("127.0.0.2") and allowed.permits("::1") and not allowed.permits("10.0.0.1")


def test_split_host_port() -> None:
    assert split_host_port("example.org") == ("example.org", None)
    assert split_host_port("example.org:8449") == ("example.org", 8449)
    assert split_host_port("[::1]:8448") == ("::1", 8448)
    assert split_host_port("[::1]") == ("::1", None)
    assert split_host_port("1.2.3.4") == ("1.2.3.4", None)


async def test_discovery_rules() -> None:
    asked: list[str] = []
    srv_asked: list[str] = []
    well_known = {"deleg.org": b'{"m.server": "matrix.deleg.org:443"}', "srvd.org": b'{"m.server": "fed.srvd.org"}',
                  "junk.org": b'{"m.server": 5}'}
    srv = {"_matrix-fed._tcp.fed.srvd.org": [(10, 5, 8555, "box.srvd.org.")]}

    async def fetch(name: str) -> tuple[int, bytes | None, int | None]:
        asked.append(name)
        if name in well_known:
            return 200, well_known[name], None
        raise OSError("no such host")

    async def lookup(service: str) -> list[tuple[int, int, int, str]]:
        srv_asked.append(service)
        return srv.get(service, [])

    r = ServerResolver(fetch, lookup)
    assert await r.resolve("1.2.3.4") == Route("1.2.3.4", 8448, "1.2.3.4")
    assert await r.resolve("[::1]:9000") == Route("::1", 9000, "[::1]:9000")
    assert await r.resolve("host.org:9000") == Route("host.org", 9000, "host.org:9000")
    assert asked == []  # no lookups for those
    assert await r.resolve("deleg.org") == Route("matrix.deleg.org", 443, "matrix.deleg.org:443")
    assert await r.resolve("srvd.org") == Route("fed.srvd.org", 8555, "fed.srvd.org", connect_host="box.srvd.org")
    assert await r.resolve("plain.org") == Route("plain.org", 8448, "plain.org")
    assert await r.resolve("junk.org") == Route("junk.org", 8448, "junk.org")
    assert srv_asked == ["_matrix-fed._tcp.fed.srvd.org", "_matrix-fed._tcp.plain.org", "_matrix-fed._tcp.junk.org"]
    await r.resolve("deleg.org")
    await r.resolve("plain.org")
    assert asked.count("deleg.org") == 1 and asked.count("plain.org") == 1  # cached, failures too
    assert parse_well_known(b"not json") is None and parse_well_known(b'{"m.server": "bad name!"}') is None


def test_key_responses() -> None:
    key = generate_signing_key("k1")
    local = LocalKeys("a.org", key, [OldKey("ed25519:k0", verify_key_base64(get_verify_key(generate_signing_key("k0"))),
                                            1000)])
    now = int(time.time() * 1000)
    doc = local.server_keys_response(now)
    server, keys = parse_key_response(doc, "a.org", now)
    assert server == "a.org"
    assert {(k.key_id, k.expired_ts) for k in keys} == {("ed25519:k1", None), ("ed25519:k0", 1000)}
    with pytest.raises(KeyUnavailable):
        parse_key_response(doc, "b.org", now)
    forged = dict(doc, valid_until_ts=doc["valid_until_ts"] + 1)
    with pytest.raises(KeyUnavailable, match="not signed"):
        parse_key_response(forged, "a.org", now)
    far = sign_json({k: v for k, v in doc.items() if k != "signatures"} | {"valid_until_ts": now + 10**12}, "a.org", key)
    _, capped = parse_key_response(far, "a.org", now)
    assert max(k.valid_until_ts for k in capped) == now + 7 * 24 * 3600 * 1000
    with pytest.raises(KeyUnavailable, match="expired"):
        local.verify_key("ed25519:k0", 1001)
    local.verify_key("ed25519:k0", 999)
