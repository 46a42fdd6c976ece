"""RTSP inputs without a camera: URLs on the command line, and credentials kept out of
what the client says (the real camera is in ``tests/rtsp``)."""

from __future__ import annotations

import pytest

from shelf_stream.cli import _source_spec, build_parser
from shelf_stream.client.app import ClientConfig
from shelf_stream.client.rtsp import RtspConfig, RtspTransport, is_rtsp_url, redact_url
from shelf_stream.client.sources import SourceSpec
from shelf_stream.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:secret@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("rtsps://cam.example/live?token=abc", "rtsps://cam.example/live?***"),
        ("rtsp://user@host/a/b", "rtsp://***@host/a/b"),
        # An unescaped @ in the password: everything up to the last @ is credentials.
        ("rtsp://u:p@ss@host:8554/cam", "rtsp://***@host:8554/cam"),
        ("rtsp://host/cam", "rtsp://host/cam"),
    ],
)
def test_redacted_urls_keep_only_where(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_rtsp_urls_are_told_from_paths() -> None:
    assert is_rtsp_url("rtsp://h/x") and is_rtsp_url("RTSPS://h/x")
    assert not is_rtsp_url("clip.mp4") and not is_rtsp_url("/tmp/rtsp:/x.mp4")


def _spec(*argv: str) -> object:
    return _source_spec(build_parser().parse_args(["send", *argv]))


def test_input_takes_a_camera_url() -> None:
    spec = _spec(
        "--input", "rtsp://u:p@cam/live", "--rtsp-transport", "udp", "--reconnect-limit", "30"
    )
    assert spec.kind == "rtsp"  # type: ignore[attr-defined]
    rtsp = spec.rtsp  # type: ignore[attr-defined]
    assert rtsp.url == "rtsp://u:p@cam/live" and rtsp.transport is RtspTransport.UDP
    assert rtsp.reconnect.give_up_s == 30
    assert _spec("--input", "rtsp://cam/live", "--reconnect-limit", "0").rtsp.reconnect is None  # type: ignore[attr-defined]


def test_input_still_takes_a_file() -> None:
    spec = _spec("--input", "clip.mp4", "--loop")
    assert spec.kind == "file" and str(spec.path) == "clip.mp4" and spec.loop  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "rtsp://cam/live", "--loop"], "--loop is for video files"),
        (["--input", "clip.mp4", "--reencode"], "--reencode is for IP cameras"),
    ],
)
def test_options_that_do_not_fit_the_input_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _spec(*argv)


def test_a_config_never_shows_the_camera_url() -> None:
    url = "rtsp://admin:hunter2@cam/live"
    config = ClientConfig(url="ws://h:1", source=SourceSpec(kind="rtsp", rtsp=RtspConfig(url=url)))
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.source)
