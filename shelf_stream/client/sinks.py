"""Where frame records go: a JSON-lines file and an annotated video, each in its own thread.

Each sink owns its file and its thread; the event loop only puts into the sink's bounded
queue and never waits on disk or on an encoder. The rules (docs/design.md, "Sinks"):

- ``write`` never blocks. A full queue loses that item, counted and logged once at close:
  the results file loses a line only when the disk stalls for ``max_queued`` frames; the
  video, a record and not the live path, skips frames while its encoder is behind.
- A failure (disk full, an encoder error) is logged once; the sink then discards what it
  is given, and the stream goes on.
- ``close(timeout_s)`` always returns within about ``timeout_s``: what is still queued by
  then is dropped (and counted), and the file is finished (the MP4 gets its index) with
  what was written.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import av
import numpy as np

from shelf_stream.client.drawing import draw_detections
from shelf_stream.client.matcher import FrameRecord, Outcome, reason_name
from shelf_stream.codec.base import TIME_BASE

log = logging.getLogger("shelf_stream.client")

T = TypeVar("T")

#: The end marker in a sink's queue.
_END = object()


def record_to_json(record: FrameRecord) -> dict[str, Any]:
    """One line of ``--results``: pts, latency, drop flag and detections."""
    line: dict[str, Any] = {
        "pts": record.pts,
        "time_s": round(record.pts * float(TIME_BASE), 6),
        "latency_ms": round(record.latency_ms, 3) if record.latency_ms is not None else None,
        "dropped": record.dropped,
    }
    if record.dropped:
        line["status"] = record.status.value
        line["reason"] = reason_name(record.reason) if record.reason is not None else None
    else:
        line["server_ms"] = {
            "decode": record.decode_ms,
            "queue": record.queue_ms,
            "inference": record.infer_ms,
            "total": record.server_ms,
        }
    line["detections"] = [
        {
            "class_id": d.class_id,
            "label": d.label,
            "score": round(d.score, 4),
            "box": [round(d.x1, 1), round(d.y1, 1), round(d.x2, 1), round(d.y2, 1)],
        }
        for d in record.detections
    ]
    return line


class _ThreadSink(ABC, Generic[T]):
    """A bounded queue drained by one thread that alone owns the sink's file."""

    def __init__(self, path: Path, *, max_queued: int, name: str) -> None:
        self.path = path
        self.items_dropped = 0  # queue full, or left when close timed out
        self.failed = False
        self._queue: queue.Queue[Any] = queue.Queue(max_queued)
        self._give_up = threading.Event()  # close timed out: discard the rest
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def _put(self, item: T) -> None:
        if self._closed:
            raise RuntimeError(f"{self.path}: sink is closed")
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.items_dropped += 1

    def close(self, timeout_s: float = 1.0) -> None:
        """Finish the file with what was written; returns within about ``timeout_s``."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        while True:  # the thread always drains, so room comes
            try:
                self._queue.put(_END, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    self._give_up.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._give_up.set()
            self._thread.join(timeout_s)  # finishing the file is short: no more encoding
        self._report()

    def _run(self) -> None:
        try:
            self._open()
        except Exception as exc:
            self._fail(exc)
        while (item := self._queue.get()) is not _END:
            if self.failed or self._give_up.is_set():
                self.items_dropped += 1
                continue
            try:
                self._handle(item)
            except Exception as exc:
                self._fail(exc)
        try:
            self._finish()
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if not self.failed:
            self.failed = True
            log.error("%s: writing failed, the stream goes on without it: %s", self.path, exc)

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _handle(self, item: T) -> None: ...

    @abstractmethod
    def _finish(self) -> None: ...

    @abstractmethod
    def _report(self) -> None: ...


class JsonlSink(_ThreadSink[FrameRecord]):
    """Writes one JSON line per frame (``--results``)."""

    def __init__(self, path: Path, *, max_queued: int = 16384) -> None:
        self._file: IO[str] | None = None
        self.lines = 0
        super().__init__(path, max_queued=max_queued, name="results-writer")

    def write(self, record: FrameRecord) -> None:
        self._put(record)

    def _open(self) -> None:
        self._file = self.path.open("w", encoding="utf-8", buffering=1 << 16)

    def _handle(self, item: FrameRecord) -> None:
        assert self._file is not None
        self._file.write(json.dumps(record_to_json(item), separators=(",", ":")) + "\n")
        self.lines += 1

    def _finish(self) -> None:
        if self._file is not None:
            self._file.close()

    def _report(self) -> None:
        if self.items_dropped:
            log.warning(
                "%s: %d result lines not written (the disk did not keep up or failed)",
                self.path, self.items_dropped,
            )  # fmt: skip


class AnnotatedVideoSink(_ThreadSink[tuple[FrameRecord, av.VideoFrame]]):
    """Draws each answered frame's detections and encodes an H.264 MP4 (``--save``).

    One video frame per Result, at its pts (the file has the stream's timing, gaps
    included), scaled to ``width`` x ``height``, the frame size the boxes are in.
    """

    def __init__(
        self, path: Path, *, width: int, height: int, fps: float, max_queued: int = 32
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.frames_written = 0
        self.frames_out_of_order = 0
        self._container: Any = None
        self._stream: Any = None
        self._last_pts: int | None = None
        super().__init__(path, max_queued=max_queued, name="annotate")

    def write(self, record: FrameRecord, frame: av.VideoFrame) -> None:
        if record.status is Outcome.RESULT:
            self._put((record, frame))

    def _open(self) -> None:
        self._container = av.open(str(self.path), "w")
        stream = self._container.add_stream(
            "libx264", rate=Fraction(self.fps).limit_denominator(1001)
        )
        stream.width, stream.height = self.width, self.height
        stream.pix_fmt = "yuv420p"
        # The stream's own clock: no rounding of the pts to 1/fps, which turned frames
        # captured at an uneven pace into equal timestamps (and a refused mux).
        stream.codec_context.time_base = TIME_BASE
        stream.time_base = TIME_BASE
        # No B-frames and no lookahead: packets come out in order, one per frame.
        stream.options = {"preset": "veryfast", "tune": "zerolatency"}
        self._stream = stream

    def _handle(self, item: tuple[FrameRecord, av.VideoFrame]) -> None:
        record, frame = item
        if self._last_pts is not None and record.pts <= self._last_pts:
            self.frames_out_of_order += 1  # an MP4's timestamps must increase
            return
        image: np.ndarray = frame.to_ndarray(
            width=self.width, height=self.height, format="rgb24", interpolation="BILINEAR"
        )
        _draw(image, record)
        out = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        out.pts = record.pts
        out.time_base = TIME_BASE
        self._container.mux(self._stream.encode(out))
        self._last_pts = record.pts
        self.frames_written += 1

    def _finish(self) -> None:
        if self._container is None:
            return
        try:
            if self._stream is not None and not self.failed:
                self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def _report(self) -> None:
        if self.items_dropped:
            log.warning(
                "%s: %d answered frames not written (the video encoder was behind)",
                self.path, self.items_dropped,
            )  # fmt: skip


def _draw(image: np.ndarray, record: FrameRecord) -> None:
    dets = record.detections
    if not dets:
        return
    boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in dets], np.float32)
    scores = np.array([d.score for d in dets], np.float32)
    class_ids = np.array([d.class_id for d in dets], np.int32)
    names = {d.class_id: d.label or str(d.class_id) for d in dets}
    draw_detections(image, boxes, scores, class_ids, names)
