"""Choosing codecs by name, and what a bad name or setting says."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from shelf_stream.codec import (
    CODECS,
    EncoderConfig,
    auto_encoder_choice,
    available_decoders,
    available_encoders,
    get_decoder,
    get_encoder,
)
from shelf_stream.codec.pyav import PyAVDecoder, PyAVEncoder
from shelf_stream.errors import ConfigError


def test_codec_names() -> None:
    assert CODECS == ("hevc", "h264", "jpeg_zlib")


@pytest.mark.parametrize(("codec", "encoder"), [("hevc", "libx265"), ("h264", "libx264")])
def test_default_encoders_and_decoders(codec: str, encoder: str) -> None:
    config = EncoderConfig(codec=codec, width=64, height=48)
    enc = get_encoder(config)
    assert isinstance(enc, PyAVEncoder)
    # The default is ``auto``: a hardware encoder that opens here, else the software one
    # (tests/codec/test_auto.py).
    choice = auto_encoder_choice(config)
    assert enc.encoder_name == choice.name
    assert choice.hardware or choice.name == encoder
    dec = get_decoder(codec)
    assert isinstance(dec, PyAVDecoder)
    assert dec.decoder_name == codec
    assert encoder in available_encoders(codec)
    assert codec in available_decoders(codec)


def test_unknown_codec_lists_the_valid_names() -> None:
    for make in (
        lambda: get_encoder(EncoderConfig(codec="vp9")),
        lambda: get_decoder("vp9"),
    ):
        with pytest.raises(ConfigError, match="vp9") as info:
            make()
        assert all(name in str(info.value) for name in CODECS)


def test_encoder_of_another_codec_is_refused_with_the_alternatives() -> None:
    with pytest.raises(ConfigError, match="'libx264' is not available for codec 'hevc'") as info:
        get_encoder(EncoderConfig(codec="hevc", encoder="libx264"))
    assert "libx265" in str(info.value)


def test_nonexistent_encoder_and_decoder_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"no_such_enc.*libx264"):
        get_encoder(EncoderConfig(codec="h264", encoder="no_such_enc"))
    with pytest.raises(ConfigError, match="'h264' is not available for codec 'hevc'"):
        get_decoder("hevc", decoder="h264")


def test_encoder_override_is_used() -> None:
    enc = get_encoder(EncoderConfig(codec="h264", encoder="libx264", width=64, height=48))
    assert isinstance(enc, PyAVEncoder)
    assert enc.encoder_name == "libx264"


def test_encoder_that_cannot_open_is_a_config_error() -> None:
    # libx264rgb encodes H.264 but refuses yuv420p input: it exists, yet cannot open.
    if "libx264rgb" not in available_encoders("h264"):
        pytest.skip("this PyAV build has no libx264rgb")
    with pytest.raises(ConfigError, match="cannot open encoder 'libx264rgb'"):
        get_encoder(EncoderConfig(codec="h264", encoder="libx264rgb", width=64, height=48))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 0}, "size must be positive"),
        ({"width": 641}, "even size"),
        ({"fps": 0}, "fps"),
        ({"bitrate_kbps": -1}, "bitrate_kbps"),
        ({"keyframe_interval_s": 0}, "keyframe_interval_s"),
        ({"threads": -2}, "threads"),
        ({"preset": "warp-speed"}, "cannot open encoder 'libx265'"),
    ],
)
def test_bad_settings_are_config_errors(changes: dict[str, Any], message: str) -> None:
    bad = dataclasses.replace(EncoderConfig(codec="hevc", width=64, height=48), **changes)
    with pytest.raises(ConfigError, match=message):
        get_encoder(bad)


def test_bad_decoder_threads() -> None:
    with pytest.raises(ConfigError, match="threads"):
        get_decoder("hevc", threads=-1)


def test_set_bitrate_rejects_nonpositive() -> None:
    enc = get_encoder(EncoderConfig(codec="h264", width=64, height=48))
    with pytest.raises(ConfigError, match="positive"):
        enc.set_bitrate(0)


def test_faster_preset_only_where_the_module_picks_the_preset() -> None:
    from shelf_stream.codec import faster_preset

    assert faster_preset(EncoderConfig(codec="hevc")) == "ultrafast"
    assert faster_preset(EncoderConfig(codec="h264")) == "ultrafast"
    assert faster_preset(EncoderConfig(codec="hevc", preset="medium")) is None, "the user's"
    assert faster_preset(EncoderConfig(codec="jpeg_zlib")) is None
    assert faster_preset(EncoderConfig(codec="hevc", encoder="no_such_encoder")) is None
