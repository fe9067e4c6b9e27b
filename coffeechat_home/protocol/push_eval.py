"""Evaluating a user's push rules against an event (spec: "Push Rules",
client-server API): the kinds in priority order (override, content, room,
sender, underride), the first enabled rule whose conditions all match
decides the actions.

Pure: the caller supplies the event in client format and a
:class:`PushContext` (room member count, the user's display name in the
room, the sender's power level and the room's ``notifications`` power
levels). Unknown condition kinds never match, so a rule using one never
applies (as the spec asks).
"""

from __future__ import annotations

import itertools
import re
from collections import abc
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

from .push_rules import KINDS

DEFAULT_NOTIFICATION_LEVEL = 50  # power level needed for an unlisted notifications key


@dataclass(frozen=True, slots=True)
class PushContext:
    user_id: str
    display_name: str | None
    member_count: int
    sender_power_level: int = 0
    notification_levels: Mapping[str, int] = field(default_factory=dict)


# -- keys and values ------------------------------------------------------------------------


def split_key(key: str) -> list[str]:
    """A dotted key's parts: ``\\.`` is a literal dot, ``\\\\`` a literal
    backslash; any other backslash stands for itself."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(key):
        c = key[i]
        if c == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            cur.append(key[i + 1])
            i += 2
            continue
        if c == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


_MISSING = object()


@lru_cache(maxsize=4096)
def _key_parts(key: str) -> tuple[str, ...]:
    return tuple(split_key(key))


def lookup(event: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key, or ``_MISSING``."""
    value: Any = event
    for part in _key_parts(key):
        # dict first: the ABC's isinstance is several times slower
        if not (isinstance(value, dict) or isinstance(value, abc.Mapping)) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _same_value(a: Any, b: Any) -> bool:
    """Equality of non-compound JSON values: ``true`` is not ``1``."""
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    return type(a) is type(b) and a == b


# -- globs ----------------------------------------------------------------------------------


def _glob_body(pattern: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


@lru_cache(maxsize=16384)
def _glob_re(pattern: str, words: bool) -> re.Pattern[str]:
    body = _glob_body(pattern)
    if words:
        # a word-boundary match anywhere in the value (content.body, content
        # rules and display names, as Synapse matches them)
        return re.compile(rf"(?:^|\W){body}(?:\W|$)", re.IGNORECASE | re.DOTALL)
    return re.compile(rf"{body}\Z", re.IGNORECASE | re.DOTALL)


@lru_cache(maxsize=16384)
def _display_name_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?:^|\W){re.escape(name)}(?:\W|$)", re.IGNORECASE)


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _ascii_word_search(word: str, text: str) -> bool:
    """``(?:^|\\W)word(?:\\W|$)`` case-insensitively, for ASCII ``word``
    and ``text`` (the same answer as the pattern, without compiling one per
    user: display names and user names differ for every recipient)."""
    if not word:
        return _regex_word_search(word, text)
    return _lowered_word_search(word.lower(), text.lower())


def _lowered_word_search(w: str, low: str) -> bool:
    """``_ascii_word_search`` of a word and a text both lowered already."""
    start = low.find(w)
    while start != -1:
        end = start + len(w)
        if (start == 0 or not _is_word_char(low[start - 1])) and (end == len(low) or not _is_word_char(low[end])):
            return True
        start = low.find(w, start + 1)
    return False


def _regex_word_search(word: str, text: str) -> bool:
    return _display_name_re(word).search(text) is not None


def _word_search(word: str, text: str) -> bool:
    if word.isascii() and text.isascii():
        return _ascii_word_search(word, text)
    return _regex_word_search(word, text)


def glob_matches(pattern: str, value: str, *, words: bool = False) -> bool:
    if words and "*" not in pattern and "?" not in pattern:
        return _word_search(pattern, value)
    rx = _glob_re(pattern, words)
    return bool(rx.search(value) if words else rx.match(value))


# -- conditions -----------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _member_count_spec(spec: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(==|<=|>=|<|>)?([0-9]+)", spec.strip())
    if m is None:
        return None
    return m.group(1) or "==", int(m.group(2))


def _member_count_matches(spec: Any, count: int) -> bool:
    if not isinstance(spec, str):
        return False
    parsed = _member_count_spec(spec)
    if parsed is None:
        return False
    op, n = parsed
    if op == "==":
        return count == n
    if op == "<":
        return count < n
    if op == ">":
        return count > n
    return count <= n if op == "<=" else count >= n


