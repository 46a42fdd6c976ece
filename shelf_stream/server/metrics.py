"""Prometheus metrics and the HTTP endpoints served beside the WebSocket.

``/healthz`` and ``/metrics`` answer plain HTTP GETs on the server's port (websockets'
``process_request`` hook), so one port serves streams, health checks and scrapes.
Each ``Server`` has its own registry: several servers in one process (tests, the demo)
never share counters.
"""

from __future__ import annotations

import http
import json
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

# Latency buckets in seconds: 1 ms to 2 s, dense where a healthy stream lives.
_STAGE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2)
STAGES = ("decode", "queue", "inference", "send", "total")


class ServerMetrics:
    """Counters, gauges and per-stage latency histograms of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_in = Counter("shelf_frames_received", "Video messages received", registry=r)
        self.bytes_in = Counter("shelf_bytes_received", "Access unit bytes received", registry=r)
        self.frames_processed = Counter(
            "shelf_frames_processed", "Frames answered with a Result", registry=r
        )
        self.frames_dropped = Counter(
            "shelf_frames_dropped", "Frames answered with Dropped", ["reason"], registry=r
        )
        self.decoder_errors = Counter(
            "shelf_decoder_errors", "Access units that failed to decode", registry=r
        )
        self.keyframe_requests = Counter(
            "shelf_keyframe_requests", "Keyframe requests sent", registry=r
        )
        self.connections_refused = Counter(
            "shelf_connections_refused",
            "Connections refused or closed for cause",
            ["reason"],
            registry=r,
        )
        self.active_streams = Gauge("shelf_active_streams", "Streams being served", registry=r)
        self.stage_seconds = Histogram(
            "shelf_stage_seconds",
            "Per-frame time in each server stage: decode (received to decoded), queue "
            "(decoded to inference start), inference, send (result ready to written), "
            "total (received to written)",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )

    def observe_stages(self, **seconds: float) -> None:
        for stage, value in seconds.items():
            self.stage_seconds.labels(stage).observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def http_endpoints(
    metrics: ServerMetrics, health: Callable[[], dict[str, object]]
) -> Callable[[ServerConnection, Request], Response | None]:
    """websockets ``process_request`` hook: answer /healthz and /metrics, else go on."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            body = json.dumps({"status": "ok", **health()}).encode()
            return _response(http.HTTPStatus.OK, body, "application/json")
        if path == "/metrics":
            return _response(http.HTTPStatus.OK, metrics.render(), CONTENT_TYPE_LATEST)
        return None

    return process_request


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)
