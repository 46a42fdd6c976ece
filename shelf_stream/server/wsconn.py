"""websockets' server connection, with each message stamped when it came off the socket.

A session may get to a message long after it arrived: a CPU-starved server, or a
burst read in one go (one read of 64 KiB holds thousands of small messages). Rate
limits and the client's arrival feedback need the arrival, not the moment the session
got there, so ``StampedConnection`` (passed to ``serve(create_connection=...)``) stamps
every complete data message as websockets parses it, and ``recv_stamped`` hands the
message out with its ``Arrival``.

websockets stops reading the socket while it holds ``max_queue`` messages the session
has not taken; what the peer sends meanwhile waits in the kernel and is read only when
the session catches up. Such a message arrived at some moment between the pause and
the read, so it carries two times (``ArrivalClock``): ``read_at``, when it was read
(what the client's delay-based rate control must see: the queueing is real), and
``earliest_at``, when reading was paused before it (what rate limits count: a slow
server must not let a flood through because it read the flood late).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import DATA_OPCODES, Frame
from websockets.protocol import Event
from websockets.typing import Data


@dataclass(frozen=True, slots=True)
class Arrival:
    read_at: float  # read off the socket (monotonic s)
    earliest_at: float  # it may have been waiting in the kernel since then


class ArrivalClock:
    """The arrival of each read, given when reads and pauses happen. Sans-I/O.

    A read right after a pause may hold data that arrived any time since the pause;
    other reads hold what arrived just before them (reading was on). Stamps never go
    back in time.
    """

    def __init__(self) -> None:
        self._paused_at: float | None = None

    def on_pause(self, now: float) -> None:
        """Reading stopped (the session is behind)."""
        self._paused_at = now

    def on_read(self, now: float) -> Arrival:
        earliest = self._paused_at if self._paused_at is not None else now
        self._paused_at = None
        return Arrival(now, earliest)


class StampedConnection(ServerConnection):
    """A ``ServerConnection`` whose messages carry their ``Arrival``."""

    clock = staticmethod(time.monotonic)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One stamp per complete message websockets holds for recv(): bounded by what
        # websockets buffers (max_queue, plus the messages of one read).
        self.arrivals: deque[Arrival] = deque()
        self._arrival_clock = ArrivalClock()
        self._read = Arrival(0.0, 0.0)  # the read being parsed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        pause = self.recv_messages.pause

        def pause_reading() -> None:
            self._arrival_clock.on_pause(self.clock())
            pause()

        self.recv_messages.pause = pause_reading

    def data_received(self, data: bytes) -> None:
        self._read = self._arrival_clock.on_read(self.clock())
        super().data_received(data)

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and event.fin and event.opcode in DATA_OPCODES:
            self.arrivals.append(self._read)

    async def recv_stamped(self) -> tuple[Data, Arrival]:
        """The next message and when its last frame arrived."""
        message = await self.recv()
        return message, self.arrivals.popleft()

    @property
    def writing_paused(self) -> bool:
        """The transport holds more than its high-water mark: the peer is not taking data."""
        return bool(self.paused)
