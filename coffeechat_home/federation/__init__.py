"""Outbound federation client (server discovery, signed requests, sender queues)."""
