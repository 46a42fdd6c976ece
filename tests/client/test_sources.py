"""Frame sources: the demo scene, files, test patterns, camera argument mapping."""

from __future__ import annotations

import itertools
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from shelf_stream.client import sources
from shelf_stream.client.sources import (
    SCENE_PHOTOS,
    CameraSource,
    FileSource,
    SceneSource,
    SourceSpec,
    TestPatternSource,
    camera_open_args,
    open_source,
    scene_subject,
)
from shelf_stream.errors import ConfigError

NONE = av.video.frame.PictureType.NONE


def _luma(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="gray").astype(np.int16)


def _read_all(source: sources.FrameSource, limit: int = 1000) -> list[av.VideoFrame]:
    frames: list[av.VideoFrame] = []
    while len(frames) < limit and (frame := source.read()) is not None:
        frames.append(frame)
    return frames


# ------------------------------------------------------------------------------- scene


@pytest.mark.parametrize(("width", "height"), [(640, 480), (1280, 720), (320, 240)])
def test_scene_frames_have_the_asked_size_and_format(width: int, height: int) -> None:
    with SceneSource(width, height, 30.0, seconds=0.1) as scene:
        frames = _read_all(scene)
    assert len(frames) == 3
    for frame in frames:
        assert (frame.width, frame.height, frame.format.name) == (width, height, "yuv420p")
        assert frame.pict_type == NONE
    assert not scene.live and scene.fps == 30.0


def test_scene_moves_smoothly() -> None:
    scene = SceneSource(320, 240, 30.0)
    lumas = [_luma(scene.render(i)) for i in range(0, 60)]
    diffs = [float(np.abs(a - b).mean()) for a, b in itertools.pairwise(lumas)]
    assert min(diffs) > 0.3  # the camera never stands still
    assert max(diffs) < 25  # ...but one frame is a small step, not a cut
    far = float(np.abs(lumas[0] - _luma(scene.render(150))).mean())
    assert far > 2 * float(np.median(diffs))  # five seconds later it shows something else


def test_scene_frames_are_deterministic_and_fresh() -> None:
    a, b = SceneSource(320, 240, 30.0), SceneSource(320, 240, 30.0)
    first, again = a.render(42), b.render(42)
    np.testing.assert_array_equal(first.to_ndarray(), again.to_ndarray())
    assert first is not a.render(42)
    # read() walks the same indices as render()
    first_read = a.read()
    assert first_read is not None
    np.testing.assert_array_equal(first_read.to_ndarray(), b.render(0).to_ndarray())


def test_scene_visits_every_photo_on_a_lap() -> None:
    subjects = [scene_subject(t / 10, 1280, 720) for t in range(0, 120)]
    assert subjects[0] == "person"
    assert set(subjects) == {photo[1] for photo in SCENE_PHOTOS}
    assert len(set(subjects[:60])) >= 2  # several objects within six seconds
    # Each visit is a dwell of over a second, not a flicker.
    runs = [s for i, s in enumerate(subjects) if i == 0 or subjects[i - 1] != s]
    assert len(runs) <= 5


def test_scene_keeps_objects_large() -> None:
    scene = SceneSource(1280, 720, 30.0)
    for index in range(0, 360, 7):
        x, y, w, h = scene.window(index)
        # at most ~1.3 photo cells high: an object fills much of a 416x416 model input
        assert 400 <= h <= 640 and w == pytest.approx(h * 16 / 9, abs=1)
        assert x >= 0 and y >= 0


def test_scene_finite_length_and_validation() -> None:
    assert len(_read_all(SceneSource(64, 48, 10.0, seconds=1.26))) == 13
    with pytest.raises(ConfigError):
        SceneSource(641, 480)
    with pytest.raises(ConfigError):
        SceneSource(640, 480, 0.0)
    with pytest.raises(ConfigError):
        SceneSource(640, 480, seconds=0)


