"""Push rule evaluation against the server-default ruleset and against
single conditions."""

from __future__ import annotations

from typing import Any

import pytest

from coffeechat_home.protocol.push_eval import (
    PushContext,
    compile_ruleset,
    condition_matches,
    evaluate,
    glob_matches,
    highlights,
    matching_compiled,
    matching_rule,
    notifies,
    sound,
    split_key,
)
from coffeechat_home.protocol.push_rules import DefaultChange, UserRule, build_ruleset, default_rules

USER = "@alice:example.org"
BOB = "@bob:example.org"
ROOM = "!room:example.org"


def ctx(members: int = 3, *, name: str | None = "Alice Liddell", power: int = 0,
        levels: dict[str, int] | None = None) -> PushContext:
    return PushContext(USER, name, members, power, levels or {})


def message(body: str = "hello", **content: Any) -> dict[str, Any]:
    return {
        "type": "m.room.message", "sender": BOB, "room_id": ROOM, "event_id": "$e",
        "content": {"msgtype": "m.text", "body": body, **content},
    }


def rule_id(event: dict[str, Any], c: PushContext, ruleset: Any = None) -> str | None:
    rule = matching_rule(ruleset or default_rules(USER), event, c)
    return rule["rule_id"] if rule else None


def test_message_in_a_one_to_one_room_notifies_with_sound() -> None:
    ev = message()
    assert rule_id(ev, ctx(2)) == ".m.rule.room_one_to_one"
    actions = evaluate(default_rules(USER), ev, ctx(2))
    assert notifies(actions) and not highlights(actions)
    assert sound(actions) == "default"


def test_message_in_a_group_room_notifies_without_highlight() -> None:
    ev = message()
    assert rule_id(ev, ctx(3)) == ".m.rule.message"
    actions = evaluate(default_rules(USER), ev, ctx(3))
    assert notifies(actions) and not highlights(actions) and sound(actions) is None


def test_user_mention_highlights() -> None:
    ev = message("hey", **{"m.mentions": {"user_ids": [USER]}})
    assert rule_id(ev, ctx()) == ".m.rule.is_user_mention"
    assert highlights(evaluate(default_rules(USER), ev, ctx()))
    other = message("hey", **{"m.mentions": {"user_ids": ["@carol:example.org"]}})
    assert not highlights(evaluate(default_rules(USER), other, ctx()))


def test_display_name_and_user_name_highlight_on_word_boundaries() -> None:
    rules = default_rules(USER)
    assert rule_id(message("hi alice liddell!"), ctx()) == ".m.rule.contains_display_name"
    assert rule_id(message("ALICE, look"), ctx(name=None)) == ".m.rule.contains_user_name"
    assert highlights(evaluate(rules, message("ALICE, look"), ctx(name=None)))
    assert rule_id(message("malice aforethought"), ctx(name=None)) == ".m.rule.message"


def test_room_mention_needs_the_senders_notification_level() -> None:
    ev = message("everyone", **{"m.mentions": {"room": True}})
    assert rule_id(ev, ctx(power=0)) == ".m.rule.message"
    assert rule_id(ev, ctx(power=50)) == ".m.rule.is_room_mention"
    assert rule_id(ev, ctx(power=10, levels={"room": 10})) == ".m.rule.is_room_mention"
    assert rule_id(message("@room hi"), ctx(power=100)) == ".m.rule.roomnotif"


