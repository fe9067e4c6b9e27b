"""Push rules as data: the server-default rules and how a user's ruleset is
assembled from them, the user's own rules and the user's changes to the
defaults (spec: "Push Rules", client-server API).

Ordering within the global ruleset: ``.m.rule.master`` first, then per kind
user-defined rules before the server-default rules of that kind. The legacy
mention rules (``.m.rule.contains_display_name``, ``.m.rule.roomnotif``,
``.m.rule.contains_user_name``) are kept: they are part of the spec up to
v1.16 (this server advertises v1.11) and Synapse still serves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

KINDS = ("override", "content", "room", "sender", "underride")
# Legacy action strings that must be accepted (and are ignored by pushers).
ACTION_STRINGS = frozenset({"notify", "dont_notify", "coalesce"})

_SOUND = {"set_tweak": "sound", "value": "default"}
_RING = {"set_tweak": "sound", "value": "ring"}
_HIGHLIGHT = {"set_tweak": "highlight"}


class InvalidPushRule(ValueError):
    """A rule a client may not create as given (400)."""


@dataclass(frozen=True, slots=True)
class UserRule:
    kind: str
    rule_id: str
    conditions: list[dict[str, Any]] | None
    pattern: str | None
    actions: list[Any]
    enabled: bool


@dataclass(frozen=True, slots=True)
class DefaultChange:
    """A user's change to one server-default rule (None: unchanged)."""

    enabled: bool | None
    actions: list[Any] | None


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _rule(rule_id: str, conditions: list[dict[str, Any]], actions: list[Any], enabled: bool = True) -> dict[str, Any]:
    return {"rule_id": rule_id, "default": True, "enabled": enabled, "conditions": conditions, "actions": actions}


def default_rules(user_id: str) -> dict[str, list[dict[str, Any]]]:
    """The server-default rules per kind, in priority order, for one user.
    ``.m.rule.master`` is the first override rule."""
    localpart = user_id[1:].split(":", 1)[0]
    override = [
        _rule(".m.rule.master", [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
        _rule(
            ".m.rule.invite_for_me",
            [_match("type", "m.room.member"), _match("content.membership", "invite"), _match("state_key", user_id)],
            ["notify", _SOUND],
        ),
        _rule(".m.rule.member_event", [_match("type", "m.room.member")], []),
        _rule(
            ".m.rule.is_user_mention",
            [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id}],
            ["notify", _SOUND, _HIGHLIGHT],
        ),
        _rule(".m.rule.contains_display_name", [{"kind": "contains_display_name"}], ["notify", _SOUND, _HIGHLIGHT]),
        _rule(
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.roomnotif",
            [_match("content.body", "@room"), {"kind": "sender_notification_permission", "key": "room"}],
            ["notify", _HIGHLIGHT],
        ),
        _rule(".m.rule.tombstone", [_match("type", "m.room.tombstone"), _match("state_key", "")], ["notify", _HIGHLIGHT]),
        _rule(".m.rule.reaction", [_match("type", "m.reaction")], []),
        _rule(".m.rule.room.server_acl", [_match("type", "m.room.server_acl"), _match("state_key", "")], []),
        _rule(
            ".m.rule.suppress_edits",
            [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
            [],
        ),
    ]
    content = [
        {
            "rule_id": ".m.rule.contains_user_name",
            "default": True,
            "enabled": True,
            "pattern": localpart,
            "actions": ["notify", _SOUND, _HIGHLIGHT],
        }
    ]
    underride = [
        _rule(".m.rule.call", [_match("type", "m.call.invite")], ["notify", _RING]),
        _rule(
            ".m.rule.encrypted_room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
            ["notify", _SOUND],
        ),
        _rule(
            ".m.rule.room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
            ["notify", _SOUND],
        ),
        _rule(".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
        _rule(".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
    ]
    return {"override": override, "content": content, "room": [], "sender": [], "underride": underride}


def is_default_rule_id(rule_id: str) -> bool:
    return rule_id.startswith(".")


def _user_rule_json(rule: UserRule) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rule_id": rule.rule_id,
        "default": False,
        "enabled": rule.enabled,
        "actions": rule.actions,
    }
    if rule.kind in ("override", "underride"):
        out["conditions"] = rule.conditions or []
    elif rule.kind == "content":
        out["pattern"] = rule.pattern or ""
    return out


def build_ruleset(
    user_id: str,
    user_rules: Sequence[UserRule],
    changes: Mapping[tuple[str, str], DefaultChange],
) -> dict[str, list[dict[str, Any]]]:
    """The user's global ruleset. ``user_rules`` are in priority order
    within each kind; ``changes`` maps (kind, rule_id) of default rules to
    the user's changes."""
    defaults = default_rules(user_id)
    for kind, rules in defaults.items():
        for rule in rules:
            change = changes.get((kind, rule["rule_id"]))
            if change is None:
                continue
            if change.enabled is not None:
                rule["enabled"] = change.enabled
            if change.actions is not None:
                rule["actions"] = change.actions
    own: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for r in user_rules:
        own[r.kind].append(_user_rule_json(r))
    master, *other_overrides = defaults["override"]
    return {
        "override": [master, *own["override"], *other_overrides],
        "content": [*own["content"], *defaults["content"]],
        "room": own["room"],
        "sender": own["sender"],
        "underride": [*own["underride"], *defaults["underride"]],
    }


def find_rule(ruleset: Mapping[str, list[dict[str, Any]]], kind: str, rule_id: str) -> dict[str, Any] | None:
    for rule in ruleset.get(kind, []):
        if rule["rule_id"] == rule_id:
            return rule
    return None


def check_actions(actions: Any) -> list[Any]:
    if not isinstance(actions, list):
        raise InvalidPushRule("actions must be an array")
    for action in actions:
        if isinstance(action, str):
            if action not in ACTION_STRINGS:
                raise InvalidPushRule(f"unrecognised action {action!r}")
        elif isinstance(action, dict):
            if not isinstance(action.get("set_tweak"), str):
                raise InvalidPushRule("an action object needs a string set_tweak")
        else:
            raise InvalidPushRule("actions must be strings or objects")
    return actions


def check_new_rule_id(rule_id: str) -> None:
    if is_default_rule_id(rule_id):
        raise InvalidPushRule("rule ids starting with '.' are reserved for server-default rules")
    if "/" in rule_id or "\\" in rule_id:
        raise InvalidPushRule("rule ids may not contain slashes or backslashes")
    if not rule_id:
        raise InvalidPushRule("rule id must not be empty")


def rule_from_body(kind: str, rule_id: str, body: Mapping[str, Any]) -> UserRule:
    """A user rule from a PUT body (already schema-validated)."""
    check_new_rule_id(rule_id)
    actions = check_actions(body.get("actions"))
    conditions: list[dict[str, Any]] | None = None
    pattern: str | None = None
    if kind in ("override", "underride"):
        conditions = list(body.get("conditions") or [])
    elif kind == "content":
        pattern = body.get("pattern")
        if not isinstance(pattern, str):
            raise InvalidPushRule("content rules need a pattern")
    elif kind == "room":
        conditions = [_match("room_id", rule_id)]
    elif kind == "sender":
        conditions = [_match("sender", rule_id)]
    else:
        raise InvalidPushRule(f"unknown kind {kind!r}")
    return UserRule(kind, rule_id, conditions, pattern, actions, True)
