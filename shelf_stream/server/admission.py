"""Who gets in: connections waiting for their Hello, and stream slots. Sans-I/O.

A connection that has not said its Hello yet is *pending*. Pending connections count
against their own small limits (per client address and in total), never against the
stream slots, and each has a short Hello deadline (the session's business). A stream
slot is taken only once the Hello is valid, just before Ready.

When the pending table is full, a newcomer from an address with fewer pending
connections than the most crowded address evicts that address's oldest pending
connection: idle connections from a few addresses cannot lock out a client from
another one, however many they hold open. A newcomer from the most crowded address
itself (or when every address is as crowded) is refused.

A connection is refused at once, before its Hello, when no stream slot could be free
for it anyway (the server or its address is at the stream limit).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionLimits:
    max_streams: int
    max_streams_per_address: int
    max_pending: int
    max_pending_per_address: int


@dataclass(frozen=True, slots=True)
class Admitted:
    """Go on. ``evicted``: pending connections to close to make room for this one."""

    evicted: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Refused:
    """Refuse the connection (SERVER_BUSY) with this reason, for the client to read."""

    reason: str
    label: str  # for the refusal counter: busy, pending_full


Decision = Admitted | Refused


class Admission:
    """The pending and streaming connections of one server, by id and address."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._pending: dict[int, str] = {}  # connection → address, oldest first
        self._pending_per_address: Counter[str] = Counter()
        self._streams: dict[int, str] = {}
        self._streams_per_address: Counter[str] = Counter()
        self.evictions = 0

    # ------------------------------------------------------------------ queries

    def pending(self, address: str | None = None) -> int:
        if address is None:
            return len(self._pending)
        return self._pending_per_address[address]

    def streams(self, address: str | None = None) -> int:
        if address is None:
            return len(self._streams)
        return self._streams_per_address[address]

    def is_pending(self, connection: int) -> bool:
        return connection in self._pending

    # ------------------------------------------------------------------- inputs

    def on_connect(self, connection: int, address: str) -> Decision:
        """A connection was opened (WebSocket upgrade done); it has not said Hello."""
        refusal = self._stream_refusal(address)
        if refusal is not None:
            return refusal
        limits = self.limits
        if self._pending_per_address[address] >= limits.max_pending_per_address:
            return Refused(
                f"at most {limits.max_pending_per_address} connections per client address "
                "may be waiting for their hello",
                "pending_full",
            )
        evicted: tuple[int, ...] = ()
        if len(self._pending) >= limits.max_pending:
            victim = self._eviction_victim(address)
            if victim is None:
                return Refused(
                    f"{len(self._pending)} connections are waiting for their hello", "pending_full"
                )
            self._forget(victim)
            self.evictions += 1
            evicted = (victim,)
        self._pending[connection] = address
        self._pending_per_address[address] += 1
        return Admitted(evicted)

    def on_hello(self, connection: int) -> Decision:
        """The connection's Hello was valid: give it a stream slot, or refuse it."""
        address = self._pending.get(connection)
        if address is None:
            return Refused("the connection was closed to make room for others", "evicted")
        self._forget(connection)
        refusal = self._stream_refusal(address)
        if refusal is not None:
            return refusal
        self._streams[connection] = address
        self._streams_per_address[address] += 1
        return Admitted()

    def on_close(self, connection: int) -> None:
        """The connection ended, whatever its state (unknown ids are ignored)."""
        self._forget(connection)

    # ---------------------------------------------------------------- internals

    def _stream_refusal(self, address: str) -> Refused | None:
        limits = self.limits
        if len(self._streams) >= limits.max_streams:
            return Refused(f"server is at its limit of {limits.max_streams} streams", "busy")
        if self._streams_per_address[address] >= limits.max_streams_per_address:
            return Refused(
                f"at most {limits.max_streams_per_address} streams per client address", "busy"
            )
        return None

    def _eviction_victim(self, newcomer: str) -> int | None:
        """The oldest pending connection of the most crowded address, if that address
        has more pending connections than the newcomer's."""
        crowded, count = max(self._pending_per_address.items(), key=lambda item: item[1])
        if count <= self._pending_per_address[newcomer]:
            return None
        return next(conn for conn, address in self._pending.items() if address == crowded)

    def _forget(self, connection: int) -> None:
        for table, per_address in (
            (self._pending, self._pending_per_address),
            (self._streams, self._streams_per_address),
        ):
            address = table.pop(connection, None)
            if address is not None:
                per_address[address] -= 1
                if not per_address[address]:
                    del per_address[address]
