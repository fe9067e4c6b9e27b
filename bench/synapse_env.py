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