def test_notices_edits_and_reactions_do_not_notify() -> None:
    rules = default_rules(USER)
    notice = message(msgtype="m.notice")
    assert rule_id(notice, ctx()) == ".m.rule.suppress_notices"
    assert evaluate(rules, notice, ctx()) == []
    edit = message("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    assert rule_id(edit, ctx()) == ".m.rule.suppress_edits"
    assert not notifies(evaluate(rules, edit, ctx()))
    reaction = {"type": "m.reaction", "sender": BOB, "room_id": ROOM,
                "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "+1"}}}
    assert rule_id(reaction, ctx()) == ".m.rule.reaction"
    assert not notifies(evaluate(rules, reaction, ctx()))


def test_membership_events_do_not_notify_but_invites_for_me_do() -> None:
    join = {"type": "m.room.member", "sender": BOB, "state_key": BOB, "content": {"membership": "join"}}
    assert not notifies(evaluate(default_rules(USER), join, ctx()))
    invite = {"type": "m.room.member", "sender": BOB, "state_key": USER, "content": {"membership": "invite"}}
    assert rule_id(invite, ctx()) == ".m.rule.invite_for_me"


def test_master_rule() -> None:
    ev = message("alice", **{"m.mentions": {"user_ids": [USER]}})
    assert notifies(evaluate(build_ruleset(USER, [], {}), ev, ctx()))  # disabled by default
    muted = build_ruleset(USER, [], {("override", ".m.rule.master"): DefaultChange(True, None)})
    assert rule_id(ev, ctx(), muted) == ".m.rule.master"
    assert evaluate(muted, ev, ctx()) == []


def test_disabled_rules_are_skipped() -> None:
    no_mentions = build_ruleset(USER, [], {("override", ".m.rule.is_user_mention"): DefaultChange(False, None)})
    ev = message("hey", **{"m.mentions": {"user_ids": [USER]}})
    assert rule_id(ev, ctx(), no_mentions) == ".m.rule.message"


def test_kind_order_room_and_sender_rules() -> None:
    rules = build_ruleset(USER, [
        UserRule("room", ROOM, None, None, [], True),
        UserRule("sender", BOB, None, None, ["notify", {"set_tweak": "highlight"}], True),
        UserRule("content", "cake", None, "cake*", ["notify", {"set_tweak": "sound", "value": "bell"}], True),
    ], {})
    # content before room before sender
    assert rule_id(message("cakes!"), ctx(), rules) == "cake"
    assert sound(evaluate(rules, message("cakes!"), ctx())) == "bell"
    assert rule_id(message("hi"), ctx(), rules) == ROOM
    elsewhere = {**message("hi"), "room_id": "!other:example.org"}
    assert rule_id(elsewhere, ctx(), rules) == BOB
    assert highlights(evaluate(rules, elsewhere, ctx()))


def test_an_override_rule_with_an_unknown_condition_never_matches() -> None:
    rules = build_ruleset(USER, [
        UserRule("override", "x", [{"kind": "org.example.future"}], None, ["notify"], True),
    ], {})
    notice = message(msgtype="m.notice")
    assert rule_id(notice, ctx(), rules) == ".m.rule.suppress_notices"


# -- conditions -----------------------------------------------------------------------------


def test_split_key_escapes() -> None:
    assert split_key("content.m\\.mentions.room") == ["content", "m.mentions", "room"]
    assert split_key("a\\\\.b") == ["a\\", "b"]
    assert split_key("a\\b") == ["a\\b"]


@pytest.mark.parametrize(("pattern", "value", "expected"), [
    ("m.notice", "m.notice", True),
    ("m.notice", "M.NOTICE", True),
    ("m.notice", "m.notices", False),
    ("m.*", "m.room.message", True),
    ("m.?oom", "m.room", True),
    ("m.?oom", "m.broom", False),
    ("a+b", "a+b", True),
    ("", "", True),
])
def test_glob(pattern: str, value: str, expected: bool) -> None:
    assert glob_matches(pattern, value) is expected


def test_event_match_requires_a_string() -> None:
    cond = {"kind": "event_match", "key": "content.n", "pattern": "*"}
    assert not condition_matches(cond, {"content": {"n": 1}}, ctx())
    assert not condition_matches(cond, {"content": {}}, ctx())
    assert condition_matches(cond, {"content": {"n": ""}}, ctx())


def test_event_property_is_and_contains_are_type_strict() -> None:
    is_true = {"kind": "event_property_is", "key": "content.x", "value": True}
    assert condition_matches(is_true, {"content": {"x": True}}, ctx())
    assert not condition_matches(is_true, {"content": {"x": 1}}, ctx())
    assert not condition_matches(is_true, {"content": {}}, ctx())
    is_null = {"kind": "event_property_is", "key": "content.x", "value": None}
    assert condition_matches(is_null, {"content": {"x": None}}, ctx())
    assert not condition_matches(is_null, {"content": {}}, ctx())
    contains = {"kind": "event_property_contains", "key": "content.xs", "value": 1}
    assert condition_matches(contains, {"content": {"xs": [True, 1]}}, ctx())
    assert not condition_matches(contains, {"content": {"xs": [True]}}, ctx())
    assert not condition_matches(contains, {"content": {"xs": 1}}, ctx())


@pytest.mark.parametrize(("is_", "count", "expected"), [
    ("2", 2, True), ("==2", 3, False), ("<3", 2, True), ("<3", 3, False), (">3", 4, True),
    ("<=3", 3, True), (">=3", 2, False), ("bogus", 2, False), (">", 2, False),
])
def test_room_member_count(is_: str, count: int, expected: bool) -> None:
    assert condition_matches({"kind": "room_member_count", "is": is_}, {}, ctx(count)) is expected


def test_highlight_tweak_false_is_no_highlight() -> None:
    assert not highlights(["notify", {"set_tweak": "highlight", "value": False}])
    assert highlights(["notify", {"set_tweak": "highlight", "value": True}])
    assert not highlights([{"set_tweak": "highlight"}])


def test_word_search_without_regex_agrees_with_the_pattern() -> None:
    """Display names and user names are matched as whole words without
    compiling a pattern per recipient (ASCII); the answers are the
    pattern's, checked over random short strings of word and non-word
    characters (bounded, seeded)."""
    import random
    import re

    from coffeechat_home.protocol.push_eval import _word_search

    rnd = random.Random(15)
    alphabet = "ab_ .-!9A\n"
    for _ in range(20_000):
        word = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 3)))
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 8)))
        want = re.search(rf"(?:^|\W){re.escape(word)}(?:\W|$)", text, re.IGNORECASE) is not None
        assert _word_search(word, text) is want, (word, text)
    assert glob_matches("alice", "Hi ALICE!", words=True)
    assert not glob_matches("alice", "malice", words=True)
    assert glob_matches("wonder*", "a wonderland", words=True)


