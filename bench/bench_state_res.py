"""State resolution on a big room: 10,000 state events, two forks of 100.

Builds, for room versions 11 (state res v2) and 12 (v2.1), a room with
10,000 state events (create, power levels, join rules and 9,997 member
joins), then two forks of 100 conflicting events each:

* fork A: a power levels change, then 99 display name changes;
* fork B: a different power levels change, 10 kicks, then 89 display name
  changes, half of them of the same users as fork A.

and times ``resolve_state`` over the two fork states (events from an
in-memory map; auth chains walked by the resolver itself, no index).

Run: ``python bench/bench_state_res.py [--repeat N]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coffeechat_home.protocol.events import Event, StateKey, auth_types_for_event  # noqa: E402
from coffeechat_home.protocol.room_versions import ROOM_V11, ROOM_V12, RoomVersion  # noqa: E402
from coffeechat_home.protocol.state_res import resolve_state  # noqa: E402

ALICE = "@alice:hs0.test"
STATE_EVENTS = 10_000
FORK_EVENTS = 100


class RoomBuilder:
    def __init__(self, rv: RoomVersion):
        self.rv = rv
        self.events: dict[str, Event] = {}
        self.ts = 0
        if rv.room_id_format.value == "hash":
            self.create_id = "$bench-create-v" + rv.identifier
            self.room_id = "!" + self.create_id[1:]
        else:
            self.create_id = "$bench-create:hs0.test"
            self.room_id = "!bench:hs0.test"

    def add(self, state: dict[StateKey, str], eid: str, type_: str, sender: str, sk: str, content: dict[str, Any], prev: str | None) -> None:
        self.ts += 1
        auth = [state[k] for k in auth_types_for_event(self.rv, type_, sender, sk, content) if k in state]
        pdu: dict[str, Any] = {
            "type": type_,
            "state_key": sk,
            "sender": sender,
            "content": content,
            "auth_events": auth,
            "prev_events": [prev] if prev else [],
            "depth": self.ts,
            "origin_server_ts": 1_700_000_000_000 + self.ts,
        }
        if not (type_ == "m.room.create" and self.rv.room_id_format.value == "hash"):
            pdu["room_id"] = self.room_id
        self.events[eid] = Event(pdu, eid, self.rv)
        state[(type_, sk)] = eid


def user(i: int) -> str:
    return f"@user{i}:hs{i % 50}.test"


def build(rv: RoomVersion) -> tuple[RoomBuilder, list[dict[StateKey, str]]]:
    b = RoomBuilder(rv)
    state: dict[StateKey, str] = {}
    create_content: dict[str, Any] = {"room_version": rv.identifier}
    if not rv.implicit_room_creator:
        create_content["creator"] = ALICE
    b.add(state, b.create_id, "m.room.create", ALICE, "", create_content, None)
    b.add(state, "$alice-join", "m.room.member", ALICE, ALICE, {"membership": "join"}, b.create_id)
    base_users = {} if rv.privileged_creators else {ALICE: 100}
    b.add(state, "$pl0", "m.room.power_levels", ALICE, "", {"users": base_users}, "$alice-join")
    b.add(state, "$jr", "m.room.join_rules", ALICE, "", {"join_rule": "public"}, "$pl0")
    prev = "$jr"
    i = 0
    while len(state) < STATE_EVENTS:
        eid = f"$join{i}"
        b.add(state, eid, "m.room.member", user(i), user(i), {"membership": "join"}, prev)
        prev, i = eid, i + 1
    base = dict(state)

    fork_a = dict(base)
    b.add(fork_a, "$plA", "m.room.power_levels", ALICE, "", {"users": {**base_users, user(1): 50}}, prev)
    last = "$plA"
    for n in range(FORK_EVENTS - 1):
        eid = f"$nameA{n}"
        b.add(fork_a, eid, "m.room.member", user(n), user(n), {"membership": "join", "displayname": f"A{n}"}, last)
        last = eid

    fork_b = dict(base)
    b.add(fork_b, "$plB", "m.room.power_levels", ALICE, "", {"users": {**base_users, user(2): 50}, "kick": 40}, prev)
    last = "$plB"
    for n in range(10):
        eid = f"$kickB{n}"
        b.add(fork_b, eid, "m.room.member", ALICE, user(5000 + n), {"membership": "leave"}, last)
        last = eid
    for n in range(FORK_EVENTS - 11):
        u = 50 + n
        eid = f"$nameB{n}"
        b.add(fork_b, eid, "m.room.member", user(u), user(u), {"membership": "join", "displayname": f"B{n}"}, last)
        last = eid
    assert len(base) == STATE_EVENTS
    return b, [fork_a, fork_b]


def bench(rv: RoomVersion, repeat: int) -> tuple[float, float, int, int]:
    builder, forks = build(rv)
    times = []
    resolved: dict[StateKey, str] = {}
    for _ in range(repeat):
        start = time.perf_counter()
        resolved = resolve_state(rv, forks, builder.events.get)
        times.append(time.perf_counter() - start)
    # sanity: the resolution kept both forks' work where they do not collide
    assert resolved[("m.room.member", user(0))] == "$nameA0"
    assert resolved[("m.room.member", user(5000))] == "$kickB0"
    conflicted = sum(1 for k in set(forks[0]) | set(forks[1]) if forks[0].get(k) != forks[1].get(k))
    return min(times), statistics.median(times), len(resolved), conflicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per room version (bounded to 1..50)")
    args = parser.parse_args()
    repeat = max(1, min(args.repeat, 50))
    print(f"state resolution: {STATE_EVENTS} state events, two forks of {FORK_EVENTS} events, {repeat} runs each")
    for rv in (ROOM_V11, ROOM_V12):
        best, median, size, conflicted = bench(rv, repeat)
        print(
            f"  room v{rv.identifier} ({rv.state_res.value}): min {best * 1000:.1f} ms, median {median * 1000:.1f} ms"
            f"  ({conflicted} conflicted keys, {size} keys resolved)"
        )


if __name__ == "__main__":
    main()
