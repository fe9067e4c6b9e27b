"""Push rules as data: default rules, ruleset assembly, rule validation."""

from __future__ import annotations

import pytest

from coffeechat_home.protocol.push_rules import (
    DefaultChange,
    InvalidPushRule,
    UserRule,
    build_ruleset,
    check_actions,
    default_rules,
    find_rule,
    rule_from_body,
)

USER = "@alice:example.org"


def test_defaults_are_filled_in_for_the_user() -> None:
    d = default_rules(USER)
    assert d["content"][0]["pattern"] == "alice"
    invite = next(r for r in d["override"] if r["rule_id"] == ".m.rule.invite_for_me")
    assert invite["conditions"][2] == {"kind": "event_match", "key": "state_key", "pattern": USER}
    # every call builds fresh objects: changing one ruleset leaves the next alone
    d["override"][0]["enabled"] = True
    assert default_rules(USER)["override"][0]["enabled"] is False


def test_ruleset_order_and_changes() -> None:
    rules = [
        UserRule("override", "mine", [], None, ["notify"], True),
        UserRule("underride", "low", [], None, [], False),
        UserRule("content", "cake", None, "cake*", ["notify"], True),
        UserRule("room", "!r:example.org", [{"kind": "event_match", "key": "room_id", "pattern": "!r:example.org"}],
                 None, [], True),
    ]
    changes = {("override", ".m.rule.master"): DefaultChange(True, None),
               ("underride", ".m.rule.message"): DefaultChange(None, [])}
    rs = build_ruleset(USER, rules, changes)
    assert [r["rule_id"] for r in rs["override"][:3]] == [".m.rule.master", "mine", ".m.rule.suppress_notices"]
    assert rs["override"][0]["enabled"] is True
    assert [r["rule_id"] for r in rs["content"]] == ["cake", ".m.rule.contains_user_name"]
    assert rs["underride"][0] == {"rule_id": "low", "default": False, "enabled": False, "conditions": [], "actions": []}
    assert find_rule(rs, "underride", ".m.rule.message")["actions"] == []  # type: ignore[index]
    assert rs["room"] == [{"rule_id": "!r:example.org", "default": False, "enabled": True, "actions": []}]
    assert find_rule(rs, "sender", "nope") is None


@pytest.mark.parametrize(
    "kind,rule_id,body",
    [
        ("override", ".m.rule.x", {"actions": []}),
        ("override", "a/b", {"actions": []}),
        ("content", "p", {"actions": []}),
        ("override", "x", {"actions": ["explode"]}),
        ("override", "x", {"actions": [{"value": 1}]}),
        ("override", "x", {"actions": "notify"}),
        ("bogus", "x", {"actions": []}),
    ],
)
def test_invalid_rules(kind: str, rule_id: str, body: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidPushRule):
        rule_from_body(kind, rule_id, body)


def test_room_and_sender_rules_imply_conditions() -> None:
    assert rule_from_body("room", "!r:x", {"actions": []}).conditions == [
        {"kind": "event_match", "key": "room_id", "pattern": "!r:x"}
    ]
    assert rule_from_body("sender", "@s:x", {"actions": []}).conditions == [
        {"kind": "event_match", "key": "sender", "pattern": "@s:x"}
    ]
    # legacy actions are accepted
    assert check_actions(["dont_notify", "coalesce", {"set_tweak": "sound", "value": "x"}])
