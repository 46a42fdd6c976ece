"""The encoder worker: one thread that alone owns the encoder (after aiortc's RTCRtpSender).

It takes the newest captured frame from the capture thread's ``LatestSlot``, encodes it
and puts the access unit into its bounded outbox. The event loop talks to it only
through its inbox:

- ``Configure(settings)``: the encoder settings and the share of frames to encode; the
  encoder is re-opened (its next frame a keyframe) only when the settings changed;
- ``ForceKeyframe()``: the next encoded frame is a keyframe;
- ``GrantSends(n)``: with ``max_in_flight`` (stop-and-wait), ``n`` more frames may go;
- ``SetRegions(plan)``: the ROI planner's quantiser offsets (``client.roi``) for the
  following frames, in the pixels of the frame the user asked for; the worker maps them to
  the encoder's own size (a lower rung's) and hands them to the encoder, which adds them
  to each frame through a filter graph it owns (``codec.roi``). Only an encoder opened
  with ``EncoderConfig.roi`` takes them; the others code uniformly.

Out come ``EncodedUnit``, ``FrameNotEncoded`` (a frame thinned, or taken when the worker
stopped) and, last, ``WorkerEnded``. The outbox holds ``outbox_units`` items: while it
is full the worker waits, frames pile up in the slot, and the capture thread reports
the replaced ones as skipped, so a slow link never becomes a burst of queued packets.
Every frame the worker takes comes out exactly once, unless it is aborted (``abort``:
the client is being torn down and stops waiting for the outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

from shelf_stream.client.adaptation import FrameThinner
from shelf_stream.client.capture import CapturedFrame, LatestSlot
from shelf_stream.client.matcher import ClientReason
from shelf_stream.client.roi import RoiPlan
from shelf_stream.codec import get_encoder
from shelf_stream.codec.base import EncodedFrame, Encoder, EncoderConfig
from shelf_stream.errors import ShelfStreamError

log = logging.getLogger("shelf_stream.client")


@dataclass(frozen=True, slots=True)
class EncodeSettings:
    """What the encoder runs: its config, the share of frames to encode, and the scale
    from the streamed frame to the frame size the user asked for (for the boxes)."""

    config: EncoderConfig
    frame_share: float = 1.0
    scale: tuple[float, float] = (1.0, 1.0)


# ----------------------------------------------------------------------- inbox: commands


@dataclass(frozen=True, slots=True)
class Configure:
    settings: EncodeSettings


@dataclass(frozen=True, slots=True)
class ForceKeyframe:
    pass


@dataclass(frozen=True, slots=True)
class GrantSends:
    count: int = 1


@dataclass(frozen=True, slots=True)
class SetRegions:
    plan: RoiPlan


Command = Configure | ForceKeyframe | GrantSends | SetRegions


# ------------------------------------------------------------------------ outbox: output


@dataclass(frozen=True, slots=True)
class EncodedUnit:
    """An access unit, with the frame it came from and the encoder that made it."""

    encoded: EncodedFrame
    captured: CapturedFrame
    encode_ms: float
    config: EncoderConfig
    scale: tuple[float, float]


@dataclass(frozen=True, slots=True)
class FrameNotEncoded:
    captured: CapturedFrame
    reason: ClientReason


@dataclass(frozen=True, slots=True)
class WorkerEnded:
    """The last item: the source ended, the worker was stopped, or the encoder failed."""

    error: str | None = None


@dataclass(frozen=True, slots=True)
class SourceChanged:
    """A pass-through camera came back streaming another codec or size: what follows
    needs a new Hello (``passthrough``). Its first unit after this is a keyframe."""

    codec: str
    width: int
    height: int
    fps: float


Output = EncodedUnit | FrameNotEncoded | WorkerEnded | SourceChanged


class Outbox:
    """A bounded queue from one thread to the event loop.

    The thread blocks in ``put`` while it is full; the loop awaits ``get``. The thread
    wakes the loop with ``call_soon_threadsafe``; the items themselves cross through the
    thread-safe ``queue.Queue``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self._loop = loop
        self._items: queue.Queue[Output] = queue.Queue(maxsize)
        self._ready = asyncio.Event()

    def put(self, item: Output, abort: threading.Event) -> bool:
        """From the thread: wait for room; False if ``abort`` was set first."""
        while True:
            try:
                self._items.put(item, timeout=0.1)
                break
            except queue.Full:
                if abort.is_set():
                    return False
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._ready.set)
        return True

    def put_nowait(self, item: Output) -> bool:
        """From the thread: put ``item`` if there is room now; False if full."""
        try:
            self._items.put_nowait(item)
        except queue.Full:
            return False
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._ready.set)
        return True

    async def get(self) -> Output:
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            self._ready.clear()
            item = self.get_nowait()  # put between the first look and the clear
            if item is not None:
                return item
            await self._ready.wait()

    def get_nowait(self) -> Output | None:
        try:
            return self._items.get_nowait()
        except queue.Empty:
            return None


