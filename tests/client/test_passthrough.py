"""Pass-through: access units shaped for the server (literal NAL units), and the worker
on a real camera recording (Annex-B, as FFmpeg's RTSP demuxer hands it out)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from shelf_stream.client.encoder_worker import (
    EncodedUnit,
    ForceKeyframe,
    FrameNotEncoded,
    Outbox,
    WorkerEnded,
)
from shelf_stream.client.matcher import ClientReason
from shelf_stream.client.passthrough import AccessUnitShaper, PassthroughWorker
from shelf_stream.client.rtsp import CameraSession, RtspConfig
from shelf_stream.codec import nal
from shelf_stream.errors import CodecError

CLIPS = Path(__file__).resolve().parent.parent / "data" / "rtsp"
SC = b"\x00\x00\x00\x01"

# HEVC NAL units: two header bytes (type << 1, temporal id 1), then a payload byte.
VPS, SPS, PPS = b"\x40\x01\x0c", b"\x42\x01\x01", b"\x44\x01\xc1"
AUD_HEVC, IDR, TRAIL = b"\x46\x01\x50", b"\x26\x01\xaf", b"\x02\x01\xd0"
# H.264: one header byte.
SPS_264, PPS_264, IDR_264, SLICE_264, AUD_264 = (
    b"\x67\x64",
    b"\x68\xee",
    b"\x65\x88",
    b"\x41\x9a",
    b"\x09\xf0",
)


def _au(*units: bytes) -> bytes:
    return b"".join(SC + unit for unit in units)


# ------------------------------------------------------------------------------ shaper


def test_keyframes_with_their_own_parameter_sets_pass_unchanged() -> None:
    shaper = AccessUnitShaper("hevc")
    keyframe = _au(VPS, SPS, PPS, IDR)
    shaped = shaper.shape(keyframe)
    assert (shaped.data, shaped.keyframe, shaped.parameter_sets_added) == (keyframe, True, False)
    assert shaper.shape(_au(TRAIL)).keyframe is False


def test_sdp_parameter_sets_go_before_a_bare_keyframe() -> None:
    shaper = AccessUnitShaper("hevc", extradata=_au(VPS, SPS, PPS))
    shaped = shaper.shape(_au(IDR))
    assert shaped.data == _au(VPS, SPS, PPS, IDR)
    assert shaped.parameter_sets_added and nal.has_parameter_sets("hevc", shaped.data)
    assert shaper.shape(_au(TRAIL)).data == _au(TRAIL), "other frames are left as they are"


def test_the_latest_in_band_sets_win_over_the_sdp() -> None:
    newer_sps = b"\x42\x01\x02"
    shaper = AccessUnitShaper("hevc", extradata=_au(VPS, SPS, PPS))
    shaper.shape(_au(VPS, newer_sps, PPS, IDR))
    assert shaper.shape(_au(IDR)).data == _au(VPS, newer_sps, PPS, IDR)


def test_an_access_unit_delimiter_stays_first() -> None:
    shaper = AccessUnitShaper(
        "h264", extradata=b"\x00\x00\x01" + SPS_264 + b"\x00\x00\x01" + PPS_264
    )
    shaped = shaper.shape(_au(AUD_264, IDR_264))
    assert shaped.data == _au(AUD_264, SPS_264, PPS_264, IDR_264)
    assert nal.nal_types("h264", shaped.data) == [9, 7, 8, 5]


def test_a_keyframe_without_any_parameter_sets_is_flagged() -> None:
    shaped = AccessUnitShaper("hevc").shape(_au(AUD_HEVC, IDR))
    assert shaped.keyframe and shaped.parameter_sets_missing and not shaped.parameter_sets_added


def test_packets_that_are_not_annex_b_are_refused() -> None:
    length_prefixed = len(IDR).to_bytes(4, "big") + IDR  # MP4/Matroska (hvcC) framing
    with pytest.raises(CodecError, match="not Annex-B"):
        AccessUnitShaper("hevc").shape(length_prefixed)
    with pytest.raises(CodecError, match="no pass-through"):
        AccessUnitShaper("mjpeg")


# ------------------------------------------------------------------------------ worker


def _annex_b_copy(clip: str, folder: Path) -> Path:
    """The clip remuxed to MPEG-TS: Annex-B packets, as a camera's come out of PyAV."""
    path = folder / (Path(clip).stem + ".ts")
    with av.open(str(CLIPS / clip)) as src, av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    return path


