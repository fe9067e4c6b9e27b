"""Synapse in its own virtualenv under bench/.work/, installed on first use.

Kept apart from the project's environment so Synapse's pins never touch ours.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

SYNAPSE_SPEC = "matrix-synapse[postgres]==1.163.2"
FALLBACK_SPEC = "matrix-synapse[postgres]"


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def synapse_version(python: Path) -> str | None:
    if not python.exists():
        return None
    r = subprocess.run(
        [str(python), "-c", "import synapse, psycopg2; print(synapse.__version__)"],
        capture_output=True, text=True, timeout=120,
    )
    return r.stdout.strip() if r.returncode == 0 else None


def ensure_synapse(venv_dir: Path, log=print) -> tuple[Path, str]:
    """Return (python of the venv, Synapse version), installing if needed."""
    python = venv_python(venv_dir)
    version = synapse_version(python)
    if version:
        return python, version
    log(f"installing {SYNAPSE_SPEC} into {venv_dir} (one time, about a minute) ...")
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["--upgrade", "pip", "wheel"], check=False, timeout=600)
    r = subprocess.run(pip + [SYNAPSE_SPEC], timeout=1200)
    if r.returncode != 0:
        log(f"{SYNAPSE_SPEC} failed; trying {FALLBACK_SPEC}")
        subprocess.run(pip + [FALLBACK_SPEC], check=True, timeout=1200)
    version = synapse_version(python)
    if not version:
        raise RuntimeError(f"Synapse not importable from {python} after install")
    return python, version


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    py, v = ensure_synapse(here / ".work" / "synapse-venv")
    print(py, v, file=sys.stderr)
