"""The encoder worker, driven only through its inbox, its slot and its outbox."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import ClassVar

import av
import numpy as np
import pytest

from shelf_stream.client.capture import CapturedFrame, LatestSlot
from shelf_stream.client.encoder_worker import (
    Configure,
    EncodedUnit,
    EncoderWorker,
    EncodeSettings,
    ForceKeyframe,
    FrameNotEncoded,
    GrantSends,
    Outbox,
    Output,
    SetRegions,
    WorkerEnded,
)
from shelf_stream.client.matcher import ClientReason
from shelf_stream.client.roi import RoiPlan
from shelf_stream.codec import get_encoder
from shelf_stream.codec.base import EncodedFrame, Encoder, EncoderConfig, RoiRegion

CONFIG = EncoderConfig(
    codec="h264", width=160, height=120, fps=30.0, bitrate_kbps=300, keyframe_interval_s=100.0
)


def _frame(index: int) -> CapturedFrame:
    image = np.full((120, 160, 3), (index * 37) % 256, np.uint8)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    return CapturedFrame(frame, pts=index * 3000, captured_at=float(index))


class _Harness:
    """A worker on a real thread; the test feeds the slot one frame at a time."""

    def __init__(self, settings: EncodeSettings, max_in_flight: int | None = None) -> None:
        self.slot: LatestSlot[CapturedFrame] = LatestSlot()
        self.outbox = Outbox(asyncio.get_running_loop(), maxsize=2)
        self.worker = EncoderWorker(self.slot, settings, self.outbox, max_in_flight=max_in_flight)
        self.worker.start()
        self.index = 0

    async def feed(self) -> Output:
        """Put the next frame in the slot and wait for what comes out for it."""
        self.slot.put(_frame(self.index))
        self.index += 1
        return await asyncio.wait_for(self.outbox.get(), 10)

    async def quiet_for(self, seconds: float) -> bool:
        """True if nothing comes out for ``seconds``."""
        try:
            await asyncio.wait_for(self.outbox.get(), seconds)
        except TimeoutError:
            return True
        return False

    async def end(self) -> list[Output]:
        self.slot.close()
        items: list[Output] = []
        while not items or not isinstance(items[-1], WorkerEnded):
            items.append(await asyncio.wait_for(self.outbox.get(), 10))
        assert self.worker.join(5)
        return items


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_every_frame_comes_out_once_and_the_end_last() -> None:
    async def test() -> None:
        harness = _Harness(EncodeSettings(CONFIG))
        units = [await harness.feed() for _ in range(5)]
        assert all(isinstance(u, EncodedUnit) for u in units)
        assert [u.encoded.pts for u in units if isinstance(u, EncodedUnit)] == [
            i * 3000 for i in range(5)
        ]
        first = units[0]
        assert isinstance(first, EncodedUnit) and first.encoded.keyframe and first.config == CONFIG
        assert await harness.end() == [WorkerEnded(None)]

    _run(test)


def test_a_frame_share_thins_evenly_without_reopening() -> None:
    async def test() -> None:
        harness = _Harness(EncodeSettings(CONFIG))
        await harness.feed()
        harness.worker.send(Configure(EncodeSettings(CONFIG, frame_share=0.5)))
        out = [await harness.feed() for _ in range(8)]
        thinned = [o for o in out if isinstance(o, FrameNotEncoded)]
        encoded = [o for o in out if isinstance(o, EncodedUnit)]
        assert len(thinned) == 4 and all(t.reason is ClientReason.THINNED for t in thinned)
        assert len(encoded) == 4 and not any(u.encoded.keyframe for u in encoded)
        await harness.end()

    _run(test)


def test_a_keyframe_request_makes_the_next_frame_a_keyframe() -> None:
    async def test() -> None:
        harness = _Harness(EncodeSettings(CONFIG, frame_share=0.5))
        await harness.feed()
        await harness.feed()
        harness.worker.send(ForceKeyframe())
        unit = await harness.feed()  # never thinned: a keyframe was asked for
        assert isinstance(unit, EncodedUnit) and unit.encoded.keyframe
        follow = [await harness.feed() for _ in range(2)]
        assert not any(isinstance(u, EncodedUnit) and u.encoded.keyframe for u in follow)
        await harness.end()

    _run(test)


def test_new_settings_reopen_the_encoder_with_a_keyframe() -> None:
    async def test() -> None:
        harness = _Harness(EncodeSettings(CONFIG))
        await harness.feed()
        await harness.feed()
        lower = replace(CONFIG, bitrate_kbps=150, width=80, height=60)
        harness.worker.send(Configure(EncodeSettings(lower, scale=(2.0, 2.0))))
        unit = await harness.feed()
        assert isinstance(unit, EncodedUnit) and unit.encoded.keyframe
        assert unit.config == lower and unit.scale == (2.0, 2.0)
        decoder = av.CodecContext.create("h264", "r")
        frames = decoder.decode(av.Packet(unit.encoded.data))
        assert (frames[0].width, frames[0].height) == (80, 60)
        await harness.end()

    _run(test)


def test_stop_and_wait_sends_one_frame_per_permit() -> None:
    async def test() -> None:
        harness = _Harness(EncodeSettings(CONFIG), max_in_flight=1)
        assert isinstance(await harness.feed(), EncodedUnit)
        harness.slot.put(_frame(99))
        assert await harness.quiet_for(0.4), "no permit, no frame"
        harness.worker.send(GrantSends(1))
        unit = await asyncio.wait_for(harness.outbox.get(), 10)
        assert isinstance(unit, EncodedUnit) and unit.encoded.pts == 99 * 3000
        # Stopping while waiting for a permit: the frame left is reported, then the end.
        harness.slot.put(_frame(100))
        items = await harness.end()
        assert isinstance(items[0], FrameNotEncoded) and items[0].reason is ClientReason.UNSENT
        assert items[-1] == WorkerEnded(None)

    _run(test)


def test_an_encoder_that_cannot_open_ends_the_worker_with_its_error() -> None:
    async def test() -> None:
        harness = _Harness(EncodeSettings(replace(CONFIG, encoder="no_such_encoder")))
        items = await harness.end()
        assert len(items) == 1 and isinstance(items[0], WorkerEnded)
        assert items[0].error and "no_such_encoder" in items[0].error

    _run(test)


def test_a_full_outbox_holds_the_worker_back() -> None:
    async def test() -> None:
        harness = _Harness(EncodeSettings(CONFIG))
        for index in range(6):  # nobody reads: two units fit, then the worker waits
            harness.slot.put(_frame(index))
            await asyncio.sleep(0.15)
        assert harness.outbox._items.qsize() == 2
        harness.worker.abort()
        assert harness.worker.join(5)

    _run(test)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_the_extreme_shares(share: float) -> None:
    async def test() -> None:
        harness = _Harness(EncodeSettings(CONFIG, frame_share=share))
        out = [await harness.feed() for _ in range(3)]
        kinds = {type(o) for o in out}
        assert kinds == ({FrameNotEncoded} if share == 0.0 else {EncodedUnit})
        await harness.end()

    _run(test)


class _RecordingEncoder(Encoder):
    """A real encoder that also records, per frame encoded, the regions it had."""

    opened: ClassVar[list[_RecordingEncoder]] = []

    def __init__(self, config: EncoderConfig) -> None:
        self.config = config
        self._real = get_encoder(config)
        self.regions_per_frame: list[tuple[RoiRegion, ...] | None] = []
        self._regions: tuple[RoiRegion, ...] | None = None
        _RecordingEncoder.opened.append(self)

    @property
    def takes_regions(self) -> bool:
        return self.config.roi

    def set_regions(self, regions: Sequence[RoiRegion]) -> None:
        self._regions = tuple(regions)

    def encode(self, frame: av.VideoFrame, pts: int, *, keyframe: bool = False) -> EncodedFrame:
        self.regions_per_frame.append(self._regions)
        return self._real.encode(frame, pts, keyframe=keyframe)

    def close(self) -> None:
        self._real.close()


def test_regions_reach_the_encoder_in_its_own_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan is in the pixels the user asked for (320x240 here); the encoder runs at
    a rung of 160x120, then 80x60: each gets the plan mapped to its size."""
    monkeypatch.setattr("shelf_stream.client.encoder_worker.get_encoder", _RecordingEncoder)
    _RecordingEncoder.opened = []
    plan = RoiPlan(320, 240, (RoiRegion(64, 32, 128, 96, -0.2), RoiRegion(0, 0, 320, 240, 0.1)))

    async def test() -> None:
        config = replace(CONFIG, roi=True)
        harness = _Harness(EncodeSettings(config, scale=(2.0, 2.0)))
        await harness.feed()  # before any plan: uniform
        harness.worker.send(SetRegions(plan))
        await harness.feed()
        await harness.feed()
        smaller = replace(config, width=80, height=60)
        harness.worker.send(Configure(EncodeSettings(smaller, scale=(4.0, 4.0))))
        await harness.feed()
        harness.worker.send(SetRegions(RoiPlan(320, 240)))  # back to uniform
        await harness.feed()
        await harness.end()

    _run(test)
    first, second = _RecordingEncoder.opened
    assert first.regions_per_frame == [
        (),
        (RoiRegion(32, 16, 64, 48, -0.2), RoiRegion(0, 0, 160, 120, 0.1)),
        (RoiRegion(32, 16, 64, 48, -0.2), RoiRegion(0, 0, 160, 120, 0.1)),
    ]
    # 80x60: 16..32 x 8..24, grown to whole 16-pixel blocks.
    assert second.regions_per_frame == [
        (RoiRegion(16, 0, 32, 32, -0.2), RoiRegion(0, 0, 80, 60, 0.1)),
        (),
    ]


def test_an_encoder_without_roi_is_given_no_regions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shelf_stream.client.encoder_worker.get_encoder", _RecordingEncoder)
    _RecordingEncoder.opened = []

    async def test() -> None:
        harness = _Harness(EncodeSettings(CONFIG))
        harness.worker.send(SetRegions(RoiPlan(160, 120, (RoiRegion(0, 0, 16, 16, -0.2),))))
        await harness.feed()
        await harness.end()

    _run(test)
    assert _RecordingEncoder.opened[0].regions_per_frame == [None]