# -- compiled rulesets (one memo per event, shared by every user) ---------------------------


def test_compiled_rules_with_a_shared_memo_agree_with_evaluate() -> None:
    """Each event is evaluated for many users in turn with one memo: the
    rule found is the one ``matching_rule`` finds for each user, whatever
    the users' display names, mentions, own rules, member counts and power
    levels (the memo must never carry one user's answer to another)."""
    users = [f"@u{i}:example.org" for i in range(6)] + [USER]
    rulesets = {u: default_rules(u) for u in users}
    rulesets["@u1:example.org"] = build_ruleset("@u1:example.org", [
        UserRule("content", "cake", None, "cake*", ["notify", {"set_tweak": "highlight"}], True),
        UserRule("override", "weird", [{"kind": "event_property_is", "key": "content.n", "value": 1}],
                 None, ["notify"], True),
        UserRule("override", "future", [{"kind": "org.example.future"}], None, ["notify"], True),
        UserRule("sender", BOB, None, None, ["dont_notify"], True),
    ], {("override", ".m.rule.is_user_mention"): DefaultChange(False, None)})
    rulesets["@u4:example.org"] = build_ruleset("@u4:example.org", [
        UserRule("override", "strict", [{"kind": "event_property_is", "key": "content.n", "value": True}],
                 None, ["notify", {"set_tweak": "highlight"}], True),
    ], {})
    rulesets["@u2:example.org"] = build_ruleset(
        "@u2:example.org", [], {("override", ".m.rule.master"): DefaultChange(True, None)})
    names = {u: (None if i == 3 else "Alice Liddell" if u == USER else "Zoë" if i == 5 else f"user {i % 3}")
             for i, u in enumerate(users)}
    events = [
        message("hello"), message("user 1 said cakes"), message("Alice?"), message("@room hi"),
        message("u0 and u4", **{"m.mentions": {"user_ids": ["@u0:example.org", "@u4:example.org"]}}),
        message("everyone", **{"m.mentions": {"room": True}}), message(msgtype="m.notice"),
        {**message("n"), "content": {"body": "n", "n": True}}, {**message("n"), "content": {"body": "n", "n": 1}},
        {"type": "m.room.member", "sender": BOB, "room_id": ROOM, "state_key": "@u5:example.org",
         "content": {"membership": "invite"}},
        {"type": "m.reaction", "sender": BOB, "room_id": ROOM, "content": {}},
        {**message("hi"), "sender": "@carol:example.org"}, message("hi Zoë! and user 2"), message("ZOË, U3"),
        {**message("x"), "content": {"body": ["not", "text"]}},
        message("ids", **{"m.mentions": {"user_ids": [{"id": "@u0:example.org"}, "@u6:example.org", 1]}}),
    ]
    compiled = {u: compile_ruleset(r) for u, r in rulesets.items()}
    memos: list[dict[Any, Any]] = [{} for _ in events]  # one per event, across all contexts
    for members in (2, 3, 40):
        for power, levels in ((0, {}), (100, {"room": 50}), (10, {"room": 20})):
            for ev, memo in zip(events, memos):
                for u in users:
                    c = PushContext(u, names[u], members, power, levels)
                    want = matching_rule(rulesets[u], ev, c)
                    got = matching_compiled(compiled[u], ev, c, memo)
                    assert (got.rule_id if got else None) == (want["rule_id"] if want else None), (u, ev)
                    if got is not None:
                        actions = evaluate(rulesets[u], ev, c)
                        assert (got.notify, got.highlight) == (notifies(actions), highlights(actions))
