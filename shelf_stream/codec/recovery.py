"""Decode one stream, dropping access units from an error until the next keyframe.

A lost or corrupt access unit breaks every frame that references it, so after any
trouble (a decode error, an invalid AU, a gap in the sequence numbers) decoding stops
until a keyframe arrives, and the sender is asked for one. The keyframe is decoded by
a fresh decoder so that no state from the broken stretch can leak into it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

import av

from shelf_stream.codec import nal
from shelf_stream.codec.base import Decoder
from shelf_stream.errors import CodecError

logger = logging.getLogger("shelf_stream.codec")


class DecodeDrop(enum.StrEnum):
    """Why an access unit gave no picture (``DecodeResult.dropped_reason``).

    The server maps each member to its wire reason exhaustively (``server.stream``);
    the values are the names the metrics and logs use.
    """

    DECODE_ERROR = "decode_error"  # the decoder failed on it
    GAP = "gap"  # an earlier access unit is missing
    INVALID = "invalid"  # not a valid Annex-B access unit
    AWAITING_KEYFRAME = "awaiting_keyframe"  # after trouble, until the next keyframe


REASON_DECODE_ERROR = DecodeDrop.DECODE_ERROR
REASON_GAP = DecodeDrop.GAP
REASON_INVALID = DecodeDrop.INVALID
REASON_AWAITING_KEYFRAME = DecodeDrop.AWAITING_KEYFRAME

#: While still waiting, ask for a keyframe again every this many access units (the
#: first request may have been lost or the sender may have ignored it; the server
#: rate-limits requests anyway).
KEYFRAME_RETRY_AUS = 30


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """What became of one access unit.

    ``frames`` are the decoded frames (empty when dropped); ``dropped_reason`` says why
    it was dropped, ``None`` if it was not; ``request_keyframe`` asks the caller to send
    the peer a keyframe request now.
    """

    frames: tuple[av.VideoFrame, ...]
    dropped_reason: DecodeDrop | None
    request_keyframe: bool


class RecoveringDecoder:
    """A decoder for one stream that survives errors by waiting for the next keyframe.

    Starts waiting for a keyframe: the first AU of a stream must be one, as told by the
    NAL unit types (``nal.is_keyframe``), never by the sender's flag. Intra-only codecs
    (``jpeg_zlib``) never wait: every AU is a keyframe.
    Not thread-safe: it belongs to one session's decoder worker.
    """

    def __init__(
        self,
        codec: str,
        make_decoder: Callable[[], Decoder] | None = None,
        *,
        label: str = "",
        keyframe_retry_aus: int = KEYFRAME_RETRY_AUS,
    ) -> None:
        if make_decoder is None:
            # Imported here: the codec package imports this module.
            from shelf_stream.codec import get_decoder

            def make_decoder() -> Decoder:
                return get_decoder(codec)

        self.codec = codec
        self.label = label or codec
        self._make_decoder = make_decoder
        self._annex_b = codec in nal.ANNEX_B_CODECS
        self._retry_aus = max(1, keyframe_retry_aus)
        self._decoder: Decoder | None = None
        self._closed = False
        self._last_seq: int | None = None
        self._waiting = True
        self._since_request: int | None = None  # None: no request yet in this wait
        self._dropped_in_wait = 0
        #: Access units dropped over the stream's life.
        self.dropped_total = 0

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._waiting

    # -- public API ---------------------------------------------------------------

    def decode(self, data: bytes, *, pts: int, seq: int) -> DecodeResult:
        """Decode the access unit numbered ``seq`` (consecutive per stream) at ``pts``."""
        if self._closed:
            raise CodecError("RecoveringDecoder is closed")
        gap = self._last_seq is not None and seq != self._last_seq + 1
        if gap:
            self._start_wait(REASON_GAP, f"seq jumped from {self._last_seq} to {seq}", seq)
        self._last_seq = seq
        try:
            self._validate(data)
        except CodecError as exc:
            return self._fail(REASON_INVALID, str(exc), seq)
        if self._waiting:
            if not self._is_keyframe(data):
                return self._drop(REASON_GAP if gap else REASON_AWAITING_KEYFRAME)
            self._replace_decoder()
        try:
            frames = self._require_decoder().decode(data, pts)
        except CodecError as exc:
            return self._fail(REASON_DECODE_ERROR, str(exc), seq)
        if self._waiting:
            self._end_wait(seq)
        return DecodeResult(tuple(frames), None, False)

    def flush(self) -> tuple[av.VideoFrame, ...]:
        """Frames still inside the decoder (none for zero-delay decoding)."""
        if self._closed or self._waiting or self._decoder is None:
            return ()
        try:
            return tuple(self._decoder.flush())
        except CodecError as exc:
            self._start_wait(REASON_DECODE_ERROR, str(exc), self._last_seq)
            return ()

    def close(self) -> None:
        self._close_decoder()
        self._closed = True

    # -- state machine --------------------------------------------------------------

    def _validate(self, data: bytes) -> None:
        if self._annex_b:
            nal.validate_access_unit(self.codec, data)
        elif not data:
            raise CodecError(f"{self.codec} access unit is empty")

    def _is_keyframe(self, data: bytes) -> bool:
        return nal.is_keyframe(self.codec, data) if self._annex_b else True

    def _fail(self, reason: DecodeDrop, detail: str, seq: int) -> DecodeResult:
        if self._waiting and reason == REASON_DECODE_ERROR:
            # The keyframe we were waiting for failed: the sender believes we have
            # recovered, so this is a new wait that deserves a new request.
            self._since_request = None
        self._start_wait(reason, detail, seq)
        return self._drop(reason)

    def _start_wait(self, reason: DecodeDrop, detail: str, seq: int | None) -> None:
        self._close_decoder()
        if self._waiting:
            logger.debug(
                "%s: %s at seq %s while waiting for a keyframe: %s",
                self.label,
                reason,
                seq,
                detail,
            )
            return
        # Logged once per burst: everything until the next keyframe is a consequence.
        logger.warning(
            "%s: %s at seq %s: %s; dropping until the next keyframe",
            self.label,
            reason,
            seq,
            detail,
        )
        self._waiting = True
        self._since_request = None
        self._dropped_in_wait = 0

    def _end_wait(self, seq: int) -> None:
        if self._dropped_in_wait:
            logger.info(
                "%s: recovered at keyframe seq %d after dropping %d access units",
                self.label,
                seq,
                self._dropped_in_wait,
            )
        self._waiting = False
        self._dropped_in_wait = 0

    def _drop(self, reason: DecodeDrop) -> DecodeResult:
        self.dropped_total += 1
        self._dropped_in_wait += 1
        return DecodeResult((), reason, self._should_request())

    def _should_request(self) -> bool:
        if not self._annex_b:
            return False  # intra-only: the next AU is a keyframe anyway
        if self._since_request is None:
            self._since_request = 0
            return True
        self._since_request += 1
        if self._since_request >= self._retry_aus:
            self._since_request = 0
            return True
        return False

    # -- the underlying decoder -----------------------------------------------------

    def _replace_decoder(self) -> None:
        # A fresh decoder for every keyframe after trouble is cheap (no extradata to
        # parse: parameter sets are in band) and guarantees no polluted state.
        self._close_decoder()
        self._decoder = self._make_decoder()

    def _require_decoder(self) -> Decoder:
        if self._decoder is None:
            self._decoder = self._make_decoder()
        return self._decoder

    def _close_decoder(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
