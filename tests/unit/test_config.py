"""Config file and environment parsing, including the CockroachDB variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from coffeechat_home.config import (
    CONFIG_TEMPLATE,
    ConfigError,
    cockroach_url_from_env,
    load_config,
)


def test_defaults_without_file() -> None:
    c = load_config(None, {})
    assert c.server_name == "localhost:8008"
    assert (c.client_listener.host, c.client_listener.port) == ("127.0.0.1", 8008)
    assert c.federation_listener.port == 8448
    assert c.registration.mode == "closed"
    assert c.uses_embedded_database


def test_test_suite_variables_are_not_settings() -> None:
    # exported for the Synapse tests or the suite's database, they reach the servers tests start
    c = load_config(None, {"COFFEECHAT_SYNAPSE_VENV": "/x/venv", "COFFEECHAT_TEST_DATABASE_URL": "postgresql://x/y"})
    assert c.uses_embedded_database


def test_dev_mode_opens_registration_unless_set() -> None:
    assert load_config(None, {"COFFEECHAT_DEV_MODE": "true"}).registration.mode == "open"
    c = load_config(None, {"COFFEECHAT_DEV_MODE": "1", "COFFEECHAT_REGISTRATION_MODE": "closed"})
    assert c.registration.mode == "closed"


def test_web_pages_on_in_dev_mode_unless_set(tmp_path: Path) -> None:
    assert load_config(None, {}).web.enabled is False
    assert load_config(None, {"COFFEECHAT_DEV_MODE": "true"}).web.enabled is True
    assert load_config(None, {"COFFEECHAT_DEV_MODE": "true", "COFFEECHAT_WEB_ENABLED": "false"}).web.enabled is False
    assert load_config(None, {"COFFEECHAT_WEB_ENABLED": "true"}).web.enabled is True
    f = tmp_path / "c.toml"
    f.write_text("dev_mode = true\n[web]\nenabled = false\n")
    assert load_config(f, {}).web.enabled is False
    f.write_text("dev_mode = true\n")
    assert load_config(f, {}).web.enabled is True


def test_file_then_env_override(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        'server_name = "example.org"\ndata_dir = "d"\n[client_listener]\nport = 9000\n'
        '[database]\nurl = "postgresql://u@h/db"\n'
    )
    c = load_config(f, {"COFFEECHAT_CLIENT_LISTENER_PORT": "9001", "COFFEECHAT_LIMITS_LOGIN_PER_SECOND": "2.5"})
    assert c.server_name == "example.org"
    assert c.client_listener.port == 9001
    assert c.limits.login_per_second == 2.5
    assert c.database.url == "postgresql://u@h/db"
    assert Path(c.data_dir) == (tmp_path / "d").resolve()


def test_template_is_valid_config(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(CONFIG_TEMPLATE.format(server_name="a.b", data_dir="x", dev_mode="true", registration_mode="open"))
    c = load_config(f, {})
    assert c.server_name == "a.b" and c.dev_mode and c.registration.mode == "open"
    assert c.web.enabled  # the template leaves it unset: on in dev mode


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("server_name = 5", "server_name must be str"),
        ("nonsense = 1", "unknown setting 'nonsense'"),
        ('[registration]\nmode = "maybe"', "registration.mode"),
        ('server_name = "bad name!"', "server_name"),
        ("[client_listener]\nport = 70000", "port"),
        ('[database]\nurl = "mysql://x"', "postgresql://"),
        ("server_name = ", "not valid TOML"),
        ("[security]\npassword_scrypt_n = 1000", "power of two"),
    ],
)
def test_bad_config_file(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f, {})
    assert fragment in str(e.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/c.toml", {})


@pytest.mark.parametrize(
    "env,fragment",
    [
        ({"COFFEECHAT_CLIENT_LISTENER_PORT": "eighty"}, "expected an integer"),
        ({"COFFEECHAT_DEV_MODE": "perhaps"}, "expected a boolean"),
        ({"COFFEECHAT_NO_SUCH_THING": "1"}, "not a known setting"),
        ({"COFFEECHAT_INSTANCE_ADDRESS": "0.0.0.0:9100"}, "wildcard"),
        ({"COFFEECHAT_INSTANCE_ADDRESS": "10.0.0.5:port"}, "bad port"),
        ({"COFFEECHAT_INSTANCE_POLL_MS": "0"}, "instance_poll_ms"),
    ],
)
def test_bad_env(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, env)


def test_cockroach_variables_build_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    env = {
        "COCKROACH_USERNAME": "chat",
        "COCKROACH_PASSWORD": "p@ss word",
        "COCKROACH_HOSTNAME": "crdb.internal",
        "COCKROACH_DATABASE": "coffee",
        "COCKROACH_PORT": "26258",
        "COCKROACH_CA_CERT_PATH": str(ca),
        "COCKROACH_CLUSTER": "my-cluster-123",
    }
    c = load_config(None, env)
    url = c.database.url
    assert url.startswith("postgresql://chat:p%40ss%20word@crdb.internal:26258/coffee?")
    assert "sslmode=verify-full" in url and f"sslrootcert={ca}".replace("/", "%2F") in url
    assert "options=--cluster%3Dmy-cluster-123" in url
    assert not c.uses_embedded_database


def test_cockroach_defaults_and_errors(tmp_path: Path) -> None:
    url, ca = cockroach_url_from_env({"COCKROACH_HOSTNAME": "h"})  # type: ignore[misc]
    assert url == "postgresql://root@h:26257/defaultdb" and ca == ""
    assert cockroach_url_from_env({}) is None
    with pytest.raises(ConfigError, match="COCKROACH_HOSTNAME is missing"):
        load_config(None, {"COCKROACH_USERNAME": "u"})
    with pytest.raises(ConfigError, match="COCKROACH_PORT"):
        load_config(None, {"COCKROACH_HOSTNAME": "h", "COCKROACH_PORT": "x"})
    with pytest.raises(ConfigError, match="COCKROACH_CA_CERT_PATH"):
        load_config(None, {"COCKROACH_HOSTNAME": "h", "COCKROACH_CA_CERT_PATH": str(tmp_path / "none")})


def test_database_url_wins_over_cockroach_variables() -> None:
    c = load_config(None, {"COFFEECHAT_DATABASE_URL": "postgresql://a@b/c", "COCKROACH_HOSTNAME": "h"})
    assert c.database.url == "postgresql://a@b/c"


def test_connect_kwargs_for_cockroach_url(tmp_path: Path) -> None:
    import ssl

    from coffeechat_home.storage.database import _connect_kwargs

    ca = tmp_path / "ca.pem"
    # a real CA file is needed for an SSL context: generate a throwaway one
    import subprocess

    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ed25519", "-nodes", "-keyout", str(tmp_path / "k"),
         "-out", str(ca), "-subj", "/CN=test", "-days", "1"],
        check=True, capture_output=True,
    )
    c = load_config(None, {"COCKROACH_HOSTNAME": "h", "COCKROACH_CA_CERT_PATH": str(ca), "COCKROACH_CLUSTER": "cl"})
    kw = _connect_kwargs(c.database.url)
    assert isinstance(kw["ssl"], ssl.SSLContext) and kw["ssl"].check_hostname
    assert kw["server_settings"] == {"options": "--cluster=cl"}
    assert "sslrootcert" not in kw["dsn"] and "options" not in kw["dsn"]


def test_media_settings(tmp_path: Path) -> None:
    c = load_config(None, {"COFFEECHAT_DATA_DIR": str(tmp_path)})
    assert c.media_path == tmp_path / "media"
    assert c.media.max_upload_bytes == 50 * 1024 * 1024 and c.media.user_quota_bytes == 0
    assert c.media.unauthenticated_cutoff_ts == 0
    f = tmp_path / "c.toml"
    f.write_text('[media]\nstore_path = "shared/media"\nmax_upload_bytes = 1000\nuser_quota_bytes = 5000\n')
    c = load_config(f, {"COFFEECHAT_MEDIA_UNAUTHENTICATED_CUTOFF_TS": "1700000000000"})
    assert c.media_path == (tmp_path / "shared" / "media").resolve()
    assert (c.media.max_upload_bytes, c.media.user_quota_bytes) == (1000, 5000)
    assert c.media.unauthenticated_cutoff_ts == 1_700_000_000_000
    for bad in ("max_upload_bytes = 0", "user_quota_bytes = -1", "max_image_pixels = 0", "thumbnail_concurrency = 0"):
        f.write_text(f"[media]\n{bad}\n")
        with pytest.raises(ConfigError, match="media."):
            load_config(f, {})


def test_cockroach_hostname_lists_several_nodes() -> None:
    url, _ = cockroach_url_from_env(  # type: ignore[misc]
        {"COCKROACH_HOSTNAME": "crdb1, crdb2:26258,[::1],fe80::1,[::2]:5", "COCKROACH_PORT": "26000"}
    )
    assert url == "postgresql://root@crdb1:26000,crdb2:26258,[::1]:26000,[fe80::1]:26000,[::2]:5/defaultdb"
    for bad in ("crdb1:x", "a b", "[::1", ":26257", "[::1]x"):
        with pytest.raises(ConfigError, match="COCKROACH_HOSTNAME"):
            cockroach_url_from_env({"COCKROACH_HOSTNAME": bad})
    with pytest.raises(ConfigError, match="COCKROACH_HOSTNAME is missing"):
        cockroach_url_from_env({"COCKROACH_HOSTNAME": " , "})


def test_cockroach_client_certificate_variables(tmp_path: Path) -> None:
    cert, key, ca = tmp_path / "client.root.crt", tmp_path / "client.root.key", tmp_path / "ca.crt"
    for f in (cert, key, ca):
        f.write_text("x")
    url, _ = cockroach_url_from_env(  # type: ignore[misc]
        {"COCKROACH_HOSTNAME": "h", "COCKROACH_CLIENT_CERT_PATH": str(cert), "COCKROACH_CLIENT_KEY_PATH": str(key)}
    )
    assert "sslmode=require" in url
    assert f"sslcert={cert}".replace("/", "%2F") in url and f"sslkey={key}".replace("/", "%2F") in url
    url, _ = cockroach_url_from_env(  # type: ignore[misc]
        {"COCKROACH_HOSTNAME": "h", "COCKROACH_CA_CERT_PATH": str(ca),
         "COCKROACH_CLIENT_CERT_PATH": str(cert), "COCKROACH_CLIENT_KEY_PATH": str(key)}
    )
    assert "sslmode=verify-full" in url and "sslcert=" in url
    with pytest.raises(ConfigError, match="set both or neither"):
        load_config(None, {"COCKROACH_HOSTNAME": "h", "COCKROACH_CLIENT_CERT_PATH": str(cert)})
    with pytest.raises(ConfigError, match="COCKROACH_CLIENT_KEY_PATH: no such file"):
        load_config(None, {"COCKROACH_HOSTNAME": "h", "COCKROACH_CLIENT_CERT_PATH": str(cert),
                           "COCKROACH_CLIENT_KEY_PATH": str(tmp_path / "none")})


def test_sslkey_without_sslcert_is_a_clear_error() -> None:
    import asyncio

    from coffeechat_home.storage.database import Database, DatabaseError

    with pytest.raises(DatabaseError, match="sslkey is set without sslcert"):
        asyncio.run(Database.connect("postgresql://u@127.0.0.1:1/db?sslkey=/k"))
    with pytest.raises(DatabaseError, match="No such file"):
        asyncio.run(Database.connect("postgresql://u@127.0.0.1:1/db?sslmode=require&sslcert=/nonexistent/c"))


def test_federation_settings() -> None:
    c = load_config(None, {})
    assert (c.federation.allow_private_addresses, c.federation.verify_peer_certificates,
            c.federation.trusted_key_servers) == ([], True, [])
    c = load_config(None, {
        "COFFEECHAT_DEV_MODE": "true",
        "COFFEECHAT_FEDERATION_LISTENER_ENABLED": "true",
        "COFFEECHAT_FEDERATION_ALLOW_PRIVATE_ADDRESSES": "127.0.0.0/8,::1/128",
        "COFFEECHAT_FEDERATION_VERIFY_PEER_CERTIFICATES": "false",
        "COFFEECHAT_FEDERATION_TRUSTED_KEY_SERVERS": "matrix.org",
    })
    assert c.federation.allow_private_addresses == ["127.0.0.0/8", "::1/128"]
    assert not c.federation.verify_peer_certificates and c.federation.trusted_key_servers == ["matrix.org"]
    with pytest.raises(ConfigError, match="tls_certificate_path"):  # outside dev mode TLS files are required
        load_config(None, {"COFFEECHAT_FEDERATION_LISTENER_ENABLED": "true"})
    with pytest.raises(ConfigError, match="CIDR"):
        load_config(None, {"COFFEECHAT_FEDERATION_ALLOW_PRIVATE_ADDRESSES": "localhost"})
    with pytest.raises(ConfigError, match="trusted_key_servers"):
        load_config(None, {"COFFEECHAT_FEDERATION_TRUSTED_KEY_SERVERS": "not a name!"})


def test_instance_wake_address() -> None:
    # the client listener's host by default, any port
    assert load_config(None, {}).instance_wake_address == ("127.0.0.1", 0)
    # a listener on every address: none unless instance_address names one
    assert load_config(None, {"COFFEECHAT_CLIENT_LISTENER_HOST": "0.0.0.0"}).instance_wake_address is None
    c = load_config(None, {"COFFEECHAT_CLIENT_LISTENER_HOST": "::", "COFFEECHAT_INSTANCE_ADDRESS": "[fd00::5]:9100"})
    assert c.instance_wake_address == ("fd00::5", 9100)
    assert load_config(None, {"COFFEECHAT_INSTANCE_ADDRESS": "10.0.0.5"}).instance_wake_address == ("10.0.0.5", 0)