def condition_matches(cond: Mapping[str, Any], event: Mapping[str, Any], ctx: PushContext) -> bool:
    kind = cond.get("kind")
    if kind == "event_match":
        key, pattern = cond.get("key"), cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return False
        value = lookup(event, key)
        return isinstance(value, str) and glob_matches(pattern, value, words=key == "content.body")
    if kind == "event_property_is":
        key = cond.get("key")
        return isinstance(key, str) and _same_value(lookup(event, key), cond.get("value", _MISSING))
    if kind == "event_property_contains":
        key = cond.get("key")
        if not isinstance(key, str):
            return False
        values = lookup(event, key)
        wanted = cond.get("value", _MISSING)
        return isinstance(values, list) and any(_same_value(v, wanted) for v in values)
    if kind == "contains_display_name":
        body = lookup(event, "content.body")
        name = ctx.display_name
        if not isinstance(body, str) or not name:
            return False
        return _word_search(name, body)
    if kind == "room_member_count":
        return _member_count_matches(cond.get("is"), ctx.member_count)
    if kind == "sender_notification_permission":
        key = cond.get("key")
        if not isinstance(key, str):
            return False
        needed = ctx.notification_levels.get(key, DEFAULT_NOTIFICATION_LEVEL)
        return ctx.sender_power_level >= needed
    return False  # unknown kinds never match