class EncoderWorker:
    """Owns the encoder and its thread; see the module docstring."""

    def __init__(
        self,
        slot: LatestSlot[CapturedFrame],
        settings: EncodeSettings,
        outbox: Outbox,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        self._slot = slot
        self._outbox = outbox
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="encoder", daemon=True)
        # Everything below belongs to the worker thread alone.
        self._settings = settings
        self._encoder: Encoder | None = None
        self._opened: EncoderConfig = settings.config  # what ``_encoder`` was opened with
        self._thinner = FrameThinner()
        self._keyframe_wanted = False
        self._permits = max_in_flight  # None: no stop-and-wait
        self._plan: RoiPlan | None = None  # the latest SetRegions; None: uniform
        self._mapped: tuple[RoiPlan | None, int, int] | None = None  # what the encoder has

    # -- the event loop's side ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def send(self, command: Command) -> None:
        self._inbox.put(command)

    def abort(self) -> None:
        """Stop without waiting for the source to end (frames left are not encoded)."""
        self._abort.set()

    def join(self, timeout: float | None = None) -> bool:
        """True if the thread ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the worker thread ----------------------------------------------------------------

    def _run(self) -> None:
        error: str | None = None
        try:
            self._encoder = get_encoder(self._opened)
            self._loop()
        except ShelfStreamError as exc:
            error = str(exc)
            log.error("encoder failed: %s", exc)
        except Exception as exc:  # a bug: say so, and still end the stream cleanly
            error = f"{type(exc).__name__}: {exc}"
            log.exception("encoder worker crashed")
        finally:
            if self._encoder is not None:
                self._encoder.close()
            self._put(WorkerEnded(error))

    def _loop(self) -> None:
        while not self._abort.is_set():
            self._take_commands(wait_s=0.1 if self._permits == 0 else None)
            if self._permits == 0:
                if self._slot.closing:
                    break  # stopping: no frame left would be sent before its answer came
                continue  # stop-and-wait: the previous frame is not answered yet
            captured = self._slot.get(timeout=0.1)
            if captured is None:
                if self._slot.closed:
                    return  # the source ended and every frame it gave came out
                continue
            self._take_commands()  # the newest plan and keyframe wish apply to this frame
            if not self._process(captured):
                return
        while not self._abort.is_set() and (captured := self._slot.get(timeout=0)) is not None:
            self._put(FrameNotEncoded(captured, ClientReason.UNSENT))

    def _take_commands(self, wait_s: float | None = None) -> None:
        try:
            command = self._inbox.get(timeout=wait_s) if wait_s else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(command)
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _apply(self, command: Command) -> None:
        if isinstance(command, Configure):
            self._settings = command.settings
        elif isinstance(command, ForceKeyframe):
            self._keyframe_wanted = True
        elif isinstance(command, SetRegions):
            self._plan = command.plan
        elif self._permits is not None:
            self._permits += command.count

    def _process(self, captured: CapturedFrame) -> bool:
        """Encode (or thin) one frame; False if the worker was aborted meanwhile."""
        settings = self._settings
        keyframe = self._keyframe_wanted
        if not keyframe and not self._thinner.admit(settings.frame_share):
            # Below the encoder's rate: fewer frames, each with its full budget.
            return self._put(FrameNotEncoded(captured, ClientReason.THINNED))
        encoder = self._encoder_for(settings.config)
        self._apply_regions(encoder)
        self._keyframe_wanted = False
        started = time.perf_counter()
        assert captured.frame is not None  # the capture thread always has the picture
        encoded = encoder.encode(captured.frame, captured.pts, keyframe=keyframe)
        encode_ms = (time.perf_counter() - started) * 1000
        if self._permits is not None:
            self._permits -= 1
        return self._put(EncodedUnit(encoded, captured, encode_ms, self._opened, settings.scale))

    def _encoder_for(self, config: EncoderConfig) -> Encoder:
        """The encoder for ``config``, re-opened if it changed (its next frame a keyframe)."""
        assert self._encoder is not None
        if config != self._opened:
            replacement = get_encoder(config)
            self._encoder.close()
            self._encoder, self._opened = replacement, config
            self._mapped = None  # a new encoder starts without regions
        return self._encoder

    def _apply_regions(self, encoder: Encoder) -> None:
        """The latest plan, in the encoder's pixels, if it changed (or the encoder did)."""
        if not encoder.takes_regions:
            return
        config = self._opened
        wanted = (self._plan, config.width, config.height)
        if wanted == self._mapped:
            return
        self._mapped = wanted
        plan = self._plan
        encoder.set_regions(() if plan is None else plan.for_encoder(config.width, config.height))

    def _put(self, item: Output) -> bool:
        return self._outbox.put(item, self._abort)
