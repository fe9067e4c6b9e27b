"""Token-bucket rate limiting, per process (a cache that is safe to lose)."""

from __future__ import annotations

import math
import time

from ..errors import limit_exceeded


class RateLimiter:
    def __init__(self, per_second: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate = per_second
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: str, now: float | None = None) -> None:
        """Take one token for ``key`` or raise M_LIMIT_EXCEEDED."""
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            wait_ms = math.ceil((1.0 - tokens) / self.rate * 1000)
            self._buckets[key] = (tokens, now)
            raise limit_exceeded(wait_ms)
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now)
