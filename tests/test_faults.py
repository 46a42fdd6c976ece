"""Faults: a server restart mid-stream, a client that vanishes, a clean shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from shelf_stream import protocol as p
from shelf_stream.bench.loopback import free_port
from shelf_stream.client.app import ClientConfig, StreamClient
from shelf_stream.client.connection import ConnectionConfig, ReconnectPolicy
from shelf_stream.client.matcher import ClientReason, FrameRecord, Outcome
from shelf_stream.client.sources import SourceSpec
from shelf_stream.engine import EngineConfig, create_detector
from shelf_stream.engine.base import Detector
from shelf_stream.server import Server, ServerConfig


@pytest.fixture(scope="module")
def detector(model_path: Path) -> Iterator[Detector]:
    det = create_detector(EngineConfig(model_path=model_path))
    yield det
    det.close()


def _client_config(port: int, frames: int) -> ClientConfig:
    return ClientConfig(
        url=f"ws://127.0.0.1:{port}",
        source=SourceSpec(kind="scene", width=320, height=240, fps=15.0),
        bitrate_kbps=500,
        max_frames=frames,
        status=False,
        connection=ConnectionConfig(reconnect=ReconnectPolicy(initial_delay_s=0.2)),
    )


async def _wait_until(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_client_resumes_by_itself_after_a_server_restart(detector: Detector) -> None:
    port = free_port()
    records: list[FrameRecord] = []

    async def run() -> dict:
        config = ServerConfig(host="127.0.0.1", port=port)
        first = Server(config, detector)
        await first.start()
        client = StreamClient(_client_config(port, 90), on_record=records.append)
        streaming = asyncio.create_task(client.run())
        await _wait_until(lambda: len([r for r in records if r.status is Outcome.RESULT]) >= 10)
        await first.stop()  # answers in-flight frames, closes with 1001
        await asyncio.sleep(0.3)
        async with Server(config, detector):
            return await asyncio.wait_for(streaming, 30)

    summary = asyncio.run(run())
    assert summary["reconnects"] >= 1
    pts = [r.pts for r in records]
    assert len(pts) == len(set(pts)) == 90, "pts continuity: every captured frame once"
    first_result = min(r.pts for r in records if r.status is Outcome.RESULT)
    last_result = max(r.pts for r in records if r.status is Outcome.RESULT)
    restart_gap = [
        r for r in records if r.reason in (ClientReason.CONNECTION_CLOSED, ClientReason.UNSENT)
    ]
    assert all(first_result < r.pts for r in restart_gap)
    results_after = [r for r in records if r.status is Outcome.RESULT and r.pts > max(
        (g.pts for g in restart_gap), default=first_result)]  # fmt: skip
    assert results_after, "detections come back after the reconnect"
    assert last_result > first_result


def test_clean_shutdown_answers_every_frame_in_flight(detector: Detector) -> None:
    records: list[FrameRecord] = []

    async def run() -> None:
        server = Server(ServerConfig(host="127.0.0.1", port=0), detector)
        await server.start()
        config = _client_config(server.port, 1000)
        client = StreamClient(
            replace(config, connection=ConnectionConfig(reconnect=None)), on_record=records.append
        )
        streaming = asyncio.create_task(client.run())
        await _wait_until(lambda: len(records) >= 15)
        await server.stop()
        await asyncio.wait_for(streaming, 30)

    asyncio.run(run())
    lost = [r for r in records if r.status is Outcome.LOST]
    assert not lost, f"{len(lost)} frames in flight were not answered at shutdown"
    assert any(r.status is Outcome.RESULT for r in records)


def test_vanished_client_frees_its_session_and_decoder_thread(detector: Detector) -> None:
    from websockets.asyncio.client import connect

    from tests.server.test_session import encoded_clip

    units = encoded_clip(10)

    async def run() -> Server:
        async with Server(ServerConfig(host="127.0.0.1", port=0), detector) as server:
            ws = await connect(f"ws://127.0.0.1:{server.port}", compression=None, proxy=None)
            proto = p.ClientConnection()
            await ws.send(proto.send(p.Hello("hevc", 320, 240, 30.0)))
            proto.receive_message(await ws.recv())
            for seq, (pts, key, data) in enumerate(units):
                await ws.send(proto.send(p.Video(seq, pts, 0, key, data)))
            await _wait_until(
                lambda: any(t.name.startswith("decode-") for t in threading.enumerate())
            )
            ws.transport.abort()  # the client vanishes: no close frame, no Bye
            await _wait_until(lambda: not server.sessions)
            return server

    asyncio.run(run())
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith("decode-")]
    assert not leftovers, leftovers
