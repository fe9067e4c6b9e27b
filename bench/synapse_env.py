"""Synapse in its own virtualenv under bench/.work/, installed on first use.

Kept apart from the project's environment so Synapse's pins never touch ours.
The version is pinned: a venv holding another version is reinstalled, and a
failed install stops the benchmark (no silent fallback to whatever pip finds,
which would make runs incomparable).
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

SYNAPSE_VERSION = "1.163.2"
SYNAPSE_SPEC = f"matrix-synapse[postgres]=={SYNAPSE_VERSION}"


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def synapse_version(python: Path) -> str | None:
    if not python.exists():
        return None
    r = subprocess.run(
        [str(python), "-c", "import synapse, psycopg2; print(synapse.__version__)"],
        capture_output=True, text=True, timeout=120,
    )
    # synapse.__version__ may carry git details ("1.163.2 (b=branch,rev)") when
    # the current directory is a git checkout: the release is the first word
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout.strip() else None


def ensure_synapse(venv_dir: Path, log=print) -> tuple[Path, str]:
    """Return (python of the venv, Synapse version), installing if needed."""
    python = venv_python(venv_dir)
    version = synapse_version(python)
    if version == SYNAPSE_VERSION:
        return python, version
    if version:
        log(f"{venv_dir} holds Synapse {version}, not the pinned {SYNAPSE_VERSION}: reinstalling")
    log(f"installing {SYNAPSE_SPEC} into {venv_dir} (one time, about a minute) ...")
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["--upgrade", "pip", "wheel"], check=False, timeout=600)
    r = subprocess.run(pip + [SYNAPSE_SPEC], timeout=1200)
    if r.returncode != 0:
        raise RuntimeError(f"pip could not install {SYNAPSE_SPEC}; the benchmark compares with that version only")
    version = synapse_version(python)
    if version != SYNAPSE_VERSION:
        raise RuntimeError(f"{python} has Synapse {version!r} after installing {SYNAPSE_SPEC}")
    return python, version


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    py, v = ensure_synapse(here / ".work" / "synapse-venv")
    print(py, v, file=sys.stderr)


def _unlimited(per_second: float = 100000, burst: int = 100000) -> dict[str, float]:
    return {"per_second": per_second, "burst_count": burst}


def base_config(hs: Path) -> dict:
    """The Synapse settings every run of ours shares (bench and tests): files in
    ``hs``, open registration with cheap bcrypt, keys fetched straight from peers,
    no stats, no URL previews, and no rate limit that a benchmark or a test could
    hit. Callers add the server name, listeners and database."""
    import secrets

    rc = _unlimited()
    return {
        "pid_file": str(hs / "homeserver.pid"),
        "log_config": str(hs / "log.yaml"),
        "media_store_path": str(hs / "media"),
        "signing_key_path": str(hs / "signing.key"),
        "report_stats": False,
        "enable_metrics": False,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "bcrypt_rounds": 4,
        "macaroon_secret_key": secrets.token_hex(32),
        "registration_shared_secret": secrets.token_hex(32),
        "form_secret": secrets.token_hex(32),
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "url_preview_enabled": False,
        "rc_message": rc,
        "rc_registration": rc,
        "rc_registration_token_validity": rc,
        "rc_login": {"address": rc, "account": rc, "failed_attempts": rc},
        "rc_admin_redaction": rc,
        "rc_joins": {"local": rc, "remote": rc},
        "rc_joins_per_room": rc,
        "rc_3pid_validation": rc,
        "rc_invites": {"per_room": rc, "per_user": rc, "per_issuer": rc},
        "rc_third_party_invite": rc,
        "rc_media_create": rc,
        "rc_presence": {"per_user": rc},
        "rc_delayed_event_mgmt": rc,
        "rc_reports": rc,
        "rc_room_creation": rc,
        "rc_key_requests": rc,
        "rc_federation": {"window_size": 1000, "sleep_limit": 100000, "sleep_delay": 0,
                          "reject_limit": 100000, "concurrent": 1000},
    }


def write_synapse_files(hs: Path, config: dict, *, log_level: str, key_id: str,
                        loggers: dict[str, str] | None = None) -> Path:
    """Writes ``homeserver.yaml`` (YAML is a superset of JSON), ``log.yaml``
    (``loggers``: levels of single loggers, e.g. ``{"synapse.access": "INFO"}``
    for the request lines) and a fresh signing key into ``hs``; returns the
    config's path."""
    import base64
    import json
    import os

    (hs / "media").mkdir(parents=True, exist_ok=True)
    (hs / "homeserver.yaml").write_text(json.dumps(config, indent=1))
    (hs / "log.yaml").write_text(json.dumps({
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(levelname)s - %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                              "filename": str(hs / "homeserver.log")}},
        "root": {"level": log_level, "handlers": ["file"]},
        "loggers": {name: {"level": level} for name, level in (loggers or {}).items()},
        "disable_existing_loggers": False,
    }))
    seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    (hs / "signing.key").write_text(f"ed25519 {key_id} {seed}\n")
    return hs / "homeserver.yaml"
