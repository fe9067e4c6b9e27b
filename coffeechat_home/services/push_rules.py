"""Push rules API: the global ruleset, user rules, and the enabled state
and actions of every rule (server-default ones included)."""

from __future__ import annotations

from typing import Any, Mapping

import orjson

from ..errors import MatrixError, bad_json, invalid_param, not_found
from ..protocol.push_rules import (
    KINDS,
    InvalidPushRule,
    check_actions,
    default_rules,
    find_rule,
    is_default_rule_id,
    rule_from_body,
)
from ..storage.push_rules import PushRuleNotFound, PushRuleStore
from .notifier import Notifier


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise invalid_param(f"Unknown push rule kind {kind!r}; expected one of {', '.join(KINDS)}")


def _check_storable(*values: Any) -> None:
    """Actions and conditions are stored as JSON: integers must fit 64 bits."""
    try:
        for value in values:
            orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise bad_json("The push rule is not valid Matrix JSON (integers must fit 64 bits)") from None


def _rule_not_found() -> MatrixError:
    return not_found("The push rule was not found")


class PushRuleService:
    def __init__(self, store: PushRuleStore, notifier: Notifier) -> None:
        self.store = store
        self.notifier = notifier

    async def get_ruleset(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        return await self.store.ruleset(user_id)

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> dict[str, Any]:
        _check_kind(kind)
        rule = find_rule(await self.store.ruleset(user_id), kind, rule_id)
        if rule is None:
            raise _rule_not_found()
        return rule

    async def put_rule(
        self, user_id: str, kind: str, rule_id: str, body: Mapping[str, Any], before: str | None, after: str | None
    ) -> None:
        _check_kind(kind)
        try:
            rule = rule_from_body(kind, rule_id, body)
        except InvalidPushRule as e:
            raise MatrixError(400, "M_UNKNOWN", str(e)) from None
        _check_storable(rule.actions, rule.conditions)
        for anchor in (before, after):
            if anchor is not None and is_default_rule_id(anchor):
                raise MatrixError(400, "M_UNKNOWN", f"Cannot place a rule relative to a server-default rule: {anchor}")
        try:
            await self.store.put_rule(user_id, rule, before, after)
        except PushRuleNotFound as e:
            raise MatrixError(400, "M_UNKNOWN", f"before/after rule not found: {e.rule_id}") from None
        self.notifier.poke()

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        _check_kind(kind)
        if is_default_rule_id(rule_id):
            raise _rule_not_found()  # server-default rules cannot be deleted (Synapse answers 404 too)
        try:
            await self.store.delete_rule(user_id, kind, rule_id)
        except PushRuleNotFound:
            raise _rule_not_found() from None
        self.notifier.poke()

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: bool) -> None:
        await self._set(user_id, kind, rule_id, enabled=enabled)

    async def set_actions(self, user_id: str, kind: str, rule_id: str, actions: Any) -> None:
        try:
            checked = check_actions(actions)
        except InvalidPushRule as e:
            raise MatrixError(400, "M_UNKNOWN", str(e)) from None
        _check_storable(checked)
        await self._set(user_id, kind, rule_id, actions=checked)

    async def _set(self, user_id: str, kind: str, rule_id: str, **change: Any) -> None:
        _check_kind(kind)
        try:
            if is_default_rule_id(rule_id):
                if not any(r["rule_id"] == rule_id for r in default_rules(user_id)[kind]):
                    raise PushRuleNotFound(rule_id)
                await self.store.set_default_rule(user_id, kind, rule_id, **change)
            else:
                await self.store.set_user_rule(user_id, kind, rule_id, **change)
        except PushRuleNotFound:
            raise _rule_not_found() from None
        self.notifier.poke()
