"""TensorRT engine cache, sidecar refusals, the builder's orchestration and the
TensorRT backend, on fakes of ``tensorrt`` and cuda-python (see ``fake_gpu``)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest

from shelf_stream.engine import EngineConfig, create_detector
from shelf_stream.engine import cuda_mem as cm
from shelf_stream.engine import trt_build as tb
from shelf_stream.engine.base import Detections, Detector
from shelf_stream.engine.tensorrt_backend import TensorRTDetector
from shelf_stream.errors import ConfigError, EngineError

from .fake_gpu import FakeCudart, FakeTensorRT, write_fake_engine

H100 = cm.DeviceInfo("NVIDIA H100 80GB HBM3", 9, 0)
A100 = cm.DeviceInfo("NVIDIA A100-SXM4-80GB", 8, 0)
H100_PCIE = cm.DeviceInfo("NVIDIA H100 PCIe", 9, 0)
TRT = "10.3.0.26"
SHA = "ab" * 32


def _key(**changes: object) -> tb.EngineKey:
    key = tb.engine_key(SHA, H100, TRT, tb.BuildOptions(fp16=True))
    return dataclasses.replace(key, **changes)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- keys


def test_key_is_stable_and_round_trips_through_json() -> None:
    key = _key()
    assert key.digest == _key().digest
    assert len(key.digest) == 64
    assert tb.EngineKey.from_json(json.loads(json.dumps(key.to_json()))) == key


@pytest.mark.parametrize(
    "change",
    [
        {"gpu_name": "NVIDIA H100 PCIe"},
        {"compute_capability": "8.9"},
        {"tensorrt_version": "10.4.0"},
        {"onnx_sha256": "cd" * 32},
        {"precisions": ("fp16", "int8")},
        {"batch": (1, 4, 16)},
        {"workspace_mb": 4096},
        {"calib_sha256": "ef" * 32},
        {"precision_mode": tb.STRONGLY_TYPED},
        {"converter": "onnxconverter-common 9.9 keep-io r1"},
        {"cache_format": 1},
    ],
)
def test_every_component_changes_the_key(change: dict[str, object]) -> None:
    assert _key(**change).digest != _key().digest


def test_key_from_options_and_calibration(tmp_path: Path) -> None:
    fp16 = tb.engine_key(SHA, H100, TRT, tb.BuildOptions(fp16=True))
    best_no_calib = tb.engine_key(SHA, H100, TRT, tb.BuildOptions(best=True))
    assert fp16.precisions == ("fp16",) and best_no_calib.precisions == ("bf16", "fp16")
    int8 = tb.BuildOptions(int8=True, calib_dir=tmp_path)
    a = tb.engine_key(SHA, H100, TRT, int8, calib_sha256="01" * 32)
    b = tb.engine_key(SHA, H100, TRT, int8, calib_sha256="02" * 32)
    assert a.digest != b.digest  # other calibration images, other engine
    # Calibration data does not matter without INT8.
    assert tb.engine_key(SHA, H100, TRT, tb.BuildOptions(fp16=True), "01" * 32).calib_sha256 is None


def test_file_and_calibration_hashes(tmp_path: Path) -> None:
    (tmp_path / "b.png").write_bytes(b"bbb")
    (tmp_path / "a.jpg").write_bytes(b"aaa")
    (tmp_path / "notes.txt").write_text("not an image")
    images = tb.calibration_images(tmp_path)
    assert [p.name for p in images] == ["a.jpg", "b.png"]
    first = tb.calibration_sha256(images)
    (tmp_path / "a.jpg").write_bytes(b"aab")
    assert tb.calibration_sha256(images) != first
    assert tb.file_sha256(tmp_path / "b.png") == (
        "3e744b9dc39389baf0c5a0660589b8402f3dbb49b89b3e75f2c9355852a3c677"
    )


def test_cache_path_names_model_and_digest(tmp_path: Path) -> None:
    key = _key()
    path = tb.cached_engine_path(tmp_path, Path("/m/yolox_nano.onnx"), key)
    assert path.parent == tmp_path and path.name == f"yolox_nano-{key.digest[:16]}.engine"
    assert tb.sidecar_path(path).name == path.name + ".json"
    assert tb.engine_cache_dir(Path("/c/shelf-stream/models")) == Path(
        "/c/shelf-stream/models/engines"
    )


# ---------------------------------------------------------------------- sidecar


def _sidecar(key: tb.EngineKey | None = None) -> tb.Sidecar:
    return tb.Sidecar(key or _key(), "/m/model.onnx", {"names": "{0: 'a'}"}, 1.0, 2.0)


def test_sidecar_round_trip(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    tb.write_engine(engine, b"bytes", _sidecar())
    assert engine.read_bytes() == b"bytes"
    assert tb.read_sidecar(engine) == _sidecar()
    assert json.loads(tb.sidecar_path(engine).read_text())["digest"] == _key().digest
    assert tb.read_sidecar(tmp_path / "other.engine") is None
    assert not list(tmp_path.glob(".*part"))  # no temporary files left behind


def test_unreadable_sidecar_says_what_to_do(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    tb.sidecar_path(engine).write_text("{not json")
    with pytest.raises(EngineError, match="delete it and the engine"):
        tb.read_sidecar(engine)


def test_matching_engine_is_accepted() -> None:
    tb.check_compatible(Path("m.engine"), _sidecar(), H100, TRT)


@pytest.mark.parametrize(
    ("device", "version", "message"),
    [
        (A100, TRT, r"built for compute capability 9\.0 .* this GPU is NVIDIA A100.* 8\.0"),
        (H100, "10.4.0", r"built with TensorRT 10\.3\.0\.26, this is TensorRT 10\.4\.0"),
        (H100_PCIE, TRT, r"built on a NVIDIA H100 80GB HBM3, this GPU is a NVIDIA H100 PCIe"),
    ],
)
def test_foreign_engine_is_refused(device: cm.DeviceInfo, version: str, message: str) -> None:
    with pytest.raises(EngineError, match=message) as info:
        tb.check_compatible(Path("/e/m.engine"), _sidecar(), device, version)
    text = str(info.value)
    assert text.startswith("refusing to load the TensorRT engine /e/m.engine")
    assert "shelf-stream export --onnx /m/model.onnx --engine /e/m.engine" in text


def test_deserialize_failure_without_sidecar_explains_the_trap() -> None:
    error = tb.explain_deserialize_failure(Path("m.engine"), H100, TRT, None)
    text = str(error)
    assert "no m.engine.json sidecar" in text and "compute capability" in text
    assert "not portable" in text and "shelf-stream export --onnx" in text
    with_sidecar = tb.explain_deserialize_failure(Path("m.engine"), H100, TRT, _sidecar())
    assert "truncated or corrupt" in str(with_sidecar)


# ---------------------------------------------------------------- build options


def test_build_option_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--int8 needs calibration images"):
        tb.BuildOptions(int8=True).validate()
    with pytest.raises(ConfigError, match="only used with --int8 or --best"):
        tb.BuildOptions(fp16=True, calib_dir=tmp_path).validate()
    with pytest.raises(ConfigError, match="calibration directory not found"):
        tb.BuildOptions(int8=True, calib_dir=tmp_path / "missing").validate()
    with pytest.raises(ConfigError, match="1 <= min <= opt <= max"):
        tb.BuildOptions(batch=(4, 2, 8)).validate()
    with pytest.raises(ConfigError, match="workspace"):
        tb.BuildOptions(workspace_mb=0).validate()
    tb.BuildOptions(best=True).validate()  # FP16/BF16 only, with a warning at build
    assert tb.BuildOptions(best=True, calib_dir=tmp_path).precisions() == ("bf16", "fp16", "int8")


def test_profile_shapes() -> None:
    dynamic = tb.NetworkInput("images", (-1, 3, 416, 416))
    assert tb.profile_shapes(dynamic, (1, 2, 8), None) == (
        (1, 3, 416, 416),
        (2, 3, 416, 416),
        (8, 3, 416, 416),
    )
    all_dynamic = tb.NetworkInput("images", (-1, 3, -1, -1))
    shapes = tb.profile_shapes(all_dynamic, (1, 1, 4), (640, 384))
    assert shapes is not None and shapes[2] == (4, 3, 384, 640)
    with pytest.raises(EngineError, match="no 'imgsz' metadata"):
        tb.profile_shapes(all_dynamic, (1, 1, 4), None)
    static = tb.NetworkInput("images", (1, 3, 416, 416))
    assert tb.profile_shapes(static, tb.DEFAULT_BATCH, None) is None
    with pytest.raises(ConfigError, match="batch size is fixed at 1"):
        tb.profile_shapes(static, (1, 4, 8), None)


# ------------------------------------------------------------ build with a fake


def test_build_engine_drives_the_builder_api(
    yolox_dynamic_batch_path: Path, tmp_path: Path
) -> None:
    trt, cudart = FakeTensorRT(), FakeCudart()
    out = tmp_path / "yolox.engine"
    sidecar = tb.build_engine(
        yolox_dynamic_batch_path,
        out,
        fp16=True,
        batch=(1, 2, 4),
        workspace_mb=512,
        trt=trt,
        cudart=cudart,
    )
    (config,) = trt.builds
    assert config.flags == {"FP16"}
    assert trt.networks[0].flags == 0  # TensorRT 10: weakly typed, precision by flags
    assert sidecar.key.precision_mode == tb.BUILDER_FLAGS and sidecar.key.converter is None
    assert sidecar.built_graph == {}  # the ONNX file was parsed as it is
    assert config.pools == {"WORKSPACE": 512 << 20}
    assert config.profiles[0].shapes["images"] == (
        (1, 3, 416, 416),
        (2, 3, 416, 416),
        (4, 3, 416, 416),
    )
    assert sidecar.key.gpu_name == H100.name and sidecar.key.compute_capability == "9.0"
    assert sidecar.key.tensorrt_version == TRT
    assert sidecar.key.onnx_sha256 == tb.file_sha256(yolox_dynamic_batch_path)
    assert tb.read_sidecar(out) == sidecar
    assert out.read_bytes().startswith(b"FAKE-TRT-ENGINE")


def test_int8_build_calibrates_with_the_models_letterbox(
    yolox_dynamic_batch_path: Path, tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for name, bgr in photos.items():
        _save_png(av.VideoFrame.from_ndarray(bgr, format="bgr24"), calib / f"{name}.png")
    trt, cudart = FakeTensorRT(), FakeCudart()
    out = tmp_path / "int8.engine"
    sidecar = tb.build_engine(
        yolox_dynamic_batch_path,
        out,
        int8=True,
        calib_dir=calib,
        batch=(1, 2, 2),
        trt=trt,
        cudart=cudart,
    )
    (config,) = trt.builds
    assert config.flags == {"INT8"}
    assert config.calibration_profile is config.profiles[0]
    calibrator = config.int8_calibrator
    assert calibrator.base_initialised and calibrator.get_batch_size() == 2
    assert calibrator.batches_seen == 2  # 4 photos in batches of 2
    assert cudart.live_blocks == 0  # the calibration buffer was freed
    assert (tmp_path / "int8.engine.calib").read_bytes() == b"calibration-table"
    assert sidecar.key.calib_sha256 == tb.calibration_sha256(tb.calibration_images(calib))


def _save_png(frame: av.VideoFrame, path: Path) -> None:
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "rgb24"
        for packet in stream.encode(frame.reformat(format="rgb24")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_calibration_batches_match_inference_letterbox(
    tmp_path: Path, photos: dict[str, np.ndarray], yolox_detector: Detector
) -> None:
    path = tmp_path / "coffee.png"
    _save_png(av.VideoFrame.from_ndarray(photos["coffee"], format="bgr24"), path)
    (batch,) = list(tb.calibration_batches([path, path, path], yolox_detector.letterbox_spec, 2))  # type: ignore[attr-defined]
    expected = yolox_detector.prepare(photos["coffee"]).tensor
    assert batch.shape == (2, 3, 416, 416) and batch.dtype == np.float32
    assert np.abs(batch[0] - expected).max() <= 1.0  # PNG round trip is lossless; rgb->bgr


def test_unparsable_onnx_is_an_engine_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(EngineError, match="TensorRT cannot parse"):
        tb.build_serialized(FakeTensorRT(), bad, tb.BuildOptions(), input_size=None)


def test_ensure_engine_builds_once_then_reuses(yolox_model_path: Path, tmp_path: Path) -> None:
    # The official model: batch fixed at 1, so the default profile (no profile at all).
    trt, cudart = FakeTensorRT(), FakeCudart()
    calls: list[Path] = []

    def build(onnx: Path, out: Path, options: tb.BuildOptions) -> tb.Sidecar:
        calls.append(out)
        return tb.build_with_options(onnx, out, options, trt=trt, cudart=cudart)

    options = tb.BuildOptions(fp16=True)
    kwargs = {"cache_dir": tmp_path, "device": H100, "tensorrt_version": TRT, "build": build}
    first, _ = tb.ensure_engine(yolox_model_path, options, **kwargs)  # type: ignore[arg-type]
    second, _ = tb.ensure_engine(yolox_model_path, options, **kwargs)  # type: ignore[arg-type]
    assert first == second and calls == [first]
    other_gpu = dict(kwargs, device=A100)
    with pytest.raises(EngineError, match="does not match its cache key"):
        # The (fake) machine is an H100, so an engine "for an A100" cannot come out of it.
        tb.ensure_engine(yolox_model_path, options, **other_gpu)  # type: ignore[arg-type]


# ------------------------------------------------------------------ cuda_mem


def test_pinned_round_trip_stream_and_events() -> None:
    cudart = FakeCudart()
    with (
        cm.PinnedBuffer(cudart, 64) as host,
        cm.DeviceBuffer(cudart, 64) as device,
        cm.PinnedBuffer(cudart, 64) as back,
        cm.CudaStream(cudart) as stream,
        cm.CudaEvent(cudart) as start,
        cm.CudaEvent(cudart) as end,
    ):
        host.array((16,), np.float32)[:] = np.arange(16, dtype=np.float32)
        start.record(stream)
        cm.copy_to_device(cudart, device, host, 64, stream)
        cm.copy_to_host(cudart, back, device, 64, stream)
        end.record(stream)
        stream.synchronize()
        assert np.array_equal(back.array((16,), np.float32), np.arange(16))
        assert end.elapsed_ms(start) >= 0.0
        assert isinstance(stream.handle, int)
        with pytest.raises(ValueError, match="overflows"):
            cm.copy_to_device(cudart, device, host, 65, stream)
        with pytest.raises(ValueError, match="needs 68 bytes"):
            host.array((17,), np.float32)
    assert cudart.live_blocks == 0 and not cudart.streams and not cudart.events
    host.close()  # closing twice frees once
    assert len(cudart.freed) == 3


def test_cuda_errors_become_engine_errors_with_hints() -> None:
    with pytest.raises(
        EngineError, match=r"cudaGetDeviceCount failed: cudaErrorNoDevice; .*nvidia-smi"
    ):
        cm.device_count(FakeCudart(devices=()))
    with pytest.raises(EngineError, match=r"cudaMalloc\(8\) failed: cudaErrorMemoryAllocation"):
        cm.DeviceBuffer(FakeCudart(fail_malloc_after=0), 8)
    assert cm.device_info(FakeCudart()) == H100


def test_missing_libraries_name_the_fix() -> None:
    # Neither tensorrt nor cuda-python is installed on the test machine.
    with pytest.raises(EngineError, match=r"TensorRT is not installed .*shelf-stream\[gpu-cu12\]"):
        tb.load_tensorrt()
    with pytest.raises(EngineError, match=r"cuda-python is not installed .*nvidia-smi"):
        cm.load_cudart()


# ------------------------------------------------------------ TensorRT backend


def test_tensorrt_backend_missing_tensorrt_gives_install_hint(yolox_model_path: Path) -> None:
    with pytest.raises(EngineError, match=r"pip install 'shelf-stream\[gpu-cu12\]'"):
        create_detector(EngineConfig(model_path=yolox_model_path, backend="tensorrt"))


def _trt_detector(path: Path, tmp_path: Path, **kwargs: object) -> TensorRTDetector:
    return TensorRTDetector(
        EngineConfig(model_path=path, backend="tensorrt", score_threshold=0.25),
        cache_dir=tmp_path,
        build_options=tb.BuildOptions(fp16=True, batch=(1, 2, 3)),
        trt=kwargs.pop("trt", FakeTensorRT()),
        cudart=kwargs.pop("cudart", FakeCudart()),
    )


def _same(a: list[Detections], b: list[Detections]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.class_ids, y.class_ids)
        assert np.allclose(x.boxes, y.boxes, atol=1e-3) and np.allclose(x.scores, y.scores)


@pytest.mark.parametrize(
    ("model", "graph"),
    [
        ("yolox", "yolox_dynamic_batch_path"),  # dynamic batch
        ("ultralytics", "ultralytics_dynamic_path"),  # batch, height and width dynamic
    ],
)
def test_tensorrt_backend_matches_onnxruntime(
    model: str,
    graph: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    photos: dict[str, np.ndarray],
) -> None:
    path: Path = request.getfixturevalue(graph)
    reference: Detector = request.getfixturevalue(f"{model}_detector")
    trt, cudart = FakeTensorRT(), FakeCudart()
    detector = _trt_detector(path, tmp_path, trt=trt, cudart=cudart)
    images = list(photos.values())  # 4 images: chunks of 3 then 1 (profile max 3)
    got = detector.detect(images)
    _same(got, reference.detect(images))
    assert sum(len(d) for d in got) > 0
    assert detector.class_names == reference.class_names  # names from the sidecar metadata
    assert detector.input_size == (416, 416) and detector.batch_range == (1, 3)
    assert [line.split(" stream")[0] for line in trt.log if line.startswith("execute")] == [
        "execute rows=3",
        "execute rows=1",
    ]
    assert detector.last_infer_ms >= 0.0
    detector.close()
    assert cudart.live_blocks == 0 and not cudart.streams
    with pytest.raises(EngineError, match="closed"):
        detector.infer([reference.prepare(images[0])])


def test_tensorrt_backend_loads_engine_files_and_refuses_foreign_ones(
    yolox_dynamic_batch_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    yolox_model_path = yolox_dynamic_batch_path
    engine = tmp_path / "m.engine"
    write_fake_engine(engine, yolox_model_path, (1, 1, 2))
    # No sidecar: loads (TensorRT accepts it), class names fall back to COCO.
    detector = _trt_detector(engine, tmp_path)
    assert detector.batch_range == (1, 2) and len(detector.class_names) == 80
    detector.close()
    foreign = tb.Sidecar(
        dataclasses.replace(_key(), compute_capability="8.6"), str(yolox_model_path)
    )
    tb.sidecar_path(engine).write_text(foreign.to_json())
    with pytest.raises(EngineError, match=r"compute capability 8\.6"):
        _trt_detector(engine, tmp_path)
    corrupt = tmp_path / "corrupt.engine"
    corrupt.write_bytes(b"\x00" * 16)
    with pytest.raises(EngineError, match=r"could not deserialize .* no corrupt\.engine\.json"):
        _trt_detector(corrupt, tmp_path)


def test_failed_allocation_frees_what_was_allocated(
    yolox_dynamic_batch_path: Path, tmp_path: Path
) -> None:
    engine = tmp_path / "m.engine"
    write_fake_engine(engine, yolox_dynamic_batch_path, (1, 1, 2))
    cudart = FakeCudart(fail_malloc_after=3)  # in/out pinned+device = 4 allocations
    with pytest.raises(EngineError, match="cudaMalloc"):
        _trt_detector(engine, tmp_path, cudart=cudart)
    assert cudart.live_blocks == 0


def test_serve_onnx_with_tensorrt_builds_once(
    yolox_dynamic_batch_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trt = FakeTensorRT()
    with caplog.at_level(logging.INFO, logger="shelf_stream.engine"):
        _trt_detector(yolox_dynamic_batch_path, tmp_path, trt=trt).close()
        _trt_detector(yolox_dynamic_batch_path, tmp_path, trt=trt).close()
    assert len(trt.builds) == 1
    assert "using the cached TensorRT engine" in caplog.text


def test_fully_dynamic_engine_io_is_sized_from_the_profile(
    ultralytics_dynamic_path: Path, tmp_path: Path
) -> None:
    # The project's own export: every dimension but the channels is -1 in the engine,
    # whatever the profile pins (NVIDIA/TensorRT#4120). Sizes come from the profile's
    # max and the context, never from get_tensor_shape.
    from shelf_stream.engine.tensorrt_backend import describe_io, plan_io

    trt = FakeTensorRT()
    engine_path = tmp_path / "u.engine"
    write_fake_engine(engine_path, ultralytics_dynamic_path, (1, 2, 4))
    engine = trt.Runtime(None).deserialize_cuda_engine(engine_path.read_bytes())
    specs = describe_io(trt, engine)
    assert [s.shape for s in specs] == [(-1, 3, -1, -1), (-1, 84, -1)]
    assert specs[0].profile == ((1, 3, 416, 416), (2, 3, 416, 416), (4, 3, 416, 416))
    io = plan_io(engine_path, engine.create_execution_context(), specs)
    assert io.input_shape == (4, 3, 416, 416)
    assert io.output_shapes == {"output0": (4, 84, 3549)}
    assert io.nbytes() == {"images": 4 * 3 * 416 * 416 * 4, "output0": 4 * 84 * 3549 * 4}

    class Refusing:
        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            return False

    with pytest.raises(EngineError, match=r"rejected input shape \(4, 3, 416, 416\)"):
        plan_io(engine_path, Refusing(), specs)

    class Unresolved(Refusing):
        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, 84, -1)

    with pytest.raises(EngineError, match=r"left output shapes .*output0.* unresolved"):
        plan_io(engine_path, Unresolved(), specs)
    # The detector built on it runs at the profile's 416x416 with buffers for batch 4.
    detector = _trt_detector(engine_path, tmp_path, trt=trt)
    assert detector.input_size == (416, 416) and detector.batch_range == (1, 4)
    detector.close()
