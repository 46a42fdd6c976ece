"""``--encoder auto``: a hardware encoder where one really works, else the software one.

A hardware encoder listed in the FFmpeg build may still be unusable (no GPU, no driver,
no permission, no such engine on this GPU: an H100 has NVDEC but no NVENC), and only
opening it tells. So each candidate is opened with the stream's own settings and made to
encode one frame; the first that does is used, else libx265 (libx264 for H.264). The
choice is made once per process and codec, and logged once. Software is the fallback, not
the first choice, because it spends the sender's CPU (see ``codec.pyav``'s figures).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import av
import numpy as np

from shelf_stream.codec.base import EncoderConfig
from shelf_stream.errors import CodecError, ConfigError

log = logging.getLogger(__name__)

#: What ``EncoderConfig.encoder`` (and ``--encoder``) may say to ask for this choice;
#: ``None`` means the same.
AUTO = "auto"

#: Tried in this order: the encoders FFmpeg offers for NVIDIA, Intel Quick Sync, VA-API
#: (Intel/AMD on Linux), Apple, Android and AMD (Windows).
HARDWARE_ENCODERS: dict[str, tuple[str, ...]] = {
    "hevc": (
        "hevc_nvenc", "hevc_qsv", "hevc_vaapi", "hevc_videotoolbox", "hevc_mediacodec",
        "hevc_amf",
    ),
    "h264": (
        "h264_nvenc", "h264_qsv", "h264_vaapi", "h264_videotoolbox", "h264_mediacodec",
        "h264_amf",
    ),
}  # fmt: skip
SOFTWARE_ENCODERS = {"hevc": "libx265", "h264": "libx264"}

#: A probe opens ``name`` with ``config`` and encodes a frame: ``None`` when that worked,
#: else why not (one line).
Probe = Callable[[str, EncoderConfig], "str | None"]


@dataclass(frozen=True, slots=True)
class EncoderChoice:
    """The encoder ``auto`` settled on for one codec, and why the others were passed over."""

    codec: str
    name: str
    hardware: bool
    passed_over: tuple[tuple[str, str], ...]  # (encoder, why it failed), in the order tried

    def describe(self) -> str:
        kind = "hardware" if self.hardware else "software"
        text = f"encoder auto ({self.codec}): {self.name} ({kind})"
        if self.passed_over:
            text += "; passed over: " + "; ".join(f"{n}: {why}" for n, why in self.passed_over)
        return text


def is_auto(encoder: str | None) -> bool:
    return encoder is None or encoder == AUTO


def _probe_frame(config: EncoderConfig) -> av.VideoFrame:
    # Mid-grey: any encoder accepts it, and its content does not matter for opening.
    planes = np.full((config.height * 3 // 2, config.width), 128, dtype=np.uint8)
    return av.VideoFrame.from_ndarray(planes, format="yuv420p")


def probe_encoder(name: str, config: EncoderConfig) -> str | None:
    """Open ``name`` with ``config`` and encode one frame: ``None`` if it worked, else why."""
    from shelf_stream.codec.pyav import PyAVEncoder

    try:
        encoder = PyAVEncoder(replace(config, encoder=name), name)
        try:
            encoder.encode(_probe_frame(config), 0, keyframe=True)
        finally:
            encoder.close()
    except (ConfigError, CodecError) as exc:
        return str(exc)
    return None


def choose_encoder(
    config: EncoderConfig,
    *,
    available: Callable[[str], list[str]],
    probe: Probe | None = None,
) -> EncoderChoice:
    """Try each hardware encoder for ``config.codec`` that ``available`` lists, in order.

    ``probe`` defaults to ``probe_encoder`` (looked up at the call, so tests can fake it).
    """
    probe = probe or probe_encoder
    listed = set(available(config.codec))
    passed_over: list[tuple[str, str]] = []
    for name in HARDWARE_ENCODERS.get(config.codec, ()):
        if name not in listed:
            continue  # not in this FFmpeg build: nothing to open
        reason = probe(name, config)
        if reason is None:
            return EncoderChoice(config.codec, name, True, tuple(passed_over))
        passed_over.append((name, reason))
    software = SOFTWARE_ENCODERS[config.codec]
    return EncoderChoice(config.codec, software, False, tuple(passed_over))


class ChoiceCache:
    """One choice per codec for the whole process (the probe opens devices: do it once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._choices: dict[str, EncoderChoice] = {}

    def get(
        self,
        config: EncoderConfig,
        *,
        available: Callable[[str], list[str]],
        probe: Probe | None = None,
    ) -> EncoderChoice:
        # Under the lock: two streams starting together probe once, not twice.
        with self._lock:
            choice = self._choices.get(config.codec)
            if choice is None:
                choice = choose_encoder(config, available=available, probe=probe)
                self._choices[config.codec] = choice
                log.info("%s", choice.describe())
            return choice

    def clear(self) -> None:
        with self._lock:
            self._choices.clear()


#: The process-wide cache ``codec.get_encoder`` uses.
CHOICES = ChoiceCache()
