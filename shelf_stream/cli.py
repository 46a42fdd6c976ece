"""Command line: ``shelf-stream serve|send|demo`` and ``shelf-bench``.

The CLI is the only place that reads options and (through ``engine.models``) the
environment; it builds the components' config dataclasses and passes them down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shelf_stream import __version__
from shelf_stream.errors import ConfigError, ShelfStreamError

log = logging.getLogger("shelf_stream")


# ----------------------------------------------------------------------- parsing


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, not {text!r}") from None
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"size {text} must be positive and even (4:2:0)")
    return width, height


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        help="ONNX model path (default: $SHELF_STREAM_MODEL, else the packaged YOLOX-Nano)",
    )
    group.add_argument(
        "--backend",
        default="onnxruntime",
        help="detector backend: auto, onnxruntime, tensorrt, triton (default: onnxruntime)",
    )
    group.add_argument(
        "--adapter", choices=["yolox", "ultralytics"], help="model format (default: detected)"
    )
    group.add_argument("--score-threshold", type=float, default=0.3)
    triton = parser.add_argument_group("triton (with --backend triton)")
    triton.add_argument("--triton-url", default="127.0.0.1:8001", help="Triton gRPC HOST:PORT")
    triton.add_argument("--triton-model", help="model name on Triton (default: --model's stem)")
    triton.add_argument(
        "--triton-shm", action="store_true",
        help="tensors via system shared memory (Triton on the same host/IPC namespace)",
    )  # fmt: skip
    group.add_argument(
        "--threads", type=int, default=0, help="inference threads (default 0: half the CPU cores)"
    )


def _add_stream_options(parser: argparse.ArgumentParser, *, default_duration: float | None) -> None:
    group = parser.add_argument_group("stream")
    group.add_argument("--size", type=parse_size, help="frame size WxH (default: the source's)")
    group.add_argument(
        "--fps", type=_positive_float, help="frame rate (default: the source's or 30)"
    )
    group.add_argument(
        "--bitrate",
        type=_positive_int,
        help="start at this kbit/s (default: what the probe finds the link holds; 1500 "
        "without a probe)",
    )
    group.add_argument(
        "--max-bitrate", type=_positive_int, default=8000, help="never above this kbit/s"
    )
    group.add_argument(
        "--no-probe", action="store_true", help="skip the RTT/throughput probe before streaming"
    )
    group.add_argument(
        "--no-adapt", action="store_true",
        help="keep bitrate, frame rate and size fixed (no adaptation to the link)",
    )  # fmt: skip
    group.add_argument("--codec", choices=["hevc", "h264"], default="hevc")
    group.add_argument(
        "--encoder",
        help="libavcodec encoder, e.g. hevc_nvenc, or auto (the default): the first hardware "
        "encoder that opens here, else libx265/libx264",
    )
    group.add_argument("--preset", help="encoder preset (default: superfast)")
    group.add_argument(
        "--roi", choices=["off", "on"], default=None,
        help="detection-guided regions of interest: finer quantisation where the server's "
        "boxes are, a bounded penalty on the background (default: "
        f"{_roi_default()})",
    )  # fmt: skip
    group.add_argument(
        "--roi-strength", type=_roi_strength, metavar="S",
        help="ROI quantiser offset for the objects, 0-1 (FFmpeg qoffset; x264/x265: x51 QP); "
        f"the background gets half, at most {_roi_background_cap():g} (default "
        f"{_roi_strength_default():g})",
    )  # fmt: skip
    group.add_argument(
        "--duration", type=_positive_float, default=default_duration, help="seconds to stream"
    )
    group.add_argument("--frames", type=_positive_int, help="stop after this many captured frames")
    group.add_argument("--results", type=Path, help="write one JSON line per frame here")
    group.add_argument("--save", type=Path, help="write an annotated MP4 here")
    group.add_argument("--json", type=Path, help="write the final summary as JSON here")
    group.add_argument("--no-status", action="store_true", help="no live status line")


def _roi_default() -> str:
    from shelf_stream.client.roi import RoiConfig

    return "on" if RoiConfig().enabled else "off"


def _roi_strength_default() -> float:
    from shelf_stream.client.roi import RoiConfig

    return RoiConfig().strength


def _roi_background_cap() -> float:
    from shelf_stream.client.roi import RoiConfig

    return RoiConfig().max_background_qoffset


def _roi_strength(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return value


def _roi_config(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from shelf_stream.client.roi import RoiConfig

    config = RoiConfig()
    if args.roi is not None:
        config = replace(config, enabled=args.roi == "on")
    if args.roi_strength is not None:
        config = replace(config, strength=args.roi_strength)
    return config


def build_parser() -> argparse.ArgumentParser:
    from shelf_stream.client.connection import ReconnectPolicy

    parser = argparse.ArgumentParser(
        prog="shelf-stream",
        description="Stream a camera as H.265 to a detection server and get boxes back by pts.",
    )
    parser.add_argument("--version", action="version", version=f"shelf-stream {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the detection server")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token", help="require this shared secret (or $SHELF_STREAM_TOKEN)")
    serve.add_argument("--max-streams", type=_positive_int, default=32)
    serve.add_argument("--max-streams-per-address", type=_positive_int, default=8)
    serve.add_argument(
        "--decoder", choices=["auto", "software", "nvdec"], default="auto",
        help="video decoder: NVDEC (NVIDIA GPUs) when available, else software",
    )  # fmt: skip
    serve.add_argument("--certfile", type=Path, help="TLS certificate (PEM): serve wss://")
    serve.add_argument("--keyfile", type=Path, help="TLS private key (PEM)")
    serve.add_argument(
        "--origin", action="append", dest="origins",
        help="allowed browser Origin (repeatable; default: any)",
    )  # fmt: skip
    serve.add_argument(
        "--codecs", default="hevc,h264",
        help="codecs clients may stream (default hevc,h264; add jpeg_zlib for the seed baseline)",
    )  # fmt: skip
    serve.add_argument(
        "--max-frame-age-ms", type=_positive_float, default=500.0,
        help="answer frames older than this as dropped instead of running them late",
    )  # fmt: skip
    serve.add_argument(
        "--max-batch", type=_positive_int, default=1,
        help="run the newest frames of up to this many streams in one inference (default 1)",
    )  # fmt: skip
    serve.add_argument(
        "--batch-wait-ms", type=float, default=2.0,
        help="wait at most this long for a fuller batch (default 2)",
    )  # fmt: skip
    _add_model_options(serve)

    send = sub.add_parser("send", help="stream a camera, file or generated scene to a server")
    send.add_argument("--url", default="ws://127.0.0.1:8765", help="server URL (ws://HOST:PORT)")
    source = send.add_mutually_exclusive_group(required=True)
    source.add_argument("--camera", help="capture device index or name (e.g. 0)")
    source.add_argument(
        "--input", metavar="FILE|URL",
        help="a video file, or an IP camera: rtsp://[user:password@]host[:port]/path (or rtsps://)",
    )  # fmt: skip
    source.add_argument("--source", choices=["scene", "testsrc"], help="generated footage")
    send.add_argument("--loop", action="store_true", help="loop --input forever")
    camera = send.add_argument_group("IP cameras (--input rtsp://...)")
    camera.add_argument(
        "--rtsp-transport", choices=["tcp", "udp"], default="tcp",
        help="RTP inside the RTSP connection (tcp, the default) or over UDP (packets lost on "
        "a busy network cost frames until the next keyframe)",
    )  # fmt: skip
    camera.add_argument(
        "--reencode", action="store_true",
        help="decode the camera and re-encode with the adaptation to the link, instead of "
        "passing its H.265/H.264 through as it is",
    )  # fmt: skip
    send.add_argument("--token", help="the server's shared secret (or $SHELF_STREAM_TOKEN)")
    send.add_argument("--cafile", type=Path, help="wss://: trust this CA certificate (PEM)")
    send.add_argument(
        "--reconnect-limit", type=float, default=ReconnectPolicy().give_up_s, metavar="SECONDS",
        help="after a lost connection, retry for this long, then end (default 300; 0: never)",
    )  # fmt: skip
    _add_stream_options(send, default_duration=None)

    demo = sub.add_parser(
        "demo", help="local end-to-end demo: server + client on generated footage"
    )
    _add_model_options(demo)
    _add_stream_options(demo, default_duration=6.0)

    from shelf_stream.engine.export_cli import add_export_parser

    add_export_parser(sub)
    return parser


# ---------------------------------------------------------------------- commands


def _engine_config(args: argparse.Namespace) -> Any:
    from shelf_stream.engine import EngineConfig
    from shelf_stream.engine.models import resolve_model

    if args.backend == "triton":
        # A gateway in front of Triton holds no model file: the name is enough.
        if not (args.model or args.triton_model):
            raise ConfigError("--backend triton needs --triton-model NAME (or --model)")
        model_path = Path(args.model or args.triton_model)
    else:
        model_path = resolve_model(args.model)
    return EngineConfig(
        model_path=model_path,
        backend=args.backend,
        adapter=args.adapter,
        score_threshold=args.score_threshold,
        intra_op_threads=args.threads,
        triton_url=args.triton_url,
        triton_model=args.triton_model,
        triton_shm=args.triton_shm,
    )


def _client_config(args: argparse.Namespace, url: str, source: Any, token: str | None) -> Any:
    from shelf_stream.client.adaptation import AdaptationConfig
    from shelf_stream.client.app import ClientConfig
    from shelf_stream.client.connection import ConnectionConfig, ReconnectPolicy

    for option, path in (("--results", args.results), ("--save", args.save), ("--json", args.json)):
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"{option} {path}: the folder {path.parent} does not exist")
    limit_s = getattr(args, "reconnect_limit", ReconnectPolicy().give_up_s)  # demo: none
    reconnect = ReconnectPolicy(give_up_s=limit_s) if limit_s > 0 else None
    width, height = args.size or (None, None)
    return ClientConfig(
        url=url,
        source=source,
        codec=args.codec,
        encoder=args.encoder,
        width=width,
        height=height,
        fps=args.fps,
        bitrate_kbps=args.bitrate,
        max_bitrate_kbps=args.max_bitrate,
        probe=not args.no_probe,
        adaptation=AdaptationConfig(enabled=not args.no_adapt),
        preset=args.preset,
        token=token,
        duration_s=args.duration,
        max_frames=args.frames,
        results_path=args.results,
        save_path=args.save,
        status=not args.no_status and sys.stderr.isatty(),
        reencode=getattr(args, "reencode", False),
        cafile=getattr(args, "cafile", None),
        connection=ConnectionConfig(reconnect=reconnect),
        roi=_roi_config(args),
    )


def _source_spec(args: argparse.Namespace) -> Any:
    from shelf_stream.client.sources import SourceSpec

    width, height = args.size or (None, None)
    if args.camera is not None:
        return SourceSpec(
            kind="camera", camera=args.camera, width=width, height=height, fps=args.fps
        )
    if args.input is not None:
        from shelf_stream.client.rtsp import is_rtsp_url

        if is_rtsp_url(args.input):
            return _camera_spec(args)
        if args.reencode:
            raise ConfigError("--reencode is for IP cameras (--input rtsp://...)")
        return SourceSpec(kind="file", path=Path(args.input), loop=args.loop)
    return SourceSpec(
        kind=args.source, width=width or 640, height=height or 480, fps=args.fps or 30.0
    )


def _camera_spec(args: argparse.Namespace) -> Any:
    from shelf_stream.client.connection import ReconnectPolicy
    from shelf_stream.client.rtsp import RtspConfig, RtspTransport
    from shelf_stream.client.sources import SourceSpec

    if args.loop:
        raise ConfigError("--loop is for video files; a camera streams until it is stopped")
    limit_s = args.reconnect_limit
    rtsp = RtspConfig(
        url=args.input,
        transport=RtspTransport(args.rtsp_transport),
        reconnect=ReconnectPolicy(give_up_s=limit_s) if limit_s > 0 else None,
    )
    return SourceSpec(kind="rtsp", rtsp=rtsp)


def _codecs(text: str) -> tuple[str, ...]:
    from shelf_stream.codec import CODECS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in CODECS]
    if unknown or not names:
        raise ConfigError(
            f"--codecs: unknown {', '.join(unknown)}; choose from {', '.join(CODECS)}"
        )
    return names


def cmd_serve(args: argparse.Namespace) -> int:
    from shelf_stream.engine import create_detector
    from shelf_stream.protocol import ServerLimits
    from shelf_stream.server import ServerConfig, run_server
    from shelf_stream.server.scheduler import SchedulerConfig

    for path in (args.certfile, args.keyfile):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS file not found: {path}")
    if args.keyfile is not None and args.certfile is None:
        raise ConfigError("--keyfile needs --certfile")
    engine_config = _engine_config(args)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        token=args.token or os.environ.get("SHELF_STREAM_TOKEN") or None,
        max_streams=args.max_streams,
        max_streams_per_address=args.max_streams_per_address,
        decoder=args.decoder,
        certfile=args.certfile,
        keyfile=args.keyfile,
        origins=tuple(args.origins) if args.origins else None,
        limits=ServerLimits(codecs=_codecs(args.codecs)),
        scheduler=SchedulerConfig(
            max_frame_age_ms=args.max_frame_age_ms,
            max_batch_size=args.max_batch,
            max_batch_wait_ms=args.batch_wait_ms,
        ),
    )
    asyncio.run(run_server(config, lambda: create_detector(engine_config)))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from shelf_stream.client.app import StreamClient
    from shelf_stream.client.stats import format_summary

    token = args.token or os.environ.get("SHELF_STREAM_TOKEN") or None
    client = StreamClient(_client_config(args, args.url, _source_spec(args), token))
    summary = _run_until_interrupted(_stop_on_sigint(client))
    print(format_summary(summary))
    _write_json(args.json, summary)
    return 0 if summary["results"] else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from shelf_stream.client.app import StreamClient
    from shelf_stream.client.sources import SourceSpec
    from shelf_stream.client.stats import format_summary
    from shelf_stream.engine import create_detector
    from shelf_stream.server import Server, ServerConfig

    engine_config = _engine_config(args)
    width, height = args.size or (640, 480)
    source = SourceSpec(kind="scene", width=width, height=height, fps=args.fps or 30.0)
    last_detections: list[Any] = []

    def keep_last(record: Any) -> None:
        if record.detections:
            last_detections[:] = list(record.detections)

    async def demo() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        detector = await loop.run_in_executor(None, create_detector, engine_config)
        try:
            async with Server(ServerConfig(host="127.0.0.1", port=0), detector) as server:
                config = _client_config(args, f"ws://127.0.0.1:{server.port}", source, None)
                client = StreamClient(config, on_record=keep_last)
                return await _stop_on_sigint(client)
        finally:
            detector.close()

    print(f"shelf-stream demo: {width}x{height} scene of real photos, {args.duration:g} s")
    summary = _run_until_interrupted(demo())
    print(format_summary(summary))
    if last_detections:
        print("last detections (label, score, box x1 y1 x2 y2 in frame pixels):")
        for d in last_detections:
            print(f"  {d.label:<12} {d.score:.2f}  [{d.x1:.0f} {d.y1:.0f} {d.x2:.0f} {d.y2:.0f}]")
    _write_json(args.json, summary)
    return 0 if summary["results"] else 1


async def _stop_on_sigint(client: Any) -> dict[str, Any]:
    """First Ctrl-C (or SIGTERM): finish gracefully (answers, summary). Second: abort."""
    loop = asyncio.get_running_loop()

    def first_interrupt() -> None:
        print("\nstopping: waiting for the last answers (Ctrl-C again to abort)", file=sys.stderr)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        client.request_stop()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, first_interrupt)
    summary: dict[str, Any] = await client.run()
    return summary


def _run_until_interrupted(coro: Any) -> dict[str, Any]:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _write_json(path: Path | None, summary: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps({"summary": summary}, indent=2) + "\n")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def main(argv: Sequence[str] | None = None) -> int:
    from shelf_stream import allocator

    # Before any thread allocates: a long stream keeps a flat RSS (``serve`` applies the
    # server's own bounds when it starts).
    allocator.bound_allocator(allocator.CLIENT_ARENAS, allocator.CLIENT_MMAP_THRESHOLD)
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    from shelf_stream.engine.export_cli import run_export

    commands = {"serve": cmd_serve, "send": cmd_send, "demo": cmd_demo, "export": run_export}
    try:
        return commands[args.command](args)
    except ShelfStreamError as error:
        # Our own errors carry the fix in their message: no traceback for the user.
        print(f"shelf-stream: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1


# ------------------------------------------------------------------------- bench


def build_bench_parser() -> argparse.ArgumentParser:
    """The ``shelf-bench`` command line (the benches are imported only when it is built)."""
    from shelf_stream.bench.codec import add_codec_parser
    from shelf_stream.bench.e2e import add_e2e_parser
    from shelf_stream.bench.fuzz import add_fuzz_parser
    from shelf_stream.bench.scale import add_scale_parser
    from shelf_stream.bench.soak import add_soak_parser

    parser = argparse.ArgumentParser(prog="shelf-bench", description="shelf-stream benchmarks")
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    loopback = sub.add_parser(
        "loopback", help="server and client in two processes on loopback, generated footage"
    )
    _add_model_options(loopback)
    _add_stream_options(loopback, default_duration=10.0)
    loopback.add_argument("--source", choices=["scene", "testsrc"], default="scene")
    add_codec_parser(sub)
    add_e2e_parser(sub)
    add_fuzz_parser(sub)
    add_soak_parser(sub)
    add_scale_parser(sub)
    return parser


def bench_main(argv: Sequence[str] | None = None) -> int:
    from shelf_stream.bench.codec import run_codec_bench
    from shelf_stream.bench.e2e import run_e2e_bench
    from shelf_stream.bench.fuzz import run_fuzz
    from shelf_stream.bench.scale import run_scale
    from shelf_stream.bench.soak import run_soak

    args = build_bench_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        if args.command == "codec":
            run_codec_bench(args)  # prints its own table; --json writes the summary
        elif args.command == "e2e":
            run_e2e_bench(args)  # prints its own table; --json writes the report
        elif args.command == "fuzz":
            if not run_fuzz(args)["ok"]:  # prints its own report; --json writes it
                return 1
        elif args.command == "soak":
            run_soak(args)  # prints its own report; --json writes it
        elif args.command == "scale":
            run_scale(args)  # prints its own report; --json writes it
        else:
            from shelf_stream.bench.loopback import run_loopback

            summary = run_loopback(args)
            with contextlib.suppress(BrokenPipeError):
                print(json.dumps(summary, indent=2))
            _write_json(args.json, summary)
    except ShelfStreamError as error:
        print(f"shelf-bench: error: {error}", file=sys.stderr)
        return 2
    return 0
