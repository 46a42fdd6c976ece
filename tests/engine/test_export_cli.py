"""``shelf-stream export``: argument handling and the Ultralytics export (with a fake
``YOLO``); the engine build itself is covered with a fake TensorRT in test_trt_cache."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest

from shelf_stream.engine import trt_build as tb
from shelf_stream.engine.export_cli import (
    add_export_parser,
    build_options_from_args,
    export_ultralytics,
    run_export,
)
from shelf_stream.errors import ConfigError, EngineError


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shelf-stream")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["export", *argv])


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx")
    return path


def test_parser_defaults(onnx_file: Path) -> None:
    args = _parse("--onnx", str(onnx_file), "--engine", "out.engine")
    assert args.onnx == onnx_file and args.engine == Path("out.engine")
    options = build_options_from_args(args)
    assert options == tb.BuildOptions()
    assert options.batch == tb.DEFAULT_BATCH and options.workspace_mb == tb.DEFAULT_WORKSPACE_MB


def test_full_option_set(onnx_file: Path, tmp_path: Path) -> None:
    args = _parse(
        "--onnx", str(onnx_file), "--engine", "e", "--fp16", "--int8", "--calib", str(tmp_path),
        "--batch", "1:4:16", "--workspace-mb", "512",
    )  # fmt: skip
    options = build_options_from_args(args)
    assert options.precisions() == ("fp16", "int8")
    assert options.batch == (1, 4, 16) and options.workspace_mb == 512
    assert options.calib_dir == tmp_path


def test_onnx_and_weights_are_exclusive_and_one_is_required() -> None:
    with pytest.raises(SystemExit):
        _parse("--onnx", "a.onnx", "--weights", "a.pt")
    with pytest.raises(SystemExit):
        _parse("--engine", "e")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1:4:8", (1, 4, 8)), ("8", (1, 8, 8)), ("2:2:2", (2, 2, 2))],
)
def test_parse_batch(text: str, expected: tuple[int, int, int]) -> None:
    assert tb.parse_batch(text) == expected


@pytest.mark.parametrize("text", ["1:8", "a:b:c", "0:1:2", "4:2:8", "1:9:8", "", "1::8"])
def test_bad_batches_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--batch"):
        tb.parse_batch(text)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8"], "--int8 needs calibration images"),
        (["--fp16", "--calib", "."], "--calib is only used with --int8 or --best"),
        (["--int8", "--calib", "/no/such/dir"], "calibration directory not found"),
        (["--batch", "8:1:1"], "--batch 8:1:1"),
        (["--workspace-mb", "0"], "workspace must be positive"),
    ],
)
def test_invalid_engine_options(onnx_file: Path, extra: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_export(_parse("--onnx", str(onnx_file), "--engine", "e", *extra))


def test_onnx_needs_engine_and_an_existing_file(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--onnx needs --engine"):
        run_export(_parse("--onnx", str(onnx_file)))
    with pytest.raises(ConfigError, match="ONNX model not found"):
        run_export(_parse("--onnx", str(tmp_path / "missing.onnx"), "--engine", "e"))
    with pytest.raises(ConfigError, match=r"give --engine .* or --out .*, not both"):
        run_export(_parse("--onnx", str(onnx_file), "--engine", "e", "--out", "x.onnx"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --fp16 or --int8 --calib DIR"),
        (["--fp16", "--int8"], "give --fp16 or --int8 --calib DIR"),
        (["--int8"], "--int8 needs calibration images"),
        (["--fp16", "--best"], "--best only apply to an engine build"),
        (["--fp16", "--batch", "1:2:4"], "--batch only apply to an engine build"),
    ],
)
def test_graph_export_options(onnx_file: Path, extra: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_export(_parse("--onnx", str(onnx_file), "--out", "g.onnx", *extra))


def test_graph_export_writes_the_converted_graph(
    yolox_model_path: Path,
    precision_frames: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # For a strongly typed build elsewhere (TensorRT 11's trtexec, a Triton plan).
    import onnx
    from onnx import TensorProto

    out = tmp_path / "fp16.onnx"
    assert run_export(_parse("--onnx", str(yolox_model_path), "--fp16", "--out", str(out))) == 0
    assert any(i.data_type == TensorProto.FLOAT16 for i in onnx.load(str(out)).graph.initializer)
    assert f"wrote {out}: fp16 graph by onnxconverter-common" in capsys.readouterr().out
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(sorted(precision_frames.glob("calib-*.jpg"))[0], calib)
    int8 = tmp_path / "int8.onnx"
    argv = ["--onnx", str(yolox_model_path), "--int8", "--calib", str(calib), "--out", str(int8)]
    assert run_export(_parse(*argv)) == 0
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "int8 graph by onnxruntime" in capsys.readouterr().out


def test_best_without_calib_is_allowed() -> None:
    args = _parse("--onnx", "m.onnx", "--engine", "e", "--best")
    assert build_options_from_args(args).precisions() == ("bf16", "fp16")


def test_engine_build_without_tensorrt_names_the_fix(
    yolox_model_path: Path, tmp_path: Path
) -> None:
    args = _parse("--onnx", str(yolox_model_path), "--engine", str(tmp_path / "e.engine"))
    with pytest.raises(EngineError, match=r"pip install 'shelf-stream\[gpu-cu12\]'"):
        run_export(args)


def test_weights_options_are_checked(tmp_path: Path) -> None:
    weights = tmp_path / "yolo11n.pt"
    weights.write_bytes(b"pt")
    with pytest.raises(ConfigError, match="--engine, --fp16 only apply to --onnx"):
        run_export(_parse("--weights", str(weights), "--fp16", "--engine", "e"))
    with pytest.raises(ConfigError, match="weights not found"):
        run_export(_parse("--weights", str(tmp_path / "none.pt")))
    with pytest.raises(ConfigError, match="multiple of 32"):
        run_export(_parse("--weights", str(weights), "--imgsz", "500"))


def test_weights_without_ultralytics_names_the_extra(tmp_path: Path) -> None:
    weights = tmp_path / "yolo11n.pt"
    weights.write_bytes(b"pt")
    with pytest.raises(ConfigError, match=r"pip install 'shelf-stream\[export\]'"):
        run_export(_parse("--weights", str(weights)))


class _FakeYOLO:
    """Ultralytics' ``YOLO``: export() writes the ONNX next to the weights."""

    calls: ClassVar[list[dict[str, Any]]] = []
    source: Path
    task = "detect"

    def __init__(self, weights: str) -> None:
        self.weights = Path(weights)

    def export(self, **kwargs: Any) -> str:
        _FakeYOLO.calls.append(kwargs)
        out = self.weights.with_suffix(".onnx")
        shutil.copy(_FakeYOLO.source, out)
        return str(out)


def test_export_ultralytics_keeps_names_and_moves_the_file(
    ultralytics_model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _FakeYOLO.source = ultralytics_model_path
    _FakeYOLO.calls = []
    weights = tmp_path / "yolo11n.pt"
    weights.write_bytes(b"pt")
    out = export_ultralytics(weights, imgsz=416, out=tmp_path / "onnx" / "m.onnx", yolo=_FakeYOLO)
    assert out == tmp_path / "onnx" / "m.onnx" and out.is_file()
    assert _FakeYOLO.calls == [{"format": "onnx", "imgsz": 416, "dynamic": True, "simplify": True}]
    metadata = tb.onnx_metadata(out)
    assert "names" in metadata and "imgsz" in metadata
    assert "no names" not in caplog.text


def test_export_ultralytics_refuses_other_tasks(tmp_path: Path) -> None:
    class Segmenter(_FakeYOLO):
        task = "segment"

    with pytest.raises(ConfigError, match="'segment' model"):
        export_ultralytics(tmp_path / "seg.pt", yolo=Segmenter)
