"""Video codecs by name: ``get_encoder(config)`` and ``get_decoder(codec)``.

Codec names: ``hevc`` (libx265 / decoder ``hevc``), ``h264`` (libx264 / decoder
``h264``) and ``jpeg_zlib`` (the seed system's JPEG+zlib baseline, for benchmarks).

An ``EncoderConfig.encoder`` of ``None`` or ``"auto"`` picks a hardware encoder that
really opens on this machine, else the software one (``codec.auto``); a name picks that
encoder.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Literal

import av

from shelf_stream.codec import auto
from shelf_stream.codec.base import (
    TIME_BASE,
    VIDEO_CODECS,
    Decoder,
    EncodedFrame,
    Encoder,
    EncoderConfig,
)
from shelf_stream.codec.recovery import DecodeResult, RecoveringDecoder
from shelf_stream.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "CODECS",
    "TIME_BASE",
    "VIDEO_CODECS",
    "DecodeResult",
    "Decoder",
    "EncodedFrame",
    "Encoder",
    "EncoderConfig",
    "RecoveringDecoder",
    "auto_encoder_choice",
    "available_decoders",
    "available_encoders",
    "get_decoder",
    "get_encoder",
]

#: Every codec name the factories accept.
CODECS = (*VIDEO_CODECS, "jpeg_zlib")

#: Default libavcodec decoder per video codec (encoders: ``codec.auto``).
_DEFAULT_DECODERS = {"hevc": "hevc", "h264": "h264"}


def _check_codec_name(codec: str) -> None:
    if codec not in CODECS:
        raise ConfigError(f"unknown codec {codec!r}; valid codecs: {', '.join(CODECS)}")


def _codec_id(name: str, mode: Literal["r", "w"]) -> int | None:
    try:
        return int(av.Codec(name, mode).id)
    except ValueError:  # av.codec.codec.UnknownCodecError
        return None


def available_encoders(codec: str) -> list[str]:
    """The libavcodec encoders of this PyAV build for a video codec, sorted by name.

    Listed encoders exist in the build; a hardware one may still fail to open.
    """
    _check_codec_name(codec)
    return _same_codec_names(codec, "w")


def available_decoders(codec: str) -> list[str]:
    """The libavcodec decoders of this PyAV build for a video codec, sorted by name."""
    _check_codec_name(codec)
    return _same_codec_names(codec, "r")


def _same_codec_names(codec: str, mode: Literal["r", "w"]) -> list[str]:
    if codec not in _DEFAULT_DECODERS:
        return []
    wanted = _codec_id(_DEFAULT_DECODERS[codec], "r")
    if wanted is None:
        return []
    return sorted(name for name in av.codecs_available if _codec_id(name, mode) == wanted)


def auto_encoder_choice(config: EncoderConfig) -> auto.EncoderChoice:
    """What ``--encoder auto`` uses for ``config.codec`` in this process (probed once)."""
    _check_codec_name(config.codec)
    return auto.CHOICES.get(config, available=available_encoders)


def _resolve_encoder_name(config: EncoderConfig) -> str:
    if auto.is_auto(config.encoder):
        return auto_encoder_choice(config).name
    name = str(config.encoder)
    if name not in available_encoders(config.codec):
        raise ConfigError(
            f"encoder {name!r} is not available for codec {config.codec!r} in this PyAV "
            f"build; available: {', '.join(available_encoders(config.codec)) or 'none'}"
        )
    return name


def _check_config(config: EncoderConfig) -> None:
    problems = []
    if config.width <= 0 or config.height <= 0:
        problems.append(f"size must be positive, got {config.width}x{config.height}")
    elif config.codec != "jpeg_zlib" and (config.width % 2 or config.height % 2):
        problems.append(f"yuv420p needs an even size, got {config.width}x{config.height}")
    if config.fps <= 0:
        problems.append(f"fps must be positive, got {config.fps}")
    if config.bitrate_kbps <= 0:
        problems.append(f"bitrate_kbps must be positive, got {config.bitrate_kbps}")
    if config.keyframe_interval_s <= 0:
        problems.append(f"keyframe_interval_s must be positive, got {config.keyframe_interval_s}")
    if config.threads < 0:
        problems.append(f"threads must be >= 0, got {config.threads}")
    if problems:
        raise ConfigError("bad encoder settings: " + "; ".join(problems))


def faster_preset(config: EncoderConfig) -> str | None:
    """A faster real-time preset than ``config``'s, for an encoder that cannot keep up.

    Only where this module picks the preset (``config.preset`` None) of an encoder it knows
    (libx265, libx264); None otherwise, and for an unknown or unavailable encoder.
    """
    if config.preset is not None or config.codec == "jpeg_zlib":
        return None
    try:
        name = _resolve_encoder_name(config)
    except ConfigError:
        return None
    from shelf_stream.codec.pyav import FASTER_PRESETS

    return FASTER_PRESETS.get(name)


def get_encoder(config: EncoderConfig) -> Encoder:
    """An open encoder for ``config``; ``ConfigError`` for bad settings or names."""
    _check_codec_name(config.codec)
    _check_config(config)
    if config.codec == "jpeg_zlib":
        from shelf_stream.codec.jpeg_zlib import JpegZlibEncoder

        return JpegZlibEncoder(config)
    from shelf_stream.codec.pyav import PyAVEncoder

    name = _resolve_encoder_name(config)
    if not auto.is_auto(config.encoder) or name == auto.SOFTWARE_ENCODERS[config.codec]:
        return PyAVEncoder(config, name)
    try:
        return PyAVEncoder(config, name)
    except ConfigError as exc:
        # The hardware encoder opened for the probe's settings but not for these (a size
        # or rate outside its limits): this stream still runs, in software.
        software = auto.SOFTWARE_ENCODERS[config.codec]
        log.warning("%s; using %s for %dx%d", exc, software, config.width, config.height)
        return PyAVEncoder(replace(config, encoder=software), software)


def get_decoder(codec: str, *, decoder: str | None = None, threads: int = 1) -> Decoder:
    """An open decoder for ``codec``; ``decoder`` overrides the libavcodec decoder name."""
    _check_codec_name(codec)
    if threads < 0:
        raise ConfigError(f"decoder threads must be >= 0, got {threads}")
    if codec == "jpeg_zlib":
        from shelf_stream.codec.jpeg_zlib import JpegZlibDecoder

        return JpegZlibDecoder()
    from shelf_stream.codec.pyav import PyAVDecoder

    name = decoder or _DEFAULT_DECODERS[codec]
    if decoder is not None and name not in available_decoders(codec):
        raise ConfigError(
            f"decoder {name!r} is not available for codec {codec!r} in this PyAV build; "
            f"available: {', '.join(available_decoders(codec)) or 'none'}"
        )
    return PyAVDecoder(codec, decoder=name, threads=threads)
