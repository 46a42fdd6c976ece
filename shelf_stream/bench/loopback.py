"""``shelf-bench loopback``: a real server process and a client on loopback.

The server runs as its own ``shelf-stream serve`` process (as a user would run it),
the client streams generated footage to it; the result is the client's summary plus
the server's resident memory sampled during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shelf_stream.errors import ShelfStreamError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ShelfStreamError(f"the server exited with code {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ShelfStreamError(f"the server did not listen on port {port} within {timeout_s:g} s")


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux /proc), None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(
    port: int, model: str | None, extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "shelf_stream", "--log-level", "WARNING", "serve",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    if model:
        command += ["--model", model]
    process = subprocess.Popen(command + (extra or []), env=os.environ.copy())
    wait_for_port(port, process)
    return process


@contextlib.contextmanager
def running_server(
    model: str | None, extra: list[str] | None = None, *, stop_timeout_s: float = 15.0
) -> Iterator[int]:
    """``start_server`` on a free port for the ``with`` block (its port), stopped after."""
    port = free_port()
    server = start_server(port, model, extra)
    try:
        yield port
    finally:
        server.terminate()
        server.wait(timeout=stop_timeout_s)


async def _sample_rss(pid: int, samples: list[float], period_s: float = 0.5) -> None:
    while True:
        value = rss_mb(pid)
        if value is not None:
            samples.append(value)
        await asyncio.sleep(period_s)


def run_loopback(args: argparse.Namespace) -> dict[str, Any]:
    from shelf_stream.client.app import ClientConfig, StreamClient
    from shelf_stream.client.sources import SourceSpec

    width, height = args.size or (640, 480)
    fps = args.fps or 30.0
    port = free_port()
    server = start_server(port, args.model)
    try:
        config = ClientConfig(
            url=f"ws://127.0.0.1:{port}",
            source=SourceSpec(kind=args.source, width=width, height=height, fps=fps),
            codec=args.codec,
            encoder=args.encoder,
            width=width,
            height=height,
            fps=fps,
            bitrate_kbps=args.bitrate,
            preset=args.preset,
            duration_s=args.duration,
            max_frames=args.frames,
            results_path=args.results,
            status=False,
        )
        samples: list[float] = []

        async def run() -> dict[str, Any]:
            sampler = asyncio.create_task(_sample_rss(server.pid, samples))
            try:
                return await StreamClient(config).run()
            finally:
                sampler.cancel()

        summary = asyncio.run(run())
    finally:
        server.terminate()
        server.wait(timeout=10)
    summary["offered_fps"] = fps
    summary["size"] = f"{width}x{height}"
    summary["server_rss_mb"] = {
        "first": round(samples[0], 1) if samples else None,
        "max": round(max(samples), 1) if samples else None,
        "last": round(samples[-1], 1) if samples else None,
    }
    return summary
