"""Push rules: the default ruleset, user rules with ordering, enabled and
actions of default and user rules, and the m.push_rules account data."""

from __future__ import annotations

from typing import Any

from ..helpers import ApiClient
from .room_helpers import q

OVERRIDE_IDS = [
    ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
    ".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention", ".m.rule.roomnotif",
    ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits",
]
UNDERRIDE_IDS = [
    ".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one", ".m.rule.message",
    ".m.rule.encrypted",
]


def ids(rules: list[dict[str, Any]]) -> list[str]:
    return [r["rule_id"] for r in rules]


def rule(ruleset: dict[str, Any], kind: str, rule_id: str) -> dict[str, Any]:
    return next(r for r in ruleset[kind] if r["rule_id"] == rule_id)


async def test_default_ruleset(api: ApiClient) -> None:
    await api.register("alice")
    r = await api.get("pushrules/")
    assert r.status == 200
    g = r["global"]
    assert ids(g["override"]) == OVERRIDE_IDS
    assert ids(g["content"]) == [".m.rule.contains_user_name"]
    assert ids(g["underride"]) == UNDERRIDE_IDS
    assert g["room"] == [] and g["sender"] == []
    assert all(x["default"] for kind in g.values() for x in kind)
    master = rule(g, "override", ".m.rule.master")
    assert master == {"rule_id": ".m.rule.master", "default": True, "enabled": False, "conditions": [], "actions": []}
    invite = rule(g, "override", ".m.rule.invite_for_me")
    assert {"kind": "event_match", "key": "state_key", "pattern": api.user_id} in invite["conditions"]
    mention = rule(g, "override", ".m.rule.is_user_mention")
    assert mention["conditions"] == [
        {"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": api.user_id}
    ]
    assert mention["actions"] == ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]
    assert rule(g, "content", ".m.rule.contains_user_name")["pattern"] == "alice"
    assert rule(g, "underride", ".m.rule.call")["actions"] == ["notify", {"set_tweak": "sound", "value": "ring"}]
    assert (await api.get("pushrules/global/")).body == g
    r = await api.get("pushrules/global/override/.m.rule.suppress_edits")
    assert r.status == 200 and r["conditions"][0]["value"] == "m.replace"


async def test_user_rules_and_ordering(api: ApiClient) -> None:
    await api.register("bob")
    base = "pushrules/global/content"
    for name in ("A", "B"):  # a new rule becomes the most important
        r = await api.put(f"{base}/{name}", {"pattern": name.lower(), "actions": ["notify"]})
        assert r.status == 200
    r = await api.put(f"{base}/C", {"pattern": "c", "actions": []}, params={"after": "A"})
    assert r.status == 200
    g = (await api.get("pushrules/"))["global"]
    assert ids(g["content"]) == ["B", "A", "C", ".m.rule.contains_user_name"]
    # moving an existing rule; before wins over after
    assert (await api.put(f"{base}/A", {"pattern": "aa", "actions": []}, params={"before": "B", "after": "C"})).status == 200
    g = (await api.get("pushrules/"))["global"]
    assert ids(g["content"]) == ["A", "B", "C", ".m.rule.contains_user_name"]
    assert rule(g, "content", "A") == {"rule_id": "A", "default": False, "enabled": True, "pattern": "aa", "actions": []}
    # an update without before/after keeps the place and the enabled state
    assert (await api.put(f"{base}/C/enabled", {"enabled": False})).status == 200
    assert (await api.put(f"{base}/C", {"pattern": "cc", "actions": ["notify"]})).status == 200
    g = (await api.get("pushrules/"))["global"]
    assert ids(g["content"]) == ["A", "B", "C", ".m.rule.contains_user_name"]
    assert rule(g, "content", "C")["enabled"] is False
    r = await api.get(f"{base}/C")
    assert r.body == {"rule_id": "C", "default": False, "enabled": False, "pattern": "cc", "actions": ["notify"]}


async def test_override_room_and_sender_rules(api: ApiClient) -> None:
    await api.register("carol")
    cond = [{"kind": "event_match", "key": "content.body", "pattern": "beer"}, {"kind": "room_member_count", "is": "<=10"}]
    r = await api.put("pushrules/global/override/beer", {"conditions": cond, "actions": ["notify"]})
    assert r.status == 200
    room = "!dj234r78wl45Gh4D:test.local"
    assert (await api.put(f"pushrules/global/room/{q(room)}", {"actions": []})).status == 200
    assert (await api.put(f"pushrules/global/sender/{q('@spam:test.local')}", {"actions": []})).status == 200
    assert (await api.put("pushrules/global/underride/low", {"actions": ["notify"]})).status == 200
    g = (await api.get("pushrules/"))["global"]
    assert ids(g["override"])[:3] == [".m.rule.master", "beer", ".m.rule.suppress_notices"]
    assert rule(g, "override", "beer")["conditions"] == cond
    assert g["room"] == [{"rule_id": room, "default": False, "enabled": True, "actions": []}]
    assert ids(g["sender"]) == ["@spam:test.local"]
    assert ids(g["underride"])[0] == "low" and rule(g, "underride", "low")["conditions"] == []


