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


class LogThrottle:
    """Lets a message key through once per ``interval_s``, counting what it held back.

    For warnings about connections that never became streams (refusals, evictions):
    a crowd of them must not flood the log, but the operator must still hear of it.
    At most ``max_keys`` keys are remembered (the oldest is forgotten first).
    """

    def __init__(self, interval_s: float, *, max_keys: int = 1024) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._said: dict[object, tuple[float, int]] = {}  # key → (last said, held back since)

    def allow(self, key: object, now: float) -> int | None:
        """None: hold this one back. Otherwise say it, with this many held back since."""
        entry = self._said.get(key)
        if entry is not None and now - entry[0] < self.interval_s:
            self._said[key] = (entry[0], entry[1] + 1)
            return None
        self._said.pop(key, None)
        if len(self._said) >= self.max_keys:
            del self._said[next(iter(self._said))]
        self._said[key] = (now, 0)
        return entry[1] if entry is not None else 0
