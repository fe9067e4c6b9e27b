"""Protocol hot path on one core: events built+hashed+signed per second, and
verified (content hash + signature + event ID) per second.

Run: python bench/bench_protocol_build.py [seconds per phase, default 1.5]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import canonicaljson  # noqa: E402

from coffeechat_home.protocol.builder import build_event  # noqa: E402
from coffeechat_home.protocol.canonical import encode_canonical_json, encode_canonical_json_trusted  # noqa: E402
from coffeechat_home.protocol.events import Event  # noqa: E402
from coffeechat_home.protocol.hashing import check_content_hash, compute_event_id  # noqa: E402
from coffeechat_home.protocol.room_versions import DEFAULT_ROOM_VERSION  # noqa: E402
from coffeechat_home.protocol.signing import (  # noqa: E402
    generate_signing_key,
    get_verify_key,
    verify_event_signature,
)

SERVER = "bench.example"
ROOM = "!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ"
PREV = ["$" + "A" * 43]
AUTH = ["$" + "B" * 43, "$" + "C" * 43]


def _rate(fn, seconds: float) -> tuple[float, int]:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn(n)
            n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start), n


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.5
    rv = DEFAULT_ROOM_VERSION
    key = generate_signing_key("bench")
    vk = get_verify_key(key)

    def build(i: int) -> Event:
        return build_event(
            rv,
            template={
                "type": "m.room.message",
                "sender": "@alice:bench.example",
                "room_id": ROOM,
                "content": {"msgtype": "m.text", "body": f"message {i}: héllo wörld, 日本語"},
            },
            prev_events=PREV,
            auth_events=AUTH,
            depth=i + 10,
            origin_server_ts=1_700_000_000_000 + i,
            server_name=SERVER,
            signing_key=key,
        )

    built_rate, n = _rate(build, seconds)
    events = [build(i) for i in range(2000)]

    def verify(i: int) -> None:
        ev = events[i % len(events)]
        assert check_content_hash(ev.pdu)
        verify_event_signature(ev.pdu, SERVER, vk, rv)
        assert compute_event_id(ev.pdu, rv) == ev.event_id

    verify_rate, _ = _rate(verify, seconds)
    pdu = events[0].pdu
    enc_checked, _ = _rate(lambda i: encode_canonical_json(pdu), seconds / 3)
    enc_trusted, _ = _rate(lambda i: encode_canonical_json_trusted(pdu), seconds / 3)
    enc_lib, _ = _rate(lambda i: canonicaljson.encode_canonical_json(pdu), seconds / 3)

    print(f"room version {rv.identifier}, one core, {seconds:.1f}s per phase")
    print(f"build+hash+sign+event_id : {built_rate:10,.0f} events/s  ({1e6 / built_rate:.1f} us/event, n={n})")
    print(f"verify hash+sig+event_id : {verify_rate:10,.0f} events/s  ({1e6 / verify_rate:.1f} us/event)")
    print(f"canonical JSON (checked) : {enc_checked:10,.0f} /s")
    print(f"canonical JSON (trusted) : {enc_trusted:10,.0f} /s")
    print(f"canonicaljson library    : {enc_lib:10,.0f} /s")


if __name__ == "__main__":
    main()
