"""The onnxruntime backend on the real YOLOX-Nano model and real photographs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from shelf_stream.bench.loopback import free_port
from shelf_stream.engine import BACKENDS, COCO_CLASSES, EngineConfig, create_detector
from shelf_stream.engine.base import Detections, Detector, PreparedImage
from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector
from shelf_stream.engine.postprocess import box_iou
from shelf_stream.errors import ConfigError, EngineError

#: Reference boxes measured by hand on the photos (x1, y1, x2, y2, source pixels),
#: independently of the detector: the astronaut from her left shoulder to the right
#: edge of her suit and from the hair to the bottom; the cat's head filling the frame
#: up to its right ear; the cup from rim to handle; the motorcycle from the rear
#: fender to the front wheel and from the mirrors to the tyres.
REFERENCES = {
    "astronaut": ("person", (15, 15, 370, 512)),
    "chelsea": ("cat", (0, 0, 400, 300)),
    "coffee": ("cup", (165, 15, 415, 305)),
    "motorcycle_left": ("motorcycle", (95, 75, 690, 445)),
}


def _best_of(dets: Detections, class_id: int) -> tuple[np.ndarray, float]:
    picks = np.flatnonzero(dets.class_ids == class_id)
    assert picks.size, f"class {COCO_CLASSES[class_id]} not detected: {dets}"
    best = picks[np.argmax(dets.scores[picks])]
    return dets.boxes[best], float(dets.scores[best])


def _match(a: Detections, b: Detections, min_score: float, min_iou: float) -> None:
    """Every confident detection of ``a`` has a same-class twin in ``b`` and back."""
    for x, y in ((a, b), (b, a)):
        for box, score, cls in zip(x.boxes, x.scores, x.class_ids, strict=True):
            if score < min_score:
                continue
            same = y.class_ids == cls
            assert same.any(), f"class {COCO_CLASSES[cls]} ({score:.2f}) has no twin"
            assert box_iou(box, y.boxes[same]).max() > min_iou


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_detects_the_main_object(
    yolox_detector: Detector, photos: dict[str, np.ndarray], name: str
) -> None:
    class_name, reference = REFERENCES[name]
    dets = yolox_detector.detect([photos[name]])[0]
    box, score = _best_of(dets, COCO_CLASSES.index(class_name))
    assert score > 0.5
    assert box_iou(np.asarray(reference, np.float32), box[None])[0] > 0.7
    height, width = photos[name].shape[:2]
    assert dets.boxes.min() >= 0 and dets.boxes[:, 2].max() <= width
    assert dets.boxes[:, 3].max() <= height
    # The main object is also the most confident detection.
    assert COCO_CLASSES[dets.class_ids[0]] == class_name


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_yuv420p_frames_match_arrays(
    yolox_detector: Detector, photos: dict[str, np.ndarray], name: str
) -> None:
    bgr = photos[name]
    frame = av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p")
    assert frame.format.name == "yuv420p"
    from_array, from_frame = yolox_detector.detect([bgr, frame])
    _match(from_array, from_frame, min_score=0.4, min_iou=0.9)
    top = from_array.scores[0]
    assert from_frame.scores[0] == pytest.approx(top, abs=0.05)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_ultralytics_twin_agrees_with_yolox(
    yolox_detector: Detector,
    ultralytics_detector: Detector,
    photos: dict[str, np.ndarray],
    name: str,
) -> None:
    yolox = yolox_detector.detect([photos[name]])[0]
    ultra = ultralytics_detector.detect([photos[name]])[0]
    # Centred vs top-left letterboxing shifts the image on the model's grid, which
    # moves low scores around; confident detections must agree.
    _match(yolox, ultra, min_score=0.5, min_iou=0.9)
    if name == "astronaut":  # square: no padding, so the two inputs are the same pixels
        assert np.allclose(yolox.boxes, ultra.boxes, atol=0.5)
        assert np.allclose(yolox.scores, ultra.scores, atol=1e-3)


def test_ultralytics_model_is_read_from_its_metadata(ultralytics_detector: Detector) -> None:
    assert isinstance(ultralytics_detector, OnnxRuntimeDetector)
    assert ultralytics_detector.adapter.name == "ultralytics"
    assert ultralytics_detector.letterbox_spec.channel_order == "rgb"
    assert ultralytics_detector.class_names == COCO_CLASSES  # parsed from "names"
    assert ultralytics_detector.input_size == (416, 416)


def test_properties(yolox_detector: Detector) -> None:
    assert isinstance(yolox_detector, OnnxRuntimeDetector)
    assert yolox_detector.model_name == "yolox_nano"
    assert yolox_detector.input_size == (416, 416)
    assert yolox_detector.class_names == COCO_CLASSES
    assert yolox_detector.adapter.name == "yolox"
    assert "CPUExecutionProvider" in yolox_detector.providers


def test_batches_match_single_images(
    yolox_detector: Detector, photos: dict[str, np.ndarray]
) -> None:
    images = [photos["coffee"], photos["astronaut"], photos["coffee"]]
    batch = yolox_detector.detect(images)
    singles = [yolox_detector.detect([image])[0] for image in images]
    assert len(batch) == 3
    for got, want in zip(batch, singles, strict=True):
        assert np.array_equal(got.class_ids, want.class_ids)
        assert np.allclose(got.boxes, want.boxes) and np.allclose(got.scores, want.scores)
    assert yolox_detector.detect([]) == []


def test_dynamic_batch_runs_once(
    tmp_path: Path, yolox_model_path: Path, photos: dict[str, np.ndarray], yolox_detector: Detector
) -> None:
    model = onnx.load(str(yolox_model_path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, str(path))
    detector = OnnxRuntimeDetector(EngineConfig(model_path=path, score_threshold=0.25))
    images = [photos["coffee"], photos["astronaut"]]
    calls: list[int] = []
    run = detector._run

    def counting_run(chunk: Sequence[PreparedImage]) -> np.ndarray:
        calls.append(len(chunk))
        return run(chunk)

    detector._run = counting_run  # type: ignore[method-assign]
    got = detector.detect(images)
    assert calls == [2]
    for a, b in zip(got, yolox_detector.detect(images), strict=True):
        assert np.array_equal(a.class_ids, b.class_ids) and np.allclose(a.boxes, b.boxes, atol=0.1)


def test_dynamic_input_size_comes_from_imgsz(tmp_path: Path, ultralytics_model_path: Path) -> None:
    model = onnx.load(str(ultralytics_model_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    path = tmp_path / "dynamic_hw.onnx"
    onnx.save(model, str(path))
    detector = OnnxRuntimeDetector(EngineConfig(model_path=path))
    assert detector.input_size == (416, 416)


def test_limits_and_class_name_override(
    yolox_model_path: Path, photos: dict[str, np.ndarray]
) -> None:
    names = tuple(f"thing{i}" for i in range(80))
    config = EngineConfig(
        model_path=yolox_model_path, score_threshold=0.25, max_detections=1, class_names=names
    )
    detector = create_detector(config)
    assert detector.class_names == names
    assert len(detector.detect([photos["coffee"]])[0]) == 1
    strict = create_detector(EngineConfig(model_path=yolox_model_path, score_threshold=0.95))
    assert len(strict.detect([photos["coffee"]])[0]) == 0
    with pytest.raises(ConfigError, match="3 class names given, but the model has 80"):
        create_detector(EngineConfig(model_path=yolox_model_path, class_names=("a", "b", "c")))


def test_closed_detector_refuses_to_run(yolox_model_path: Path) -> None:
    detector = create_detector(EngineConfig(model_path=yolox_model_path))
    detector.close()
    with pytest.raises(EngineError, match="closed"):
        detector.detect([np.zeros((64, 64, 3), np.uint8)])


def test_missing_and_corrupt_models(tmp_path: Path, yolox_model_path: Path) -> None:
    with pytest.raises(EngineError, match=r"model file not found.*--model PATH"):
        create_detector(EngineConfig(model_path=tmp_path / "missing.onnx"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(yolox_model_path.read_bytes()[:100_000])  # a truncated download
    with pytest.raises(EngineError, match=r"cannot load .*corrupt\.onnx as an ONNX model"):
        create_detector(EngineConfig(model_path=corrupt))
    text = tmp_path / "text.onnx"
    text.write_text("hello")
    with pytest.raises(EngineError, match="not ONNX"):
        create_detector(EngineConfig(model_path=text))


def test_non_image_model_is_refused(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "identity.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError, match=r"not \(batch, 3, height, width\)"):
        create_detector(EngineConfig(model_path=path))


def test_factory_names(yolox_model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="unknown engine backend 'tensorflow'"):
        create_detector(EngineConfig(model_path=yolox_model_path, backend="tensorflow"))
    # Nothing listens on a just-freed port: the triton backend says how to reach one.
    unreachable = f"127.0.0.1:{free_port()}"
    with pytest.raises(EngineError, match="cannot reach the Triton server"):
        create_detector(
            EngineConfig(model_path=yolox_model_path, backend="triton", triton_url=unreachable)
        )
    with pytest.raises(EngineError, match=r"pip install 'shelf-stream\[gpu-cu12\]'"):
        create_detector(EngineConfig(model_path=yolox_model_path, backend="tensorrt"))
    with caplog.at_level(logging.INFO, logger="shelf_stream.engine"):
        detector = create_detector(EngineConfig(model_path=yolox_model_path, backend="auto"))
    assert isinstance(detector, OnnxRuntimeDetector)
    assert "backend auto: onnxruntime with the" in caplog.text
    assert set(BACKENDS) == {"auto", "onnxruntime", "tensorrt", "triton"}


def test_forced_adapter_and_unknown_adapter(yolox_model_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model adapter"):
        create_detector(EngineConfig(model_path=yolox_model_path, adapter="detr"))
    forced = create_detector(EngineConfig(model_path=yolox_model_path, adapter="yolox"))
    assert isinstance(forced, OnnxRuntimeDetector) and forced.adapter.name == "yolox"
