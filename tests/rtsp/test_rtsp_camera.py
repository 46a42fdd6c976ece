"""``send --input rtsp://...`` against a real RTSP camera (GStreamer's RTSP server) and a
real ``shelf-stream serve``: pass-through, re-encoding, a camera restart, a camera that
comes back at another size, and credentials that never reach a log."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from shelf_stream.client.app import ClientConfig, StreamClient
from shelf_stream.client.matcher import FrameRecord, Outcome
from shelf_stream.client.rtsp import CameraSession, RtspConfig
from shelf_stream.client.sources import SourceSpec
from shelf_stream.engine import EngineConfig, create_detector
from shelf_stream.protocol import ServerLimits
from shelf_stream.server import Server, ServerConfig
from tests.rtsp.conftest import CLIPS, PASSWORD, USER, Camera

#: The clips' frame interval on the 90 kHz clock (15 fps).
FRAME_TICKS = 6000
BOTTLE = 39  # COCO class id


def _send(port: int, camera_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shelf_stream", "--log-level", "DEBUG", "send",
            "--url", f"ws://127.0.0.1:{port}", "--input", camera_url, "--no-status",
            *extra]  # fmt: skip


def _run(command: list[str], timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _summary(path: Path) -> dict:
    summary: dict = json.loads(path.read_text())["summary"]
    return summary


def _assert_no_credentials(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text, "the camera's password reached the output"
        assert f"{USER}:" not in text and f"{USER}@" not in text, "the camera's user leaked"


class _Send:
    """``shelf-stream send`` in the background, its output in files (a DEBUG log would
    fill a pipe nobody reads yet, and block the client)."""

    def __init__(self, command: list[str], folder: Path) -> None:
        self._out, self._err = folder / "send.out", folder / "send.err"
        with self._out.open("w") as out, self._err.open("w") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, text=True)

    def __enter__(self) -> _Send:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def wait_streaming(self, then_s: float = 2.0, timeout_s: float = 60) -> None:
        """Until the client streams, then ``then_s`` more (the camera keeps its own pace:
        about 30 of its frames; the results file is written in blocks, no use here)."""
        deadline = time.monotonic() + timeout_s
        while "as the camera sends it" not in self._err.read_text():
            assert self.process.poll() is None, self._err.read_text()[-3000:]
            assert time.monotonic() < deadline, f"not streaming after {timeout_s} s"
            time.sleep(0.05)
        time.sleep(then_s)

    def finish(self, timeout_s: float = 90) -> tuple[int, str, str]:
        returncode = self.process.wait(timeout=timeout_s)
        return returncode, self._out.read_text(), self._err.read_text()


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def truth(model_path: Path) -> dict[int, list[list[float]]]:
    """Bottle boxes the detector finds in each frame of the clip, decoded from the file."""
    detector = create_detector(EngineConfig(model_path=model_path))
    boxes: dict[int, list[list[float]]] = {}
    try:
        with av.open(str(CLIPS / "bottles.hevc.mkv")) as clip:
            for index, frame in enumerate(clip.decode(video=0)):
                if index % 3 == 0:  # every third frame is plenty (and keeps the test short)
                    found = detector.detect([frame])[0]
                    boxes[index] = [
                        box
                        for box, score, cls in zip(
                            found.boxes.tolist(), found.scores.tolist(), found.class_ids.tolist(),
                            strict=True,
                        )
                        if cls == BOTTLE and score >= 0.5
                    ]  # fmt: skip
    finally:
        detector.close()
    assert sum(len(b) for b in boxes.values()) >= 2 * len(boxes), "the clip shows bottles"
    return boxes


def _check_boxes(
    results: list[dict], truth: dict[int, list[list[float]]], *, min_iou: float, first_pts: int = 0
) -> int:
    """Each expected bottle is found again (same frame by pts); returns frames compared."""
    compared = 0
    for line in results:
        index = round((line["pts"] - first_pts) / FRAME_TICKS)
        if index not in truth:
            continue
        found = [d["box"] for d in line["detections"] if d["class_id"] == BOTTLE]
        for expected in truth[index]:
            best = max((_iou(expected, box) for box in found), default=0.0)
            assert best >= min_iou, (index, expected, found)
        compared += 1
    return compared


@pytest.mark.timeout(120)
def test_passthrough_answers_every_frame_with_the_right_boxes(
    camera: Camera, server: tuple[int, Path], truth: dict, tmp_path: Path
) -> None:
    camera.start()
    results, summary_path = tmp_path / "r.jsonl", tmp_path / "s.json"
    run = _run(
        _send(server[0], camera.url(), "--frames", "45", "--results", str(results),
              "--json", str(summary_path))
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    _assert_no_credentials(run.stdout, run.stderr)
    assert "streaming hevc 640x360 @ 15 fps as the camera sends it" in run.stderr
    lines, summary = _lines(results), _summary(summary_path)
    assert sorted(line["pts"] for line in lines) == sorted({line["pts"] for line in lines})
    assert len(lines) == summary["frames"] == summary["frames_sent"] == 45
    assert summary["lost"] == 0 and summary["skipped_at_capture"] == 0
    assert summary["results"] + summary["dropped_by_server"] == 45
    assert summary["keyframes_sent"] >= 3  # the camera's, one a second
    assert summary["encode_ms_mean"] == 0.0
    answered = [line for line in lines if not line["dropped"]]
    assert len(answered) >= 30
    assert _check_boxes(answered, truth, min_iou=0.95) >= 8


@pytest.mark.timeout(120)
def test_passthrough_neither_encodes_nor_decodes(
    camera: Camera, server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_codec(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pass-through must not encode or decode")

    monkeypatch.setattr("shelf_stream.client.encoder_worker.get_encoder", no_codec)
    monkeypatch.setattr(CameraSession, "decode", no_codec)
    camera.start()
    records: list[FrameRecord] = []
    config = ClientConfig(
        url=f"ws://127.0.0.1:{server[0]}",
        source=SourceSpec(kind="rtsp", rtsp=RtspConfig(url=camera.url())),
        max_frames=30,
        status=False,
    )
    summary = asyncio.run(StreamClient(config, on_record=records.append).run())
    assert len(records) == len({r.pts for r in records}) == 30
    assert summary["results"] >= 20
    assert all(r.encode_ms == 0.0 for r in records)
    assert sum(r.keyframe for r in records if r.status is Outcome.RESULT) >= 1


@pytest.mark.timeout(150)
def test_the_stream_recovers_after_the_camera_restarts(
    camera: Camera, server: tuple[int, Path], tmp_path: Path
) -> None:
    camera.start()
    results = tmp_path / "r.jsonl"
    send = _Send(
        _send(server[0], camera.url(), "--frames", "70", "--results", str(results),
              "--json", str(tmp_path / "s.json")),
        tmp_path,
    )  # fmt: skip
    with send:
        send.wait_streaming()
        camera.kill()
        time.sleep(1.0)
        camera.start()
        returncode, stdout, stderr = send.finish()
    assert returncode == 0, stderr
    _assert_no_credentials(stdout, stderr)
    assert "reconnecting" in stderr and "is back after" in stderr
    lines = _lines(results)
    pts = sorted(line["pts"] for line in lines)
    assert len(pts) == len(set(pts)) == 70
    gap_at = max(range(1, len(pts)), key=lambda i: pts[i] - pts[i - 1])
    # The outage shows in the stream's clock, which kept counting wall time.
    assert pts[gap_at] - pts[gap_at - 1] >= 90_000
    after = [line for line in lines if line["pts"] >= pts[gap_at] and not line["dropped"]]
    assert len(after) >= 20, "results resume at the camera's first keyframe"


@pytest.mark.timeout(150)
def test_a_camera_back_at_another_size_gets_a_new_hello(
    camera: Camera, server: tuple[int, Path], truth: dict, tmp_path: Path
) -> None:
    port, server_log = server
    camera.start()
    results = tmp_path / "r.jsonl"
    send = _Send(_send(port, camera.url(), "--frames", "55", "--results", str(results)), tmp_path)
    with send:
        send.wait_streaming()
        camera.kill()
        camera.start("bottles-small.hevc.mkv")
        returncode, _, stderr = send.finish()
    assert returncode == 0, stderr
    assert "the camera now streams hevc 320x180 (was hevc 640x360)" in stderr
    assert "hevc 320x180 @ 15 fps" in server_log.read_text(), "the server got the new Hello"
    lines = _lines(results)
    assert len(lines) == len({line["pts"] for line in lines}) == 55
    pts = sorted(line["pts"] for line in lines)
    restart = pts[max(range(1, len(pts)), key=lambda i: pts[i] - pts[i - 1])]
    after = [line for line in lines if line["pts"] >= restart and not line["dropped"]]
    assert len(after) >= 15
    # Boxes stay in the first size's pixels: the half-size clip's bottles land where the
    # full-size clip's are (same footage, frame for frame from its start).
    assert _check_boxes(after, truth, min_iou=0.6, first_pts=restart) >= 4


@pytest.mark.timeout(120)
def test_h264_passes_through_as_h264(camera: Camera, server: tuple[int, Path]) -> None:
    port, server_log = server
    camera.start("bottles.h264.mkv", codec="h264")
    run = _run(_send(port, camera.url(), "--frames", "20"))
    assert run.returncode == 0, run.stderr
    assert "streaming h264 640x360 @ 15 fps as the camera sends it" in run.stderr
    assert "h264 640x360 @ 15 fps" in server_log.read_text()
    assert "20 captured, 20 sent" in run.stdout


@pytest.mark.timeout(120)
def test_b_frames_are_re_encoded_and_reencode_works(
    camera: Camera, server: tuple[int, Path], tmp_path: Path
) -> None:
    camera.start("bottles-bframes.hevc.mkv")
    summary_path = tmp_path / "s.json"
    run = _run(_send(server[0], camera.url(), "--frames", "20", "--json", str(summary_path)))
    assert run.returncode == 0, run.stderr
    assert "the camera sends B-frames" in run.stderr and "re-encoding it as hevc" in run.stderr
    summary = _summary(summary_path)
    assert summary["results"] >= 5 and summary["encode_ms_mean"] > 0
    _assert_no_credentials(run.stdout, run.stderr)


@pytest.mark.timeout(60)
def test_a_wrong_password_fails_at_once_and_is_not_shown(
    camera: Camera, server: tuple[int, Path]
) -> None:
    camera.start()
    wrong = "Wr0ng-pw-42"
    run = _run(_send(server[0], camera.url(password=wrong), "--frames", "5"), timeout_s=30)
    assert run.returncode == 2
    assert f"camera rtsp://***@127.0.0.1:{camera.port}/cam refused the credentials" in run.stderr
    assert wrong not in run.stderr + run.stdout and PASSWORD not in run.stderr


@pytest.mark.timeout(120)
def test_a_codec_the_server_refuses_is_re_encoded(
    camera: Camera, model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "shelf_stream")
    camera.start("bottles.h264.mkv", codec="h264")
    records: list[FrameRecord] = []

    async def run() -> dict:
        detector = create_detector(EngineConfig(model_path=model_path))
        only_hevc = ServerConfig(host="127.0.0.1", port=0, limits=ServerLimits(codecs=("hevc",)))
        try:
            async with Server(only_hevc, detector) as server:
                config = ClientConfig(
                    url=f"ws://127.0.0.1:{server.port}",
                    source=SourceSpec(kind="rtsp", rtsp=RtspConfig(url=camera.url())),
                    max_frames=15,
                    status=False,
                )
                return await StreamClient(config, on_record=records.append).run()
        finally:
            detector.close()

    summary = asyncio.run(run())
    assert "the server does not take the camera's h264 as it is: re-encoding it as hevc" in (
        caplog.text
    )
    assert len(records) == 15 and summary["results"] >= 5
    assert any(r.encode_ms > 0 for r in records)


@pytest.mark.timeout(60)
def test_options_that_would_change_the_stream_need_reencode(
    camera: Camera, server: tuple[int, Path]
) -> None:
    camera.start()
    run = _run(_send(server[0], camera.url(), "--size", "320x180", "--frames", "5"), timeout_s=30)
    assert run.returncode == 2
    assert "--size: the camera's hevc goes to the server as it is; add --reencode" in run.stderr


@pytest.mark.timeout(120)
def test_rtp_over_udp(camera: Camera, server: tuple[int, Path]) -> None:
    camera.start()
    run = _run(_send(server[0], camera.url(), "--rtsp-transport", "udp", "--frames", "20"))
    assert run.returncode == 0, run.stderr
    assert "20 captured, 20 sent" in run.stdout


@pytest.mark.timeout(120)
def test_save_decodes_a_passed_through_camera_for_drawing(
    camera: Camera, server: tuple[int, Path], tmp_path: Path
) -> None:
    camera.start()
    video = tmp_path / "annotated.mp4"
    run = _run(_send(server[0], camera.url(), "--frames", "20", "--save", str(video)))
    assert run.returncode == 0, run.stderr
    assert "as the camera sends it" in run.stderr
    results = int(run.stdout.split(" sent, ")[1].split(" results")[0])
    with av.open(str(video)) as annotated:
        frames = sum(1 for _ in annotated.decode(video=0))
    assert frames == results >= 10


@pytest.mark.timeout(120)
def test_rtsps_streams_over_tls(camera: Camera, server: tuple[int, Path], tmp_path: Path) -> None:
    from tests.server.test_security import _make_certificate

    camera.tls = _make_certificate(tmp_path)
    camera.start()
    run = _run(_send(server[0], camera.url(), "--frames", "20"))
    assert run.returncode == 0, run.stderr
    assert "as the camera sends it" in run.stderr and "20 captured, 20 sent" in run.stdout
    _assert_no_credentials(run.stdout, run.stderr)