def test_scene_without_scikit_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    sources.scene_canvas.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install 'shelf-stream\[demo\]'"):
            SceneSource()
    finally:
        monkeypatch.undo()
        sources.scene_canvas.cache_clear()


# -------------------------------------------------------------------------------- file


def _write_clip(path: Path, frames: int = 20, codec: str = "mpeg4") -> Path:
    with (
        av.open(f"testsrc2=size=160x120:rate=10:duration={frames / 10}", format="lavfi") as src,
        av.open(str(path), "w") as out,
    ):
        stream = out.add_stream(codec, rate=10)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for frame in src.decode(video=0):
            frame.pict_type = NONE
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


def test_file_reads_every_frame(clip: Path) -> None:
    with FileSource(clip) as source:
        assert (source.width, source.height, source.live) == (160, 120, False)
        assert source.fps == pytest.approx(10.0)
        frames = _read_all(source)
        assert source.read() is None
    assert len(frames) == 20
    assert all(f.pict_type == NONE and (f.width, f.height) == (160, 120) for f in frames)
    assert len({id(f) for f in frames}) == 20


def test_file_loops(clip: Path) -> None:
    with FileSource(clip, loop=True) as source:
        frames = _read_all(source, limit=45)
    assert len(frames) == 45
    np.testing.assert_array_equal(frames[0].to_ndarray(), frames[20].to_ndarray())
    np.testing.assert_array_equal(frames[3].to_ndarray(), frames[43].to_ndarray())


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        FileSource(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 10)
    with pytest.raises(ConfigError, match="cannot read"):
        FileSource(junk)
    with pytest.raises(ConfigError, match="directory"):
        FileSource(tmp_path)


