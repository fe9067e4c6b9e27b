"""Registers the end-to-end encryption routes (one call for app.py)."""

from __future__ import annotations

from aiohttp import web

from ...services.accounts import AccountService
from ...services.e2e import E2E
from ..auth import TokenAuth
from .key_backup import KeyBackupRoutes
from .keys import KeyRoutes
from .to_device import ToDeviceRoutes


def register_e2e_routes(router: web.UrlDispatcher, e2e: E2E, accounts: AccountService, auth: TokenAuth) -> None:
    KeyRoutes(e2e.keys, e2e.cross_signing, accounts, auth).register_routes(router)
    ToDeviceRoutes(e2e.to_device, auth).register_routes(router)
    KeyBackupRoutes(e2e.backup, auth).register_routes(router)