async def test_put_errors(api: ApiClient) -> None:
    await api.register("dave")
    base = "pushrules/global"
    cases: list[tuple[str, dict[str, Any], dict[str, str] | None, str]] = [
        (f"{base}/content/.mine", {"pattern": "x", "actions": []}, None, "M_UNKNOWN"),
        (f"{base}/content/nopattern", {"actions": []}, None, "M_UNKNOWN"),
        (f"{base}/override/badaction", {"actions": ["explode"]}, None, "M_UNKNOWN"),
        (f"{base}/override/anchor", {"actions": []}, {"before": "missing"}, "M_UNKNOWN"),
        (f"{base}/override/anchor", {"actions": []}, {"after": ".m.rule.master"}, "M_UNKNOWN"),
        (f"{base}/bogus/x", {"actions": []}, None, "M_INVALID_PARAM"),
    ]
    for path, body, params, errcode in cases:
        r = await api.put(path, body, params=params)
        assert (r.status, r["errcode"]) == (400, errcode), (path, body, params)
    r = await api.put(f"{base}/override/noactions", {"conditions": []}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")
    r = await api.put(f"{base}/override/x", {"actions": [], "conditions": [{"key": "type"}]}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")
    r = await api.put(f"{base}/override/x", {"actions": [], "conditions": [{"kind": 5}]}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await api.put(f"{base}/override/x", data=b"{", headers={"Content-Type": "application/json"})
    assert (r.status, r["errcode"]) == (400, "M_NOT_JSON")


async def test_get_and_delete_not_found(api: ApiClient) -> None:
    await api.register("erin")
    base = "pushrules/global"
    assert (await api.put(f"{base}/override/mine", {"actions": []})).status == 200
    assert (await api.delete(f"{base}/override/mine")).status == 200
    for method, path in (
        ("GET", f"{base}/override/mine"),
        ("DELETE", f"{base}/override/mine"),
        ("DELETE", f"{base}/override/.m.rule.master"),
        ("GET", f"{base}/content/.m.rule.master"),
        ("GET", f"{base}/override/mine/enabled"),
        ("PUT", f"{base}/override/mine/enabled"),
        ("GET", f"{base}/override/mine/actions"),
        ("PUT", f"{base}/override/.m.rule.nonexistent/actions"),
    ):
        body = {"enabled": True} if path.endswith("enabled") else {"actions": []}
        r = await api.request(method, path, body if method == "PUT" else None)
        assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND"), (method, path)
    r = await api.get(f"{base}/bogus/x")
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")


async def test_enabled_and_actions(api: ApiClient) -> None:
    await api.register("fay")
    master = "pushrules/global/override/.m.rule.master"
    assert (await api.get(f"{master}/enabled")).body == {"enabled": False}
    assert (await api.put(f"{master}/enabled", {"enabled": True})).status == 200
    assert (await api.get(f"{master}/enabled")).body == {"enabled": True}
    msg = "pushrules/global/underride/.m.rule.message"
    assert (await api.get(f"{msg}/actions")).body == {"actions": ["notify"]}
    new_actions = ["notify", {"set_tweak": "sound", "value": "bing"}]
    assert (await api.put(f"{msg}/actions", {"actions": new_actions})).status == 200
    assert (await api.get(f"{msg}/actions")).body == {"actions": new_actions}
    # enabling does not undo the actions change
    assert (await api.put(f"{msg}/enabled", {"enabled": False})).status == 200
    r = await api.get(msg)
    assert r["actions"] == new_actions and r["enabled"] is False and r["default"] is True
    # user rules too
    assert (await api.put("pushrules/global/sender/@x:test.local", {"actions": []})).status == 200
    user_rule = "pushrules/global/sender/@x:test.local"
    assert (await api.put(f"{user_rule}/actions", {"actions": ["notify"]})).status == 200
    assert (await api.put(f"{user_rule}/enabled", {"enabled": False})).status == 200
    r = await api.get(user_rule)
    assert r.body == {"rule_id": "@x:test.local", "default": False, "enabled": False, "actions": ["notify"]}
    r = await api.put(f"{master}/enabled", {"enabled": "yes"}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await api.put(f"{master}/enabled", {}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")
    r = await api.put(f"{msg}/actions", {"actions": ["explode"]})
    assert (r.status, r["errcode"]) == (400, "M_UNKNOWN")


async def test_push_rules_account_data_follows_changes(api: ApiClient) -> None:
    await api.register("gus")
    sync = await api.get("sync")
    initial = {e["type"]: e["content"] for e in sync["account_data"]["events"]}
    assert initial["m.push_rules"] == (await api.get("pushrules/")).body
    assert (await api.put("pushrules/global/override/.m.rule.master/enabled", {"enabled": True})).status == 200
    sync = await api.get("sync", params={"since": sync["next_batch"], "timeout": "5000"})
    changed = {e["type"]: e["content"] for e in sync["account_data"]["events"]}
    assert changed["m.push_rules"]["global"]["override"][0]["enabled"] is True
    assert changed["m.push_rules"] == (await api.get("pushrules/")).body
    r = await api.get(f"user/{q(api.user_id)}/account_data/m.push_rules")
    assert r.body == changed["m.push_rules"]
