"""Per-connection limits, sans-I/O (time passed in)."""

from __future__ import annotations


class TokenBucket:
    """Allows ``rate_per_s`` events per second on average, bursts up to ``burst``."""

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._updated = now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
        self._updated = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True
