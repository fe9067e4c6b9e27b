"""Which requests a person sees in the log at the default level (INFO)."""

from __future__ import annotations

import logging

import pytest

from coffeechat_home.api.middleware import request_log_level


@pytest.mark.parametrize(
    ("method", "status", "ms", "poll_ms", "level"),
    [
        ("GET", 200, 5, 0, logging.DEBUG),  # a successful read
        ("GET", 200, 30_010, 30_000, logging.DEBUG),  # a long-poll that waited its timeout
        ("GET", 200, 32_000, 30_000, logging.WARNING),  # ... and then took 2 s more
        ("PUT", 200, 5, 0, logging.INFO),  # a write
        ("GET", 404, 1, 0, logging.INFO),  # client errors always show
        ("POST", 500, 1, 0, logging.WARNING),
        ("GET", 200, 1500, 0, logging.WARNING),  # slow
        ("OPTIONS", 204, 1, 0, logging.DEBUG),
    ],
)
def test_request_log_level(method: str, status: int, ms: float, poll_ms: int, level: int) -> None:
    assert request_log_level(method, status, ms, poll_ms, 1000) == level
