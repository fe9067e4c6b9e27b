"""The signing key file when several processes start at once on one data
directory: one key wins, every process loads that same key, and no reader
ever sees a partly written file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from coffeechat_home.keyfile import ensure_signing_key, load_signing_key
from coffeechat_home.protocol.signing import format_signing_key

_RACER = """
import sys, time
from pathlib import Path
from coffeechat_home.keyfile import ensure_signing_key, load_signing_key
from coffeechat_home.protocol.signing import format_signing_key
path, go, role = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
while not go.exists():
    time.sleep(0.001)
wrote = False
if role == "writer":
    wrote = ensure_signing_key(path)
else:  # a reader: loads the moment the name appears
    while not path.exists():
        pass
print(int(wrote), format_signing_key(load_signing_key(path)))
"""


def test_processes_racing_to_create_the_key_agree(tmp_path: Path) -> None:
    path = tmp_path / "data" / "signing.key"
    go = tmp_path / "go"
    roles = ["writer"] * 6 + ["reader"] * 4
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(path), str(go), role],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for role in roles
    ]
    time.sleep(0.5)  # let them all start and wait
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        wrote, key = out.strip().split(" ", 1)
        results.append((int(wrote), key))
    assert sum(w for w, _ in results) == 1  # exactly one writer won
    assert len({k for _, k in results}) == 1  # everyone loaded that key
    assert results[0][1] == format_signing_key(load_signing_key(path))
    # no temporary files left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["signing.key"]


def test_existing_key_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    assert ensure_signing_key(path) is True
    first = path.read_text()
    assert ensure_signing_key(path) is False
    assert path.read_text() == first
    assert (path.stat().st_mode & 0o777) == 0o600
