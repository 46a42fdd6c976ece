"""How soon ``shelf-stream send --save --results`` ends after each cause, as a user runs it.

    python benchmarks/client_exit.py [--runs 3] [--size 640x480]

Against a real ``shelf-stream serve``, each run of each cause:

- ``duration``: ``--duration 8``; from the end of those 8 s (counted from the first
  capture, ``capture_started_unix_s`` in the summary) to the process's exit;
- ``ctrl-c``: SIGINT after 5 s; from the signal to the exit;
- ``lost server``: the server is killed after 5 s and the client has
  ``--reconnect-limit 2``; from the kill to the exit, less those 2 s.

Prints each delay and the worst per cause. The target is under 2 s for each.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shelf_stream.bench.loopback import free_port, start_server

RECONNECT_LIMIT_S = 2.0


def _send(port: int, out: Path, size: str, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "shelf_stream", "--log-level", "WARNING", "send",
        "--url", f"ws://127.0.0.1:{port}", "--source", "scene", "--size", size,
        "--results", str(out / "r.jsonl"), "--save", str(out / "a.mp4"),
        "--json", str(out / "s.json"), "--no-status", *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def after_duration(port: int, out: Path, size: str) -> float:
    send = _send(port, out, size, "--duration", "8")
    send.wait(timeout=60)
    ended = time.time()
    started = json.loads((out / "s.json").read_text())["summary"]["capture_started_unix_s"]
    return ended - (started + 8.0)


def after_ctrl_c(port: int, out: Path, size: str) -> float:
    send = _send(port, out, size)
    time.sleep(5.0)
    signalled = time.monotonic()
    send.send_signal(signal.SIGINT)
    send.wait(timeout=60)
    return time.monotonic() - signalled


def after_lost_server(out: Path, size: str, model: str | None) -> float:
    port = free_port()
    server = start_server(port, model)
    try:
        send = _send(port, out, size, "--reconnect-limit", f"{RECONNECT_LIMIT_S:g}")
        time.sleep(5.0)
        server.kill()
        killed = time.monotonic()
        send.wait(timeout=60)
        return time.monotonic() - killed - RECONNECT_LIMIT_S
    finally:
        server.kill()
        server.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--model", help="ONNX model (default: the packaged one)")
    args = parser.parse_args()
    port = free_port()
    server = start_server(port, args.model)
    delays: dict[str, list[float]] = {"duration": [], "ctrl-c": [], "lost server": []}
    try:
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                delays["duration"].append(after_duration(port, Path(tmp), args.size))
            with tempfile.TemporaryDirectory() as tmp:
                delays["ctrl-c"].append(after_ctrl_c(port, Path(tmp), args.size))
            with tempfile.TemporaryDirectory() as tmp:
                delays["lost server"].append(after_lost_server(Path(tmp), args.size, args.model))
    finally:
        server.terminate()
        server.wait(timeout=15)
    print(f"shelf-stream send --save --results ({args.size}): seconds from the cause to the exit")
    for cause, values in delays.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {cause:<12} {shown}   worst {max(values):.2f}")


if __name__ == "__main__":
    main()