class _Run:
    """A worker on a recording, its outbox never read (a link that does not move)."""

    def __init__(self, path: Path, outbox_units: int, max_frames: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.outbox = Outbox(self.loop, outbox_units)
        self.not_sent: list[FrameNotEncoded] = []
        self._lock = threading.Lock()
        session = CameraSession(av.open(str(path)), "recording")
        self.worker = PassthroughWorker(
            RtspConfig(url="rtsp://recording", reconnect=None),
            session,
            self.outbox,
            on_not_sent=self._record,
            max_frames=max_frames,
        )

    def _record(self, item: FrameNotEncoded) -> None:
        with self._lock:
            self.not_sent.append(item)

    def drain(self) -> list[object]:
        items = []
        while (item := self.outbox.get_nowait()) is not None:
            items.append(item)
        return items

    def close(self) -> None:
        self.worker.abort()
        self.worker.join(5)
        self.loop.close()


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    return _annex_b_copy("bottles.hevc.mkv", tmp_path)


@pytest.fixture
def run_on(recording: Path) -> Iterator[list[_Run]]:
    runs: list[_Run] = []
    yield runs
    for run in runs:
        run.close()


def test_a_full_outbox_leaves_frames_out_until_the_next_keyframe(
    recording: Path, run_on: list[_Run], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "shelf_stream.client")
    run = _Run(recording, outbox_units=4, max_frames=40)
    run_on.append(run)
    # The outbox holds 4 and nobody reads it: the last item, WorkerEnded, waits for room.
    run.worker.start()
    deadline = time.monotonic() + 20
    while len(run.not_sent) < 36:  # 40 read, 4 in the outbox
        assert time.monotonic() < deadline, f"only {len(run.not_sent)} recorded"
        time.sleep(0.01)
    units = [item for item in run.drain() if isinstance(item, EncodedUnit)]
    assert run.worker.join(5)
    ended = [item for item in run.drain() if isinstance(item, WorkerEnded)]
    assert ended == [WorkerEnded(None)]
    reasons = [item.reason for item in run.not_sent]
    # Every access unit read comes out once: sent, or recorded with its reason.
    pts = [u.encoded.pts for u in units] + [item.captured.pts for item in run.not_sent]
    assert len(pts) == len(set(pts)) == 40
    assert [u.encoded.keyframe for u in units] == [True, False, False, False]
    assert reasons[0] is ClientReason.LINK_BEHIND
    assert set(reasons) == {ClientReason.LINK_BEHIND, ClientReason.AWAITING_CAMERA_KEYFRAME}
    # Only keyframes are retried (each fails again here): one LINK_BEHIND per GOP.
    behind = [item for item in run.not_sent if item.reason is ClientReason.LINK_BEHIND]
    assert len(behind) == 3  # frame 4, and the keyframes at 15 and 30
    assert all(u.encode_ms == 0.0 and u.captured.frame is None for u in units)
    warnings = [
        r.getMessage() for r in caplog.records if "slower than the camera" in r.getMessage()
    ]
    assert len(warnings) == 1, "said once"
    assert "--reencode" in warnings[0]


def test_keyframe_requests_are_explained_once(
    recording: Path, run_on: list[_Run], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "shelf_stream.client")
    run = _Run(recording, outbox_units=64, max_frames=20)
    run_on.append(run)
    for _ in range(3):
        run.worker.send(ForceKeyframe())
    run.worker.start()
    assert run.worker.join(10)
    said = [r for r in caplog.records if "cannot be asked for a keyframe" in r.getMessage()]
    assert len(said) == 1
    units = [item for item in run.drain() if isinstance(item, EncodedUnit)]
    assert len(units) == 20 and units[0].encoded.keyframe


def test_frames_out_of_order_end_the_stream_with_the_fix(tmp_path: Path) -> None:
    run = _Run(_annex_b_copy("bottles-bframes.hevc.mkv", tmp_path), outbox_units=64, max_frames=30)
    try:
        run.worker.start()
        assert run.worker.join(10)
        ended = [item for item in run.drain() if isinstance(item, WorkerEnded)]
        assert len(ended) == 1 and ended[0].error is not None
        assert "B-frames" in ended[0].error and "--reencode" in ended[0].error
    finally:
        run.close()
