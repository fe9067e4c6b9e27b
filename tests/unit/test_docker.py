"""docker/compose.yml cannot run here (no Docker): check by reading what a
first-time user depends on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from coffeechat_home.config import load_config

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_instances_start_after_a_successful_init_and_healthy_nodes() -> None:
    services = _compose()["services"]
    nodes = ["crdb1", "crdb2", "crdb3"]
    for node in nodes:
        assert "cockroach" in " ".join(services[node]["healthcheck"]["test"])
    init = services["crdb-init"]
    script = "\n".join(init["command"])
    assert "|| true" not in script and "until" in script and "exit 1" in script
    assert "CREATE DATABASE IF NOT EXISTS coffeechat" in script
    for hs in ("hs1", "hs2"):
        deps = services[hs]["depends_on"]
        assert deps["crdb-init"] == {"condition": "service_completed_successfully"}
        assert all(deps[n] == {"condition": "service_healthy"} for n in nodes)


def test_instances_use_every_node_one_public_url_and_their_own_names() -> None:
    services = _compose()["services"]
    envs = [services[hs]["environment"] for hs in ("hs1", "hs2")]
    names = {e["COFFEECHAT_INSTANCE_NAME"] for e in envs}
    assert names == {"hs1", "hs2"}
    urls = {e["COFFEECHAT_PUBLIC_BASEURL"] for e in envs}
    assert urls == {"http://localhost:8008/"}
    assert services["lb"]["ports"] == ["8008:8008"]
    for env in envs:
        assert sorted(env["COCKROACH_HOSTNAME"].split(",")) == ["crdb1", "crdb2", "crdb3"]
        config = load_config(None, {k: str(v) for k, v in env.items()})
        assert "@crdb" in config.database.url and config.database.url.count(":26257") == 3
        assert config.client_base_url == "http://localhost:8008/"
        # the listener is on 0.0.0.0 in the image: wake-ups need an address the other instance reaches
        assert config.instance_wake_address == (env["COFFEECHAT_INSTANCE_NAME"], 9100)
    assert envs[0]["COCKROACH_HOSTNAME"].split(",")[0] != envs[1]["COCKROACH_HOSTNAME"].split(",")[0]
    nginx = (DOCKER / "nginx.conf").read_text(encoding="utf-8")
    assert "server hs1:8008" in nginx and "server hs2:8008" in nginx
