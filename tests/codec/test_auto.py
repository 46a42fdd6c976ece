"""``--encoder auto``: hardware encoders probed once, the software one as the fallback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import av
import numpy as np
import pytest

from shelf_stream.codec import (
    EncoderConfig,
    auto_encoder_choice,
    available_encoders,
    get_decoder,
    get_encoder,
)
from shelf_stream.codec import auto as auto_module
from shelf_stream.codec.auto import HARDWARE_ENCODERS, EncoderChoice, choose_encoder
from shelf_stream.codec.pyav import PyAVEncoder, input_format

CONFIG = EncoderConfig(codec="hevc", width=64, height=48, fps=30.0, bitrate_kbps=300)


@pytest.fixture(autouse=True)
def fresh_choices() -> Iterator[None]:
    """Every test probes anew; the next user of the cache does too."""
    auto_module.CHOICES.clear()
    yield
    auto_module.CHOICES.clear()


class FakeProbe:
    """Opens only the encoders in ``opens``; counts what it was asked."""

    def __init__(self, opens: set[str]) -> None:
        self.opens = opens
        self.calls: list[tuple[str, EncoderConfig]] = []

    def __call__(self, name: str, config: EncoderConfig) -> str | None:
        self.calls.append((name, config))
        return None if name in self.opens else f"{name}: no such device"


def every_candidate(codec: str) -> list[str]:
    return [*HARDWARE_ENCODERS[codec], "libx265", "libx264"]


def frame(width: int = 64, height: int = 48) -> av.VideoFrame:
    y = np.tile(np.arange(width, dtype=np.uint8) * 3, (height, 1))
    chroma = np.full((height // 2, width), 128, np.uint8)
    return av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")


def test_no_hardware_encoder_opens_so_libx265_is_used() -> None:
    probe = FakeProbe(opens=set())
    choice = choose_encoder(CONFIG, available=every_candidate, probe=probe)
    assert choice == EncoderChoice(
        codec="hevc",
        name="libx265",
        hardware=False,
        passed_over=tuple((n, f"{n}: no such device") for n in HARDWARE_ENCODERS["hevc"]),
    )
    # Each was opened with the stream's own settings, in the documented order.
    assert [name for name, _ in probe.calls] == list(HARDWARE_ENCODERS["hevc"])
    assert all(config == CONFIG for _, config in probe.calls)


def test_the_first_hardware_encoder_that_opens_wins() -> None:
    probe = FakeProbe(opens={"hevc_qsv", "hevc_amf"})
    choice = choose_encoder(CONFIG, available=every_candidate, probe=probe)
    assert (choice.name, choice.hardware) == ("hevc_qsv", True)
    assert choice.passed_over == (("hevc_nvenc", "hevc_nvenc: no such device"),)
    assert [name for name, _ in probe.calls] == ["hevc_nvenc", "hevc_qsv"]  # stops there
    assert "hevc_qsv (hardware)" in choice.describe()


def test_encoders_missing_from_the_build_are_not_opened() -> None:
    probe = FakeProbe(opens={"hevc_vaapi"})
    only_some = ["hevc_vaapi", "libx265"]
    choice = choose_encoder(CONFIG, available=lambda codec: only_some, probe=probe)
    assert choice.name == "hevc_vaapi" and choice.passed_over == ()
    assert [name for name, _ in probe.calls] == ["hevc_vaapi"]


def test_the_choice_is_probed_once_per_process_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = FakeProbe(opens={"hevc_videotoolbox"})
    cache = auto_module.ChoiceCache()
    with caplog.at_level(logging.INFO, logger="shelf_stream.codec.auto"):
        first = cache.get(CONFIG, available=every_candidate, probe=probe)
        bigger = EncoderConfig(codec="hevc", width=1280, height=720)
        again = cache.get(bigger, available=every_candidate, probe=probe)
    assert first is again and first.name == "hevc_videotoolbox"
    assert len(probe.calls) == 4  # nvenc, qsv, vaapi, then videotoolbox: once
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [first.describe()]


def test_the_real_probe_on_this_machine_gives_an_encoder_that_works() -> None:
    choice = auto_encoder_choice(CONFIG)
    encoder = get_encoder(CONFIG)  # encoder=None: auto
    assert isinstance(encoder, PyAVEncoder)
    assert encoder.encoder_name == choice.name
    if choice.hardware:
        assert choice.name in HARDWARE_ENCODERS["hevc"]
    else:
        # The fallback: every hardware encoder of this build was tried and said why not.
        assert choice.name == "libx265"
        tried = [name for name, _ in choice.passed_over]
        assert tried == [n for n in HARDWARE_ENCODERS["hevc"] if n in available_encoders("hevc")]
        assert all(reason for _, reason in choice.passed_over)
    au = encoder.encode(frame(), 0, keyframe=True)
    decoded = get_decoder("hevc").decode(au.data, 0)
    assert len(decoded) == 1 and (decoded[0].width, decoded[0].height) == (64, 48)


def test_auto_by_name_is_the_same_as_no_name() -> None:
    assert auto_encoder_choice(CONFIG) is auto_encoder_choice(
        EncoderConfig(codec="hevc", encoder="auto", width=64, height=48)
    )
    encoder = get_encoder(EncoderConfig(codec="h264", encoder="auto", width=64, height=48))
    assert isinstance(encoder, PyAVEncoder)
    assert encoder.encoder_name == auto_encoder_choice(EncoderConfig(codec="h264")).name


def test_a_hardware_choice_that_fails_for_a_stream_falls_back_to_software(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The fake probe says hevc_qsv opened; opening it for real here fails (no Quick
    # Sync device), so this stream runs on libx265 and says so.
    if "hevc_qsv" not in available_encoders("hevc"):
        pytest.skip("this PyAV build has no hevc_qsv to fail opening")
    monkeypatch.setattr(auto_module, "probe_encoder", FakeProbe(opens={"hevc_qsv"}))
    with caplog.at_level(logging.WARNING, logger="shelf_stream.codec"):
        encoder = get_encoder(CONFIG)
    assert auto_encoder_choice(CONFIG).name == "hevc_qsv"
    assert isinstance(encoder, PyAVEncoder) and encoder.encoder_name == "libx265"
    assert any("using libx265 for 64x48" in r.getMessage() for r in caplog.records)
    assert len(encoder.encode(frame(), 0, keyframe=True).data) > 0


def test_quick_sync_is_fed_nv12_and_the_others_yuv420p() -> None:
    assert input_format("libx265") == "yuv420p"
    assert input_format("libx264") == "yuv420p"
    assert input_format("no_such_encoder") == "yuv420p"
    if "hevc_qsv" in available_encoders("hevc"):
        assert input_format("hevc_qsv") == "nv12"  # it lists nv12 and not yuv420p