def test_file_without_video(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with (
        av.open("sine=frequency=440:duration=0.1", format="lavfi") as src,
        av.open(str(path), "w") as out,
    ):
        stream = out.add_stream("pcm_s16le", rate=44100)
        assert isinstance(stream, av.AudioStream)
        for frame in src.decode(audio=0):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(ConfigError, match="no video stream"):
        FileSource(path)


# ---------------------------------------------------------------------------- testsrc


def test_test_pattern() -> None:
    with TestPatternSource(160, 120, 25.0, seconds=0.4) as source:
        frames = _read_all(source)
    assert len(frames) == 10
    assert all((f.width, f.height, f.pict_type) == (160, 120, NONE) for f in frames)
    assert not np.array_equal(frames[0].to_ndarray(), frames[5].to_ndarray())


def test_test_pattern_errors() -> None:
    with pytest.raises(ConfigError, match="test pattern"):
        TestPatternSource(160, 120, 25.0, pattern="no_such_source")
    with pytest.raises(ConfigError):
        TestPatternSource(160, 120, -1.0)


# ----------------------------------------------------------------------------- camera


@pytest.mark.parametrize(
    ("device", "kwargs", "platform", "expected"),
    [
        (0, {}, "linux", ("v4l2", "/dev/video0", {})),
        ("2", {"fps": 30.0}, "linux", ("v4l2", "/dev/video2", {"framerate": "30"})),
        (
            "/dev/video4",
            {"width": 640, "height": 480},
            "linux",
            ("v4l2", "/dev/video4", {"video_size": "640x480"}),
        ),
        (
            1,
            {"width": 1280, "height": 720, "fps": 29.97},
            "linux",
            (
                "v4l2",
                "/dev/video1",
                {"video_size": "1280x720", "framerate": "2997/100", "input_format": "mjpeg"},
            ),
        ),
        (0, {}, "darwin", ("avfoundation", "0:none", {"framerate": "30"})),
        (
            "FaceTime HD Camera",
            {"width": 1280, "height": 720, "fps": 15},
            "darwin",
            (
                "avfoundation",
                "FaceTime HD Camera:none",
                {"video_size": "1280x720", "framerate": "15"},
            ),
        ),
        ("1:0", {}, "darwin", ("avfoundation", "1:0", {"framerate": "30"})),
        ("USB Camera", {}, "win32", ("dshow", "video=USB Camera", {})),
        (
            "video=USB Camera",
            {"fps": 30000 / 1001},
            "win32",
            ("dshow", "video=USB Camera", {"framerate": "30000/1001"}),
        ),
    ],
)
def test_camera_open_args(
    device: str | int,
    kwargs: dict[str, float],
    platform: str,
    expected: tuple[str, str, dict[str, str]],
) -> None:
    assert camera_open_args(device, platform=platform, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("device", "kwargs", "platform", "match"),
    [
        (0, {}, "win32", "by name"),
        ("video0", {}, "linux", "/dev/videoN"),
        ("", {}, "linux", "empty"),
        (0, {"width": 640}, "linux", "both"),
        (0, {"width": 0, "height": 480}, "linux", "size"),
        (0, {"fps": -5}, "darwin", "rate"),
        (0, {}, "sunos5", "platform"),
    ],
)
def test_camera_open_args_errors(
    device: str | int, kwargs: dict[str, int], platform: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        camera_open_args(device, platform=platform, **kwargs)


def test_missing_camera_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.sys, "platform", "linux")
    with pytest.raises(ConfigError, match=r"/dev/video63.*no such device"):
        CameraSource(63)


def test_camera_rate_text_is_exact() -> None:
    assert Fraction(sources._rate_text(29.97)) == Fraction(2997, 100)
    assert sources._rate_text(30000 / 1001) == "30000/1001"


# ---------------------------------------------------------------------------- factory


def test_open_source(clip: Path) -> None:
    with open_source(SourceSpec("scene", width=320, height=240, fps=15, seconds=1)) as s:
        assert isinstance(s, SceneSource) and (s.width, s.height, s.fps) == (320, 240, 15.0)
        assert len(_read_all(s)) == 15
    with open_source(SourceSpec("testsrc", seconds=0.1)) as s:
        assert isinstance(s, TestPatternSource) and (s.width, s.height) == (640, 480)
    with open_source(SourceSpec("file", path=clip, loop=True)) as s:
        assert isinstance(s, FileSource) and s.loop


@pytest.mark.parametrize(
    "spec",
    [
        SourceSpec("file"),
        SourceSpec("nonsense"),  # type: ignore[arg-type]
        SourceSpec("scene", width=-2),
        SourceSpec("testsrc", fps=1000),
        pytest.param(
            SourceSpec("camera", camera="/dev/video-none-such"),
            marks=pytest.mark.skipif(not sys.platform.startswith("linux"), reason="v4l2 only"),
        ),
    ],
)
def test_bad_specs(spec: SourceSpec) -> None:
    with pytest.raises(ConfigError):
        open_source(spec)


def _write_bogus_rate_clip(path: Path) -> Path:
    """An MP4 whose frames were muxed 0.4 ms apart: its container claims about 839 fps."""
    with (
        av.open("testsrc2=size=160x120:rate=25:duration=1", format="lavfi") as src,
        av.open(str(path), "w") as out,
    ):
        stream = out.add_stream("mpeg4", rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 10_000)
        for index, frame in enumerate(src.decode(video=0)):
            frame.pts, frame.time_base, frame.pict_type = index * 4, Fraction(1, 10_000), NONE
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_a_file_with_an_implausible_rate_falls_back_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write_bogus_rate_clip(tmp_path / "bogus.mp4")
    with caplog.at_level("WARNING"), FileSource(path) as source:
        assert source.fps is None, "neither the container's nor the codec's rate is believed"
        assert source.timed
        frames = _read_all(source)
    assert len(frames) == 25
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "not plausible" in warnings[0] and "--fps, or 30" in warnings[0]


def test_a_looped_file_keeps_its_time_running(clip: Path) -> None:
    with FileSource(clip, loop=True) as source:
        times = [f.time for f in _read_all(source, limit=45)]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert times[20] - times[19] == pytest.approx(0.1)
