"""The Triton backend: model-info parsing (no server), and against a real Triton
Inference Server over real gRPC (marker ``triton_server``).

The server is the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships,
started by ``deploy/triton/pytriton_server.py`` serving the dynamic-batch YOLOX through
ONNX Runtime. PyTriton pins numpy<2, so it lives in its own virtual environment, named
by ``$SHELF_STREAM_TRITON_PYTHON`` (``.ci/run`` builds it from
``deploy/triton/test-server-requirements.txt``). Without that variable the server tests
are skipped in a plain local ``pytest``, and fail under ``scripts/test`` and CI (which
build that environment, and allow no skips): a missing server is never a pass.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shelf_stream.bench.loopback import free_port
from shelf_stream.engine import EngineConfig, create_detector
from shelf_stream.engine.base import Detections
from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector
from shelf_stream.engine.onnx_batch import make_dynamic_batch
from shelf_stream.engine.postprocess import box_iou
from shelf_stream.engine.triton_backend import TritonDetector, parse_model_info
from shelf_stream.errors import EngineError

TRITON_PYTHON_ENV = "SHELF_STREAM_TRITON_PYTHON"
REPO = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = REPO / "deploy" / "triton" / "pytriton_server.py"
MODEL_NAME = "yolox_nano"

# ------------------------------------------------------------- without a server

METADATA = {
    "name": "yolox_nano",
    "inputs": [{"name": "images", "datatype": "FP32", "shape": ["-1", "3", "416", "416"]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": ["-1", "3549", "85"]}],
}


def test_model_info_from_a_batching_model() -> None:
    config = {"config": {"max_batch_size": 8, "parameters": {"names": {"string_value": "x"}}}}
    info = parse_model_info(METADATA, config, "yolox_nano")
    assert info.input_shape == [None, 3, 416, 416]
    assert info.output_shape == [None, 3549, 85]
    assert (info.max_batch_size, info.fixed_batch, info.chunk_size) == (8, None, 8)
    assert info.parameters == {"names": "x"}


def test_model_info_from_a_non_batching_model_sends_its_fixed_batch() -> None:
    metadata = {
        **METADATA,
        "inputs": [{"name": "images", "datatype": "FP32", "shape": ["1", "3", "416", "416"]}],
    }
    info = parse_model_info(metadata, {"config": {}}, "m")
    assert (info.max_batch_size, info.fixed_batch, info.chunk_size) == (0, 1, 1)


def test_model_info_refuses_unsupported_inputs() -> None:
    metadata = {**METADATA, "inputs": [{**METADATA["inputs"][0], "datatype": "UINT8"}]}
    with pytest.raises(EngineError, match="UINT8"):
        parse_model_info(metadata, {}, "m")
    with pytest.raises(EngineError, match="2 inputs"):
        parse_model_info({**METADATA, "inputs": METADATA["inputs"] * 2}, {}, "m")


def test_an_unreachable_server_is_an_engine_error_with_the_fix(yolox_model_path: Path) -> None:
    config = EngineConfig(
        model_path=yolox_model_path, backend="triton", triton_url=f"127.0.0.1:{free_port()}"
    )
    with pytest.raises(EngineError, match="--triton-url"):
        create_detector(config)


# --------------------------------------------------------- with a real Triton


def _triton_python() -> str:
    python = os.environ.get(TRITON_PYTHON_ENV)
    if python and Path(python).is_file():
        return python
    why = (
        f"${TRITON_PYTHON_ENV} is not an interpreter with "
        "deploy/triton/test-server-requirements.txt installed; scripts/test makes one: "
        "python3 -m venv .venv-triton && .venv-triton/bin/pip install -r "
        f"deploy/triton/test-server-requirements.txt && export {TRITON_PYTHON_ENV}="
        "$PWD/.venv-triton/bin/python"
    )
    pytest.skip(why)


def _server_env(python: str) -> dict[str, str]:
    """The Python backend's stub loads libpython through the dynamic linker; when the
    interpreter is not the system one (pyenv, uv), the system's libpython of the same
    version would pair with the interpreter's stdlib and break. Put the interpreter's
    own library directory first."""
    libdir = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    env = os.environ.copy()
    if libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, env.get("LD_LIBRARY_PATH")]))
    return env


def _wait_ready(process: subprocess.Popen[str], http_port: int, timeout_s: float) -> None:
    """Until Triton says over HTTP that the model is ready (its KServe v2 endpoint).

    Not by its ``READY`` line: Triton's log and the script's stdout share one pipe, and
    a log line written at the same moment split it ("model_lifecycle.READYcc:839"). The
    output is kept for the failure's message.
    """
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    url = f"http://127.0.0.1:{http_port}/v2/models/{MODEL_NAME}/ready"
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise AssertionError(f"Triton exited ({process.returncode}):\n{_tail(lines)}")
        if _answers_ok(url):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"Triton not ready in {timeout_s:g} s:\n{_tail(lines)}")
        time.sleep(0.25)


def _answers_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except OSError:  # refused, not ready yet (HTTP 400/503 is an HTTPError), timed out
        return False


def _tail(lines: queue.Queue[str], count: int = 40) -> str:
    seen: list[str] = []
    while not lines.empty():
        seen.append(lines.get_nowait())
    return "".join(seen[-count:])


@pytest.fixture(scope="module")
def triton_url(yolox_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    python = _triton_python()
    # The dynamic-batch model, so that Triton's dynamic batcher can merge requests.
    model_path = tmp_path_factory.mktemp("triton") / "yolox_nano_dyn.onnx"
    make_dynamic_batch(yolox_model_path, model_path)
    grpc, http, metrics = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [python, str(SERVER_SCRIPT), str(model_path), "--name", MODEL_NAME,
         "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_server_env(python),
    )  # fmt: skip
    try:
        _wait_ready(process, http, timeout_s=90)
        yield f"127.0.0.1:{grpc}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _assert_same(got: Detections, want: Detections) -> None:
    assert len(want) > 0
    assert got.class_ids.tolist() == want.class_ids.tolist()
    for box, expected in zip(got.boxes, want.boxes, strict=True):
        assert float(box_iou(expected, box[None])[0]) > 0.95


@pytest.mark.triton_server
@pytest.mark.parametrize("shm", [False, True], ids=["grpc-tensors", "system-shm"])
def test_triton_detections_match_onnxruntime(
    triton_url: str, shm: bool, yolox_model_path: Path, photos: dict[str, np.ndarray]
) -> None:
    images = [photos["astronaut"], photos["coffee"], photos["astronaut"][:, ::-1].copy()]
    reference = OnnxRuntimeDetector(EngineConfig(model_path=yolox_model_path), prefer_cuda=False)
    config = EngineConfig(
        model_path=yolox_model_path, backend="triton", triton_url=triton_url,
        triton_model=MODEL_NAME, triton_shm=shm,
    )  # fmt: skip
    detector = create_detector(config)
    try:
        assert isinstance(detector, TritonDetector)
        assert detector.model_info.max_batch_size == 8  # read from the server's config
        assert detector.input_size == reference.input_size
        assert detector.class_names == reference.class_names
        for got, want in zip(detector.detect(images), reference.detect(images), strict=True):
            _assert_same(got, want)
        person = reference.class_names.index("person")
        assert person in detector.detect([photos["astronaut"]])[0].class_ids.tolist()
    finally:
        detector.close()
        reference.close()
    if shm:  # the regions were unregistered and unlinked
        assert not [p for p in Path("/dev/shm").glob("shelf_stream_*")]


@pytest.mark.triton_server
def test_an_unknown_model_is_an_engine_error(triton_url: str, yolox_model_path: Path) -> None:
    config = EngineConfig(
        model_path=yolox_model_path, backend="triton", triton_url=triton_url, triton_model="nope"
    )
    with pytest.raises(EngineError, match=r"'nope' is not ready.*--triton-model"):
        create_detector(config)
