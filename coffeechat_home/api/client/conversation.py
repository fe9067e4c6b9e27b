"""Registers the routes of the conversation features (one call for app.py)."""

from __future__ import annotations

from aiohttp import web

from ...services.conversation import Conversation
from ..auth import TokenAuth
from .account_data import AccountDataRoutes
from .capabilities import CapabilitiesRoutes
from .filters import FilterRoutes
from .notifications import NotificationRoutes
from .presence import PresenceRoutes
from .profile import ProfileRoutes
from .push_rules import PushRuleRoutes
from .receipts import ReceiptRoutes
from .typing import TypingRoutes
from .user_directory import UserDirectoryRoutes


def register_conversation_routes(router: web.UrlDispatcher, conv: Conversation, auth: TokenAuth) -> None:
    AccountDataRoutes(conv.account_data, auth).register_routes(router)
    ReceiptRoutes(conv.receipts, auth).register_routes(router)
    TypingRoutes(conv.typing, auth).register_routes(router)
    PresenceRoutes(conv.presence, auth).register_routes(router)
    ProfileRoutes(conv.profiles, auth).register_routes(router)
    FilterRoutes(conv.filters, auth).register_routes(router)
    PushRuleRoutes(conv.push_rules, auth).register_routes(router)
    NotificationRoutes(conv.unread, auth).register_routes(router)
    CapabilitiesRoutes(auth).register_routes(router)
    UserDirectoryRoutes(conv.user_directory, auth, search_all_users=conv.search_all_users).register_routes(router)
