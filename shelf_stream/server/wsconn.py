"""websockets' server connection, with each message stamped when it is read off the socket.

A session may get to a message long after it arrived: a CPU-starved server, or a
burst read in one go (one read of 64 KiB holds thousands of small messages). Rate
limits and the client's arrival feedback need the arrival, not the moment the session
got there, so ``StampedConnection`` (passed to ``serve(create_connection=...)``) stamps
every complete data message as websockets parses it, and ``recv_stamped`` hands the
message out with its stamp. It also says whether the peer's receive window is closed
(``writing_paused``: the transport's buffer is above its high-water mark).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import DATA_OPCODES, Frame
from websockets.protocol import Event
from websockets.typing import Data


class StampedConnection(ServerConnection):
    """A ``ServerConnection`` whose messages carry their arrival time (monotonic s)."""

    clock = staticmethod(time.monotonic)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One stamp per complete message websockets holds for recv(): bounded by what
        # websockets buffers (max_queue, plus the messages of one read).
        self.arrivals: deque[float] = deque()

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and event.fin and event.opcode in DATA_OPCODES:
            self.arrivals.append(self.clock())

    async def recv_stamped(self) -> tuple[Data, float]:
        """The next message and when its last frame arrived."""
        message = await self.recv()
        return message, self.arrivals.popleft()

    @property
    def writing_paused(self) -> bool:
        """The transport holds more than its high-water mark: the peer is not taking data."""
        return bool(self.paused)
