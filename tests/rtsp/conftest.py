"""A real RTSP camera (GStreamer's RTSP server, ``camera.py``) and a real server for the
RTSP tests. The camera runs in the system Python, which has PyGObject; missing parts
fail the tests with the command that installs them (``.ci/run`` runs it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shelf_stream.bench.loopback import free_port, wait_for_port
from tests.rtsp.camera import INSTALL

HERE = Path(__file__).resolve().parent
CAMERA = HERE / "camera.py"
CLIPS = HERE.parent / "data" / "rtsp"
#: The system Python with PyGObject (the venv has none).
GST_PYTHON = os.environ.get("SHELF_STREAM_GST_PYTHON", "/usr/bin/python3")

USER, PASSWORD = "viewer", "Sup3r-s3cret-pw"


@pytest.fixture(scope="session")
def gst_python() -> str:
    if not Path(GST_PYTHON).is_file():
        pytest.fail(f"{GST_PYTHON} not found: the RTSP camera needs the system Python; {INSTALL}")
    check = subprocess.run(
        [GST_PYTHON, str(CAMERA), "--check"], capture_output=True, text=True, timeout=60
    )
    if check.returncode != 0:
        pytest.fail(f"GStreamer's RTSP server is not usable: {check.stderr.strip()}")
    return GST_PYTHON


class Camera:
    """One ``camera.py`` process on a fixed port, which ``restart`` keeps."""

    def __init__(self, python: str, port: int) -> None:
        self.python, self.port = python, port
        self.process: subprocess.Popen[str] | None = None

        self.tls: tuple[Path, Path] | None = None  # (certificate, key): rtsps://

    def url(self, *, user: str = USER, password: str = PASSWORD) -> str:
        scheme = "rtsps" if self.tls else "rtsp"
        return f"{scheme}://{user}:{password}@127.0.0.1:{self.port}/cam"

    def start(self, clip: str = "bottles.hevc.mkv", codec: str = "hevc") -> None:
        assert self.process is None
        tls = ["--cert", str(self.tls[0]), "--key", str(self.tls[1])] if self.tls else []
        process = self.process = subprocess.Popen(
            [self.python, str(CAMERA), "--port", str(self.port), "--clip", str(CLIPS / clip),
             "--codec", codec, "--user", USER, "--password", PASSWORD, *tls],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        ready = threading.Event()

        def wait_ready() -> None:
            assert process.stdout is not None
            if process.stdout.readline().startswith("ready"):
                ready.set()

        threading.Thread(target=wait_ready, daemon=True).start()
        if not ready.wait(30):
            self.kill()
            pytest.fail(f"the RTSP camera did not start on port {self.port}")

    def kill(self) -> None:
        """Gone at once, like a camera that loses power (no RTSP teardown)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def camera(gst_python: str) -> Iterator[Camera]:
    cam = Camera(gst_python, free_port())
    try:
        yield cam
    finally:
        cam.kill()


@pytest.fixture(scope="module")
def server(
    model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, Path]]:
    """``shelf-stream serve`` at INFO, its log in a file (the tests read its Hellos)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with log_path.open("w") as log_file:
        serve = subprocess.Popen(
            [sys.executable, "-m", "shelf_stream", "--log-level", "INFO", "serve",
             "--host", "127.0.0.1", "--port", str(port), "--model", str(model_path)],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for_port(port, serve)
            yield port, log_path
        finally:
            serve.terminate()
            serve.wait(timeout=15)
