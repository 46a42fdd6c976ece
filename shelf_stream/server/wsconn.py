"""websockets' server connection, with each message stamped when it arrived, for rate limits.

A session may get to a message long after it arrived: a CPU-starved server, or a
burst read in one go (one read of 64 KiB holds thousands of small messages). A rate
limit counted when the session got there lets a flood through on a slow server, so
``StampedConnection`` (passed to ``serve(create_connection=...)``) stamps every
complete data message as websockets parses it, and ``recv_stamped`` hands the message
out with its stamp.

websockets stops reading the socket while it holds ``max_queue`` messages the session
has not taken; what the peer sends meanwhile waits in the kernel and is read only when
the session catches up. Such a message arrived at some moment between the pause and
the read: it is stamped with the pause (``ArrivalClock``), the earliest it can have
arrived, so a server that reads a flood late counts it no later than it came.

Only rate limits use these stamps. The arrival times the client gets (ProbeAck,
Feedback) are when the session handled each message, as before: messages read in one
go share one stamp, and the client's probe measures throughput from the spread of its
burst's arrivals; a server-side queue also shows there, as it should, as delay.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import DATA_OPCODES, Frame
from websockets.protocol import Event
from websockets.typing import Data


class ArrivalClock:
    """The earliest arrival of each read, given when reads and pauses happen. Sans-I/O.

    A read right after a pause may hold data that arrived any time since the pause;
    other reads hold what arrived just before them (reading was on). Stamps never go
    back in time.
    """

    def __init__(self) -> None:
        self._paused_at: float | None = None

    def on_pause(self, now: float) -> None:
        """Reading stopped (the session is behind)."""
        self._paused_at = now

    def on_read(self, now: float) -> float:
        earliest = self._paused_at if self._paused_at is not None else now
        self._paused_at = None
        return earliest


class StampedConnection(ServerConnection):
    """A ``ServerConnection`` whose messages carry when they arrived (monotonic s)."""

    clock = staticmethod(time.monotonic)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One stamp per complete message websockets holds for recv(): bounded by what
        # websockets buffers (max_queue, plus the messages of one read).
        self.arrivals: deque[float] = deque()
        self._arrival_clock = ArrivalClock()
        self._read_arrival = 0.0  # the read being parsed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        pause = self.recv_messages.pause

        def pause_reading() -> None:
            self._arrival_clock.on_pause(self.clock())
            pause()

        self.recv_messages.pause = pause_reading

    def data_received(self, data: bytes) -> None:
        self._read_arrival = self._arrival_clock.on_read(self.clock())
        super().data_received(data)

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and event.fin and event.opcode in DATA_OPCODES:
            self.arrivals.append(self._read_arrival)

    async def recv_stamped(self) -> tuple[Data, float]:
        """The next message and when its last frame arrived."""
        message = await self.recv()
        return message, self.arrivals.popleft()

    @property
    def writing_paused(self) -> bool:
        """The transport holds more than its high-water mark: the peer is not taking data."""
        return bool(self.paused)
