"""The conversation features around rooms, built together for app.py:
account data and tags, receipts, typing, presence, profiles, filters, push
rules and the user directory; plus what /sync and the rooms service need
from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..storage.account_data import GLOBAL, AccountDataStore
from ..storage.database import Database
from ..storage.filters import FilterStore
from ..storage.presence import PresenceStore
from ..storage.profiles import ProfileStore
from ..storage.push_rules import PushRuleStore
from ..storage.receipts import ReceiptStore
from ..storage.rooms import RoomStore
from ..storage.stream import StreamStore
from ..storage.typing import TypingStore
from ..storage.unread import UnreadStore
from ..storage.user_directory import UserDirectoryStore
from .account_data import AccountDataService
from .fanout import SharedReads
from .notifier import Notifier
from .presence import PresenceService
from .profiles import ProfileService
from .push_rules import PushRuleService
from .receipts import ReceiptService
from .sync import SyncSources
from .typing import TypingService
from .unread import UnreadService


@dataclass
class Conversation:
    account_data: AccountDataService
    receipts: ReceiptService
    typing: TypingService
    presence: PresenceService
    profiles: ProfileService
    filters: FilterStore
    push_rules: PushRuleService
    user_directory: UserDirectoryStore
    search_all_users: bool
    unread: UnreadService
    _account_data_reads: SharedReads[
        tuple[str, int | None, int], tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]
    ] = field(default_factory=lambda: SharedReads(ttl=1.0, size=256))

    async def start(self) -> None:
        """Background work: the typing expiry sweep."""
        await self.typing.start()

    async def stop(self) -> None:
        await self.typing.stop()

    def sync_sources(self) -> SyncSources:
        return SyncSources(
            receipts=self.receipts.receipts_for_sync,
            typing=self.typing.typing_for_sync,
            account_data_global=self.global_account_data_for_sync,
            account_data_rooms=self.room_account_data_for_sync,
            presence=self.presence.presence_for_sync,
            unread=self.unread.counts_for_sync,
            timeline_read=self.unread.new_events_read,
        )

    async def _account_data_for_sync(
        self, user_id: str, since: int | None, upto: int
    ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """One read for a sync's two account data parts (global and per
        room), which ask side by side. Callers must not modify it."""
        return await self._account_data_reads.get(
            (user_id, since, upto), lambda: self.account_data.account_data_for_sync(user_id, since, upto))

    async def global_account_data_for_sync(self, user_id: str, since: int | None, upto: int) -> list[dict[str, Any]]:
        events, _ = await self._account_data_for_sync(user_id, since, upto)
        return events

    async def room_account_data_for_sync(
        self, user_id: str, room_ids: list[str], since: int | None, upto: int
    ) -> dict[str, list[dict[str, Any]]]:
        _, by_room = await self._account_data_for_sync(user_id, since, upto)
        wanted = set(room_ids)
        return {room_id: events for room_id, events in by_room.items() if room_id in wanted and room_id != GLOBAL}


def build_conversation(
    config: Config, db: Database, stream: StreamStore, notifier: Notifier, rooms: RoomStore
) -> Conversation:
    account_data = AccountDataService(AccountDataStore(db, stream), notifier)
    push_rules = PushRuleService(PushRuleStore(db, stream), notifier)
    return Conversation(
        account_data=account_data,
        receipts=ReceiptService(ReceiptStore(db, stream), rooms, account_data, notifier),
        typing=TypingService(TypingStore(db, stream), rooms, notifier),
        presence=PresenceService(PresenceStore(db, stream), rooms, notifier, enabled=config.presence.enabled),
        profiles=ProfileService(ProfileStore(db), config.server_name),
        filters=FilterStore(db),
        push_rules=push_rules,
        user_directory=UserDirectoryStore(db),
        search_all_users=config.user_directory.search_all_users,
        unread=UnreadService(UnreadStore(db), push_rules, rooms, stream),
    )
