"""An RTSP camera streamed as it is (pass-through) against decoded and re-encoded
(``--reencode``): the client's CPU per frame and the end-to-end latency, side by side.

One run starts a real RTSP camera (GStreamer's RTSP server, ``tests/rtsp/camera.py``,
serving ``tests/data/rtsp/bottles.hevc.mkv``: 640x360, 15 fps, H.265, a keyframe a
second) and one ``shelf-stream serve``, then alternates the two modes ``--rounds`` times,
each a fresh client process streaming ``--frames`` frames with the client's defaults.
Each client measures its own CPU (user + system, all threads: ``getrusage``) around
``StreamClient.run()`` only, so Python's start-up and imports are not counted; the
latency is the client's summary (capture -> result on its clock: for a pass-through
from when the client read the access unit, for ``--reencode`` from when the decoded
frame was captured, after the client's decoding).

Usage, from the repository root (about a minute; needs tests/rtsp/camera.py's packages):

  .venv/bin/python benchmarks/rtsp_passthrough.py [--rounds 3] [--frames 75] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CAMERA = REPO / "tests" / "rtsp" / "camera.py"
CLIP = REPO / "tests" / "data" / "rtsp" / "bottles.hevc.mkv"
MODES = ("passthrough", "reencode")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_run(server_url: str, camera_url: str, frames: int, mode: str, out: Path) -> None:
    """In the client process: stream, and write the summary with the CPU it took."""
    from shelf_stream.client.app import ClientConfig, StreamClient
    from shelf_stream.client.rtsp import RtspConfig
    from shelf_stream.client.sources import SourceSpec

    logging.basicConfig(level=logging.WARNING)
    config = ClientConfig(
        url=server_url,
        source=SourceSpec(kind="rtsp", rtsp=RtspConfig(url=camera_url)),
        max_frames=frames,
        reencode=mode == "reencode",
        status=False,
    )
    client = StreamClient(config)
    cpu, wall = _cpu_s(), time.monotonic()
    summary = asyncio.run(client.run())
    cpu, wall = _cpu_s() - cpu, time.monotonic() - wall
    out.write_text(json.dumps({"mode": mode, "cpu_s": cpu, "wall_s": wall, "summary": summary}))


def _start_camera(python: str, port: int) -> subprocess.Popen[str]:
    camera = subprocess.Popen(
        [python, str(CAMERA), "--port", str(port), "--clip", str(CLIP)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert camera.stdout is not None
    if not camera.stdout.readline().startswith("ready"):
        camera.kill()
        sys.exit(f"the RTSP camera did not start; install: {_install_hint(python)}")
    return camera


def _install_hint(python: str) -> str:
    check = subprocess.run([python, str(CAMERA), "--check"], capture_output=True, text=True)
    return check.stderr.strip() or "see tests/rtsp/camera.py"


def _round(server_port: int, camera_port: int, frames: int, mode: str, folder: Path) -> dict:
    out = folder / f"{mode}-{time.monotonic_ns()}.json"
    subprocess.run(
        [sys.executable, __file__, "--client", f"ws://127.0.0.1:{server_port}",
         f"rtsp://127.0.0.1:{camera_port}/cam", str(frames), mode, str(out)],
        check=True, timeout=120,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _row(mode: str, runs: list[dict]) -> dict[str, Any]:
    per_frame = [1000 * r["cpu_s"] / r["summary"]["frames"] for r in runs]
    summaries = [r["summary"] for r in runs]
    return {
        "mode": mode,
        "rounds": len(runs),
        "frames": sum(s["frames"] for s in summaries),
        "results": sum(s["results"] for s in summaries),
        "cpu_ms_per_frame": [round(x, 2) for x in per_frame],
        "cpu_ms_per_frame_median": round(statistics.median(per_frame), 2),
        "encode_ms_mean": round(statistics.mean(s["encode_ms_mean"] for s in summaries), 2),
        "latency_p50_ms": [s["latency_ms"]["p50"] for s in summaries],
        "latency_p95_ms": [s["latency_ms"]["p95"] for s in summaries],
        "kbit_per_s": [s["kbit_per_s"] for s in summaries],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=75)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--gst-python", default="/usr/bin/python3")
    args = parser.parse_args()

    from shelf_stream.bench.loopback import free_port, start_server

    camera_port, server_port = free_port(), free_port()
    camera = _start_camera(args.gst_python, camera_port)
    server = start_server(server_port, os.environ.get("SHELF_STREAM_MODEL"))
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for index in range(args.rounds):
                for mode in MODES:  # alternated: both see the same load on the machine
                    print(f"round {index + 1}/{args.rounds}: {mode}", file=sys.stderr)
                    runs[mode].append(
                        _round(server_port, camera_port, args.frames, mode, Path(folder))
                    )
    finally:
        server.terminate()
        camera.terminate()
        server.wait(timeout=15)
        camera.wait(timeout=15)
    rows = [_row(mode, runs[mode]) for mode in MODES]
    for row in rows:
        print(
            f"{row['mode']:<12} {row['frames']:4d} frames {row['results']:4d} results  "
            f"CPU {row['cpu_ms_per_frame_median']:6.2f} ms/frame (median; "
            f"{row['cpu_ms_per_frame']})  encode {row['encode_ms_mean']:5.1f} ms  "
            f"latency p50 {row['latency_p50_ms']} p95 {row['latency_p95_ms']} ms  "
            f"{row['kbit_per_s']} kbit/s"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--client":
        client_run(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], Path(sys.argv[6]))
    else:
        main()
