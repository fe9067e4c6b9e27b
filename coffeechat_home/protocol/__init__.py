"""Pure Matrix protocol rules: no I/O, no asyncio, no database.

Modules here import nothing of coffeechat_home outside ``protocol``.
"""
