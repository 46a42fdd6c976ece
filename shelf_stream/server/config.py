"""Server settings: one documented dataclass, built by the CLI and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shelf_stream.protocol import ServerLimits
from shelf_stream.server.scheduler import SchedulerConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Settings of ``shelf-stream serve``.

    Queue sizes and their policy when full:
    - ``decode_queue_packets``: compressed access units per stream waiting for the
      decoder; when full the server stops reading that socket (TCP backpressure),
      it never drops compressed data.
    - ``outbox_messages``: answers per stream waiting to be written; when full the
      server stops reading that socket until the writer catches up (answers already
      owed are still queued: they are bounded by the frames in flight). A client whose
      receive window stays closed for ``stalled_reader_timeout_s`` is not reading its
      results and is disconnected.

    Admission: a connection that has not said its Hello is pending; at most
    ``max_pending_hellos`` are (``max_pending_hellos_per_address`` per client address),
    each for at most ``hello_timeout_s``; they never hold a stream slot (see
    ``server.admission``).
    """

    host: str = "0.0.0.0"
    port: int = 8765
    # TLS (wss://): both files PEM; None serves plain ws://.
    certfile: Path | None = None
    keyfile: Path | None = None
    # Browser clients: allowed Origin header values; None allows any. Clients that send
    # no Origin (everything but browsers) are always allowed.
    origins: tuple[str, ...] | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    token: str | None = None
    decoder: str = "auto"  # auto (NVDEC if available, else software), software, nvdec
    max_streams: int = 32
    max_streams_per_address: int = 8
    max_pending_hellos: int = 32
    max_pending_hellos_per_address: int = 4
    # Messages per second per connection, counted when they arrive (averaged; bursts of
    # twice that pass). A 120 fps stream with feedback and probes stays far below; a
    # flood is cut off.
    max_messages_per_s: float = 400.0
    decode_queue_packets: int = 32
    outbox_messages: int = 512
    hello_timeout_s: float = 2.0
    # Pictures larger than the Hello's size are dropped; after this many, an Error.
    max_size_mismatches: int = 5
    stalled_reader_timeout_s: float = 10.0
    # glibc malloc: at most this many arenas, and blocks from this size up in their own
    # mappings (None: glibc's defaults); see shelf_stream.allocator for the measurement.
    malloc_arenas: int | None = 2
    malloc_mmap_threshold_bytes: int | None = 64 * 1024
    drain_timeout_s: float = 5.0
    close_timeout_s: float = 1.0  # after an Error, for the peer's close frame
    keyframe_request_interval_ms: float = 300.0
    feedback_interval_ms: float = 100.0  # arrival reports for the client's rate control
    ping_interval_s: float | None = 20.0
