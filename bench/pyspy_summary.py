"""Summarize py-spy raw (collapsed) stacks: where our server spends its time.

    python bench/pyspy_summary.py bench/.work/pyspy-send.txt [--top 25]

Prints the share of samples that are idle (the event loop waiting), then the
top functions by inclusive and by self time among the busy samples, and the
share under some hot-path markers (JSON, signing, hashing, asyncpg, aiohttp).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

IDLE = ("select (selectors.py", "_run_once (asyncio/base_events.py", "run_forever")
MARKERS = {
    "asyncpg (protocol, pool, connection)": re.compile(r"asyncpg/"),
    "aiohttp (server, parsing, responses)": re.compile(r"aiohttp/"),
    "json / orjson / canonical JSON": re.compile(r"json|canonical", re.I),
    "signing (ed25519)": re.compile(r"signing\.py|sign_json|nacl|ed25519", re.I),
    "hashing (content hash, event id)": re.compile(r"hashing\.py|hashlib|reference_hash|content_hash", re.I),
    "auth rules": re.compile(r"protocol/auth\.py"),
    "jsonschema validation": re.compile(r"jsonschema/"),
    "logging": re.compile(r"logging/|logs\.py"),
}


def frames_of(stack: str) -> list[str]:
    return [f.strip() for f in stack.split(";") if f.strip()]


def short(frame: str) -> str:
    m = re.match(r"(.*) \((.*?):?(\d+)?\)$", frame)
    if not m:
        return frame
    fn, path = m.group(1), m.group(2)
    path = re.sub(r".*/site-packages/", "", path)
    path = re.sub(r".*/(coffeechat_home/)", r"\1", path)
    path = re.sub(r".*/lib/python3\.\d+/", "", path)
    return f"{fn} ({path})"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    total = idle = 0
    incl: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    marks: collections.Counter[str] = collections.Counter()
    for line in open(args.file, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, n = line.rpartition(" ")
        try:
            count = int(n)
        except ValueError:
            continue
        frames = [short(f) for f in frames_of(stack)]
        total += count
        if not frames or any(frames[-1].startswith(i.split(" (")[0] + " (") and i.split("(")[1] in frames[-1]
                             for i in IDLE[:1]):
            idle += count
            continue
        busy_frames = frames
        for f in set(busy_frames):
            incl[f] += count
        self_[busy_frames[-1]] += count
        joined = ";".join(busy_frames)
        for name, rx in MARKERS.items():
            if rx.search(joined):
                marks[name] += count
    busy = total - idle
    print(f"samples: {total}, idle (event loop waiting in select): {idle} ({100 * idle / max(total, 1):.0f}%), "
          f"busy: {busy}")
    print("\nshare of busy samples under:")
    for name, c in marks.most_common():
        print(f"  {100 * c / max(busy, 1):5.1f}%  {name}")
    print(f"\ntop {args.top} inclusive (share of busy samples):")
    for f, c in incl.most_common(args.top):
        print(f"  {100 * c / max(busy, 1):5.1f}%  {f}")
    print(f"\ntop {args.top} self:")
    for f, c in self_.most_common(args.top):
        print(f"  {100 * c / max(busy, 1):5.1f}%  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
