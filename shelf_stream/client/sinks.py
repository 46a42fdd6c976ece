"""Where frame records go: a JSON-lines file and an annotated video."""

from __future__ import annotations

import json
import logging
import queue
import threading
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from shelf_stream.client.drawing import draw_detections
from shelf_stream.client.matcher import FrameRecord
from shelf_stream.codec.base import TIME_BASE

log = logging.getLogger("shelf_stream.client")


def record_to_json(record: FrameRecord) -> dict[str, Any]:
    """One line of ``--results``: pts, latency, drop flag and detections."""
    line: dict[str, Any] = {
        "pts": record.pts,
        "time_s": round(record.pts * float(TIME_BASE), 6),
        "latency_ms": round(record.latency_ms, 3) if record.latency_ms is not None else None,
        "dropped": record.dropped,
    }
    if record.dropped:
        line["reason"] = record.reason
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


class JsonlSink:
    """Writes one JSON line per frame; buffered, flushed on close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("w", encoding="utf-8", buffering=1 << 16)
        self.lines = 0

    def write(self, record: FrameRecord) -> None:
        self._file.write(json.dumps(record_to_json(record), separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        self._file.close()


class AnnotatedVideoSink:
    """Draws each answered frame's detections and encodes an H.264 MP4, in its own thread.

    Its queue holds ``max_queued`` frames; if encoding falls behind, newer frames are
    not written (the file is a record, not the live path) and the count is logged.
    """

    def __init__(self, path: Path, *, fps: float, max_queued: int = 64) -> None:
        self.path = path
        self.fps = fps
        self._queue: queue.Queue[tuple[FrameRecord, av.VideoFrame] | None] = queue.Queue(max_queued)
        self.frames_written = 0
        self.frames_not_written = 0
        self._thread = threading.Thread(target=self._run, name="annotate", daemon=True)
        self._thread.start()

    def write(self, record: FrameRecord, frame: av.VideoFrame) -> None:
        try:
            self._queue.put_nowait((record, frame))
        except queue.Full:
            self.frames_not_written += 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self.frames_not_written:
            log.warning(
                "%s: %d frames not written (encoder behind)", self.path, self.frames_not_written
            )

    def _run(self) -> None:
        container = av.open(str(self.path), "w")
        stream: Any = None
        try:
            while (item := self._queue.get()) is not None:
                record, frame = item
                if stream is None:
                    stream = container.add_stream(
                        "libx264", rate=Fraction(self.fps).limit_denominator(1001)
                    )
                    stream.width, stream.height = frame.width, frame.height
                    stream.pix_fmt = "yuv420p"
                    stream.time_base = TIME_BASE
                    stream.options = {"preset": "veryfast"}
                image: np.ndarray = frame.to_ndarray(format="rgb24")
                _draw(image, record)
                out = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                out = out.reformat(format="yuv420p")
                out.pts = record.pts
                out.time_base = TIME_BASE
                container.mux(stream.encode(out))
                self.frames_written += 1
            if stream is not None:
                container.mux(stream.encode(None))
        except Exception:
            log.exception("writing the annotated video %s failed", self.path)
        finally:
            container.close()


def _draw(image: np.ndarray, record: FrameRecord) -> None:
    dets = record.detections
    if not dets:
        return
    boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in dets], np.float32)
    scores = np.array([d.score for d in dets], np.float32)
    class_ids = np.array([d.class_id for d in dets], np.int32)
    # draw_detections takes a class-name table indexed by class id.
    names = {d.class_id: d.label or str(d.class_id) for d in dets}
    table = [names.get(class_id, str(class_id)) for class_id in range(max(names) + 1)]
    draw_detections(image, boxes, scores, class_ids, table)
