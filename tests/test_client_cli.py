"""``shelf-stream send`` as a user runs it: how it ends (its duration, Ctrl-C, a lost
server) and what it does with a file whose container lies about its rate."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest

from shelf_stream.bench.loopback import free_port, start_server

#: Generous: these tests run beside the rest of the suite on two cores. The figures the
#: client reaches alone are in the soak bench's report ("exit: ... after its duration").
EXIT_BOUND_S = 6.0


def _send(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shelf_stream", "send", "--url", f"ws://127.0.0.1:{port}",
            "--no-status", *extra]  # fmt: skip


def _results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(90)
def test_ctrl_c_ends_the_client_with_every_pts_recorded(serve_port: int, tmp_path: Path) -> None:
    results, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    send = subprocess.Popen(
        _send(serve_port, "--source", "scene", "--size", "320x240", "--results", str(results),
              "--save", str(tmp_path / "a.mp4"), "--json", str(summary)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(4.0)
    assert send.poll() is None, send.communicate()
    interrupted = time.monotonic()
    send.send_signal(signal.SIGINT)
    _, stderr = send.communicate(timeout=30)
    took = time.monotonic() - interrupted
    assert send.returncode == 0, stderr
    assert took < EXIT_BOUND_S, f"took {took:.1f} s after Ctrl-C"
    lines = _results(results)
    captured = json.loads(summary.read_text())["summary"]["frames"]
    assert len(lines) == len({line["pts"] for line in lines}) == captured
    with av.open(str(tmp_path / "a.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0


@pytest.mark.timeout(120)
def test_a_lost_server_ends_the_client_after_the_reconnect_limit(
    model_path: Path, tmp_path: Path
) -> None:
    port = free_port()
    serve = start_server(port, str(model_path))
    try:
        results = tmp_path / "r.jsonl"
        send = subprocess.Popen(
            _send(port, "--source", "scene", "--size", "320x240", "--results", str(results),
                  "--reconnect-limit", "2"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(4.0)
        serve.kill()  # gone without a goodbye
        lost = time.monotonic()
        _, stderr = send.communicate(timeout=60)
        took = time.monotonic() - lost
    finally:
        serve.kill()
        serve.wait(timeout=15)
    assert "giving up" in stderr
    assert 2.0 <= took < 2.0 + EXIT_BOUND_S, f"took {took:.1f} s after the server died"
    lines = _results(results)
    assert len(lines) == len({line["pts"] for line in lines})
    assert any(not line["dropped"] for line in lines)
    assert any(line.get("reason") == "connection_closed" for line in lines) or any(
        line.get("reason") == "unsent" for line in lines
    )


def _write_clip_without_timestamps(path: Path) -> None:
    """Frames muxed 0.4 ms apart: the container claims about 839 fps (the server refuses
    anything above 120)."""
    with (
        av.open("testsrc2=size=320x240:rate=25:duration=2", format="lavfi") as src,
        av.open(str(path), "w") as out,
    ):
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 10_000)
        for index, frame in enumerate(src.decode(video=0)):
            frame.pts, frame.time_base = index * 4, Fraction(1, 10_000)
            frame.pict_type = av.video.frame.PictureType.NONE
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.mark.timeout(90)
def test_a_file_with_a_bogus_rate_is_streamed_at_its_fallback_pace(
    serve_port: int, tmp_path: Path
) -> None:
    clip, results = tmp_path / "no-timestamps.mp4", tmp_path / "r.jsonl"
    _write_clip_without_timestamps(clip)
    started = time.monotonic()
    send = subprocess.run(
        _send(serve_port, "--input", str(clip), "--fps", "25", "--results", str(results)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    took = time.monotonic() - started
    assert send.returncode == 0, send.stderr
    assert send.stderr.count("not plausible") == 1, send.stderr
    assert "25 fps" in send.stderr
    lines = _results(results)
    assert len(lines) == 50 and sum(not line["dropped"] for line in lines) >= 40
    # Paced at 25 fps from --fps (the file's own 0.4 ms steps are ignored): 2 s of video.
    assert sorted(line["pts"] for line in lines) == [i * 3600 for i in range(50)]
    assert took >= 2.0