def _conditions(kind: str, rule: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """A rule's conditions; content, room and sender rules have theirs
    implied by the pattern or the rule id. None: the rule cannot match."""
    if kind == "content":
        pattern = rule.get("pattern")
        return [{"kind": "event_match", "key": "content.body", "pattern": pattern}] if isinstance(pattern, str) else None
    if kind == "room":
        return [{"kind": "event_match", "key": "room_id", "pattern": rule["rule_id"]}]
    if kind == "sender":
        return [{"kind": "event_match", "key": "sender", "pattern": rule["rule_id"]}]
    conditions = rule.get("conditions", [])
    return list(conditions) if isinstance(conditions, list) else None


def matching_rule(
    ruleset: Mapping[str, list[Mapping[str, Any]]], event: Mapping[str, Any], ctx: PushContext
) -> Mapping[str, Any] | None:
    """The first enabled rule (in the spec's order) that matches the event."""
    for kind in KINDS:
        for rule in ruleset.get(kind, []):
            if not rule.get("enabled", True):
                continue
            conditions = _conditions(kind, rule)
            if conditions is None:
                continue
            if all(isinstance(c, abc.Mapping) and condition_matches(c, event, ctx) for c in conditions):
                return rule
    return None


def evaluate(
    ruleset: Mapping[str, list[Mapping[str, Any]]], event: Mapping[str, Any], ctx: PushContext
) -> list[Any]:
    """The actions for the event: the first matching rule's, or none."""
    rule = matching_rule(ruleset, event, ctx)
    if rule is None:
        return []
    actions = rule.get("actions", [])
    return list(actions) if isinstance(actions, list) else []


# -- actions --------------------------------------------------------------------------------


def _tweak(actions: list[Any], name: str) -> Any:
    for a in actions:
        if isinstance(a, abc.Mapping) and a.get("set_tweak") == name:
            return a.get("value", True if name == "highlight" else None)
    return None


def notifies(actions: list[Any]) -> bool:
    return "notify" in actions


def highlights(actions: list[Any]) -> bool:
    """A highlight counts only with a notification (as in Synapse)."""
    return notifies(actions) and _tweak(actions, "highlight") is True


def sound(actions: list[Any]) -> str | None:
    value = _tweak(actions, "sound")
    return value if isinstance(value, str) else None


# -- compiled rulesets: one event evaluated for many users ---------------------------------
#
# When one event reaches hundreds of members, most of their rules' conditions
# are the same (the default rules differ only where they name the user), so
# each distinct condition is evaluated once per event: a compiled rule keeps
# a memo key per condition that depends on the event alone, and the caller
# passes one memo dict per event, shared by every user it evaluates for.

_NEVER = object()  # a condition that cannot match: its rule never applies
_DISPLAY_NAME = 1  # depends on the user's display name: memo key (name)
_MEMBER_COUNT = 2  # depends on the room's member count: memo key (spec, count)
_CONTEXT = 3  # depends on power levels: evaluated each time
_CONTAINS = 4  # event_property_contains: the property's values read once per event
_WORD = 5  # a literal word in content.body (user names): the body lowered once per event
_BODY_KEY = ("content.body lowered",)  # memo entry: the lowered ASCII body, or None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule_id: str
    actions: list[Any]  # shared: callers must not modify
    notify: bool
    highlight: bool
    # (memo id, condition key, condition, which context it reads): the key
    # None when it reads one; the memo id a small int standing for the key
    # (a tuple's hash is not cached: hashed once per user otherwise)
    conditions: tuple[tuple[Any, Any, Mapping[str, Any], int], ...]


# condition key -> memo id; ids are never reused (the map may be cleared), so
# a memo never confuses two keys
_MEMO_IDS: dict[Any, int] = {}
_next_memo_id = itertools.count(1)
_MEMO_IDS_KEPT = 10_000


def _memo_id(key: Any) -> Any:
    if key is None or key[0] == "room_member_count":
        return key  # combined with the context at each use
    found = _MEMO_IDS.get(key)
    if found is None:
        if len(_MEMO_IDS) >= _MEMO_IDS_KEPT:
            _MEMO_IDS.clear()
        found = _MEMO_IDS[key] = next(_next_memo_id)
    return found


def _condition_key(cond: Mapping[str, Any]) -> Any:
    """A hashable key equal for conditions that give the same answer on the
    same event whatever the context; None when it reads the context,
    ``_NEVER`` when it cannot match."""
    kind = cond.get("kind")
    key = cond.get("key")
    if kind == "event_match":
        pattern = cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return _NEVER
        return ("event_match", key, pattern)
    if kind in ("event_property_is", "event_property_contains"):
        value = cond.get("value", _MISSING)
        if not isinstance(key, str) or isinstance(value, (dict, list)):
            return _NEVER  # a compound value is never equal (_same_value)
        return (kind, key, type(value), value)  # the type: True and 1 differ
    if kind in ("contains_display_name", "room_member_count", "sender_notification_permission"):
        return None
    return _NEVER  # unknown kinds never match


def compile_ruleset(ruleset: Mapping[str, list[Mapping[str, Any]]]) -> tuple[CompiledRule, ...]:
    """The enabled rules that can match, in the spec's order, ready for
    :func:`matching_compiled`."""
    out: list[CompiledRule] = []
    for kind in KINDS:
        for rule in ruleset.get(kind, []):
            if not rule.get("enabled", True):
                continue
            conditions = _conditions(kind, rule)
            if conditions is None or not all(isinstance(c, abc.Mapping) for c in conditions):
                continue
            compiled = []
            for c in conditions:
                key = _condition_key(c)
                if key is _NEVER:
                    break
                reads = 0
                if key is not None and key[0] == "event_property_contains":
                    reads = _CONTAINS
                elif key is not None and key[0] == "event_match" and key[1] == "content.body" and not any(
                    ch in key[2] for ch in "*?"
                ) and key[2] and key[2].isascii():
                    reads = _WORD
                if key is None:
                    kind_read = c.get("kind")
                    reads = (_DISPLAY_NAME if kind_read == "contains_display_name"
                             else _MEMBER_COUNT if kind_read == "room_member_count" else _CONTEXT)
                    if reads == _MEMBER_COUNT:
                        spec = c.get("is")
                        key = ("room_member_count", spec if isinstance(spec, str) else None)
                compiled.append((_memo_id(key), key, c, reads))
            else:
                raw = rule.get("actions", [])
                actions = list(raw) if isinstance(raw, list) else []
                out.append(CompiledRule(
                    str(rule.get("rule_id", "")), actions, notifies(actions), highlights(actions), tuple(compiled)
                ))
    return tuple(out)


def matching_compiled(
    rules: tuple[CompiledRule, ...], event: Mapping[str, Any], ctx: PushContext, memo: dict[Any, Any]
) -> CompiledRule | None:
    """What ``matching_rule`` finds, for a compiled ruleset; ``memo`` holds
    the answers of conditions on this ``event`` (one dict per event, shared
    by every user evaluated against it)."""
    for rule in rules:
        for mid, key, cond, reads in rule.conditions:
            if reads == _CONTEXT:
                ok = condition_matches(cond, event, ctx)
            else:
                if reads == _DISPLAY_NAME:
                    mid = ("contains_display_name", ctx.display_name)
                elif reads == _MEMBER_COUNT:
                    mid = (key, ctx.member_count)
                hit = memo.get(mid)
                if hit is None:
                    hit = memo[mid] = _answer(key, cond, reads, event, ctx, memo)
                ok = hit
            if not ok:
                break
        else:
            return rule
    return None


def _answer(key: Any, cond: Mapping[str, Any], reads: int, event: Mapping[str, Any], ctx: PushContext,
            memo: dict[Any, Any]) -> bool:
    """A condition's answer not in the memo yet; conditions that differ
    per user (a mention of them, their name in the body) reuse what the
    event gives everyone (its mentioned ids, its lowered body)."""
    if reads == _CONTAINS:
        values_key = ("values of", key[1])
        values = memo.get(values_key)
        if values is None:
            found = lookup(event, key[1])
            values = memo[values_key] = frozenset(
                (type(v), v) for v in found if not isinstance(v, (dict, list))
            ) if isinstance(found, list) else frozenset()
        return (key[2], key[3]) in values
    word = ctx.display_name if reads == _DISPLAY_NAME else key[2] if reads == _WORD else None
    if word and word.isascii():
        if _BODY_KEY not in memo:
            body = lookup(event, "content.body")
            memo[_BODY_KEY] = body.lower() if isinstance(body, str) and body.isascii() else None
        low = memo[_BODY_KEY]
        if low is not None:
            return _lowered_word_search(word.lower(), low)
    return condition_matches(cond, event, ctx)
