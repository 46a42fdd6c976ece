"""The stream ledger, driven with literal events and a fake clock (no decoder, no loop)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelf_stream import protocol as p
from shelf_stream.bench.fuzz_geometry import IDR_HEADER, TRAIL_HEADER, access_unit, hevc_sps
from shelf_stream.codec.recovery import DecodeDrop
from shelf_stream.engine.base import Detections, PreparedImage
from shelf_stream.errors import RemoteProtocolError
from shelf_stream.server.scheduler import InferenceDone
from shelf_stream.server.stream import (
    MAX_DECODER_DELAY,
    Action,
    Cause,
    Decode,
    Decoded,
    Infer,
    LedgerConfig,
    Picture,
    ResultReady,
    Send,
    StreamLedger,
    Warn,
    keyframe_reason,
    wire_reason,
)

WIDTH, HEIGHT = 320, 240
PREPARED = PreparedImage(np.zeros((3, 4, 4), np.float32), 1.0, 0.0, 0.0, WIDTH, HEIGHT)
KEYFRAME = access_unit(hevc_sps(WIDTH, HEIGHT), IDR_HEADER + b"\xaf\x01")
P_FRAME = access_unit(TRAIL_HEADER + b"\xaf\x01")
#: An SPS asking for far more than the Hello's 320x240 (the outside attack's).
HUGE_KEYFRAME = access_unit(hevc_sps(7680, 4320), IDR_HEADER + b"\xaf\x01")
BOX = Detections(
    np.array([[10, 20, 30, 40]], np.float32), np.array([0.9], np.float32), np.array([3], np.int32)
)


def ledger(**config: float) -> StreamLedger:
    hello = p.Hello("hevc", WIDTH, HEIGHT, 30.0)
    return StreamLedger(7, hello, LedgerConfig(**config))  # type: ignore[arg-type]


def video(seq: int, data: bytes = P_FRAME) -> p.Video:
    """Video ``seq`` at pts ``seq * 3000``, captured at ``seq`` µs."""
    return p.Video(seq, seq * 3000, seq, data is KEYFRAME, data)


def actions(stream: StreamLedger) -> list[Action]:
    out = []
    while (action := stream.next_action()) is not None:
        out.append(action)
    return out


def sent(stream: StreamLedger) -> list[object]:
    return [a.message for a in actions(stream) if isinstance(a, Send)]


def decoded(pts: int | None, *pictures: int, drop: DecodeDrop | None = None, at: float = 1.0,
            keyframe: bool = False) -> Decoded:  # fmt: skip
    made = tuple(Picture(pts_, WIDTH, HEIGHT, PREPARED) for pts_ in pictures)
    return Decoded(pts, drop, keyframe, made, at)


def through_decoder(stream: StreamLedger, seq: int, now: float = 1.0) -> Infer:
    """Video ``seq`` arrives at ``now``, decodes at ``now + 0.01``: its Infer action."""
    stream.on_video(video(seq, KEYFRAME if seq == 0 else P_FRAME), now)
    assert isinstance(stream.next_action(), Decode)
    stream.on_decoded(decoded(seq * 3000, seq * 3000, at=now + 0.01))
    infer = stream.next_action()
    assert isinstance(infer, Infer)
    return infer


# ---------------------------------------------------------------------- the way in


def test_an_access_unit_goes_to_the_decoder_and_its_picture_to_inference() -> None:
    stream = ledger()
    infer = through_decoder(stream, 0, now=1.0)
    frame = infer.frame
    assert (frame.stream_id, frame.pts, frame.capture_us) == (7, 0, 0)
    assert (frame.received_at, frame.decoded_at) == (1.0, 1.01)
    assert stream.unanswered == 1


def test_a_result_carries_the_stage_times_of_the_fake_clock() -> None:
    stream = ledger()
    frame = through_decoder(stream, 0, now=1.0).frame
    stream.on_inferred(InferenceDone(frame, BOX, started=1.03, finished=1.07))
    (result,) = sent(stream)
    assert isinstance(result, ResultReady)
    final = result.finish(now=1.08)
    assert (final.decode_us, final.queue_us, final.infer_us, final.total_us) == (
        10_000, 20_000, 40_000, 80_000,
    )  # fmt: skip
    assert final.detections == (p.Detection(3, pytest.approx(0.9), 10, 20, 30, 40),)
    assert stream.unanswered == 0 and stream.stats.results == 1


def test_a_pts_sent_twice_while_unanswered_is_fatal() -> None:
    stream = ledger()
    stream.on_video(video(0, KEYFRAME), 1.0)
    with pytest.raises(RemoteProtocolError, match="sent twice"):
        stream.on_video(p.Video(1, 0, 1, False, P_FRAME), 1.1)


def test_queries_never_change_state() -> None:
    stream = ledger()
    stream.on_video(video(0, KEYFRAME), 1.0)
    assert stream.get_timer() == stream.get_timer() == pytest.approx(1.1)
    assert stream.unanswered == stream.unanswered == 1
    assert stream.is_unanswered(0) and stream.is_unanswered(0)
    assert len(actions(stream)) == 1 and stream.next_action() is None


# ------------------------------------------------------------------ every drop path


@pytest.mark.parametrize("drop", list(DecodeDrop))
def test_each_decoder_drop_is_answered_with_its_wire_reason(drop: DecodeDrop) -> None:
    stream = ledger()
    stream.on_video(video(0, KEYFRAME), 1.0)
    actions(stream)
    stream.on_decoded(decoded(0, drop=drop, keyframe=True))
    dropped, request = sent(stream)
    assert dropped == p.Dropped(0, 0, wire_reason(drop))
    assert request == p.KeyframeRequest(keyframe_reason(drop))
    assert stream.stats.decode_errors == (drop is DecodeDrop.DECODE_ERROR)


def test_the_decoder_reasons_map_one_to_one() -> None:
    reasons = [wire_reason(drop) for drop in DecodeDrop]
    assert len(set(reasons)) == len(DecodeDrop)
    assert [r.name for r in reasons] == [d.name for d in DecodeDrop]


@pytest.mark.parametrize(
    "reason",
    [
        p.DropReason.SUPERSEDED,
        p.DropReason.TOO_OLD,
        p.DropReason.INFERENCE_ERROR,
        p.DropReason.SHUTDOWN,
    ],
)
def test_each_scheduler_drop_is_answered_with_its_reason(reason: p.DropReason) -> None:
    stream = ledger()
    frame = through_decoder(stream, 0).frame
    stream.on_inferred(InferenceDone(frame, reason))
    assert sent(stream) == [p.Dropped(0, 0, reason)]
    stream.on_inferred(InferenceDone(frame, BOX, 1.0, 1.1))  # too late: answered once
    assert sent(stream) == [] and stream.stats.dropped_by_reason == Counter({reason: 1})


def test_an_access_unit_without_a_picture_is_settled_by_the_next_picture() -> None:
    stream = ledger()
    for seq in range(3):
        stream.on_video(video(seq, KEYFRAME if seq == 0 else P_FRAME), 1.0)
    actions(stream)
    stream.on_decoded(decoded(0))  # decoded fine, no picture (yet)
    stream.on_decoded(decoded(3000))
    stream.on_decoded(decoded(6000, 6000))  # pictures come out in order: 0 and 3000 got none
    out = actions(stream)
    assert [a.message for a in out if isinstance(a, Send)] == [
        p.Dropped(0, 0, p.DropReason.NO_FRAME),
        p.Dropped(3000, 1, p.DropReason.NO_FRAME),
    ]
    assert [a.frame.pts for a in out if isinstance(a, Infer)] == [6000]


def test_a_decoder_that_never_gives_pictures_cannot_grow_the_table() -> None:
    stream = ledger()
    for seq in range(MAX_DECODER_DELAY + 3):
        stream.on_video(video(seq, KEYFRAME if seq == 0 else P_FRAME), 1.0)
        stream.on_decoded(decoded(seq * 3000))
    answers = [m for m in sent(stream) if isinstance(m, p.Dropped)]
    assert [a.pts for a in answers] == [0, 3000, 6000]
    assert {a.reason for a in answers} == {p.DropReason.NO_FRAME}
    assert stream.unanswered == MAX_DECODER_DELAY


def test_the_end_of_the_stream_answers_what_is_left_no_frame() -> None:
    stream = ledger()
    through_decoder(stream, 0)
    stream.on_video(video(1), 1.05)
    actions(stream)
    stream.on_end()
    assert sent(stream) == [
        p.Dropped(0, 0, p.DropReason.NO_FRAME),
        p.Dropped(3000, 1, p.DropReason.NO_FRAME),
    ]
    assert stream.unanswered == 0 and stream.get_timer() is None


def test_keyframe_requests_are_throttled_on_the_fake_clock() -> None:
    stream = ledger(keyframe_request_interval_s=0.3)
    for seq, at in enumerate((1.0, 1.1, 1.29, 1.31)):
        stream.on_video(video(seq), at)
        stream.on_decoded(decoded(seq * 3000, drop=DecodeDrop.GAP, keyframe=True, at=at))
    requests = [m for m in sent(stream) if isinstance(m, p.KeyframeRequest)]
    assert requests == [p.KeyframeRequest(p.KeyframeReason.GAP)] * 2  # at 1.0 and 1.31
    assert stream.stats.keyframe_requests == 2


# ------------------------------------------------------------------------ geometry


def test_an_sps_larger_than_the_hello_is_refused_before_decoding() -> None:
    stream = ledger()
    stream.on_video(p.Video(0, 0, 0, True, HUGE_KEYFRAME), 1.0)
    out = actions(stream)
    assert not [a for a in out if isinstance(a, Decode)], "never handed to the decoder"
    assert [a.message for a in out if isinstance(a, Send)] == [
        p.Dropped(0, 0, p.DropReason.SIZE_MISMATCH)
    ]
    (warning,) = [a for a in out if isinstance(a, Warn)]
    assert warning.cause is Cause.SIZE_MISMATCH and "7680x4320" in warning.message
    assert "320x240" in warning.message


def test_what_follows_a_refused_sps_is_refused_until_a_keyframe_that_fits() -> None:
    stream = ledger(max_size_mismatches=10)
    stream.on_video(p.Video(0, 0, 0, True, HUGE_KEYFRAME), 1.0)
    stream.on_video(video(1), 1.03)  # a P frame of the huge picture
    stream.on_video(video(2), 1.06)
    stream.on_video(video(3, KEYFRAME), 1.1)  # a keyframe of the announced size
    stream.on_video(video(4), 1.13)
    out = actions(stream)
    assert [m.reason for m in (a.message for a in out if isinstance(a, Send))] == [  # type: ignore[union-attr]
        p.DropReason.SIZE_MISMATCH
    ] * 3
    decodes = [a for a in out if isinstance(a, Decode)]
    assert [(d.video.seq, d.fresh_decoder) for d in decodes] == [(3, True), (4, False)]
    assert len([a for a in out if isinstance(a, Warn)]) == 1, "one warning per cause"


def test_repeated_oversized_pictures_end_the_stream_after_their_answers() -> None:
    stream = ledger(max_size_mismatches=3)
    stream.on_video(p.Video(0, 0, 0, True, HUGE_KEYFRAME), 1.0)
    stream.on_video(video(1), 1.03)
    with pytest.raises(RemoteProtocolError, match="larger than the 320x240") as error:
        stream.on_video(video(2), 1.06)
    assert error.value.code == p.ErrorCode.LIMIT_EXCEEDED and error.value.close_code == 1008
    answers = [m for m in sent(stream) if isinstance(m, p.Dropped)]
    assert [(a.pts, a.reason) for a in answers] == [
        (pts, p.DropReason.SIZE_MISMATCH) for pts in (0, 3000, 6000)
    ]


def test_a_decoded_picture_larger_than_announced_is_never_inferred() -> None:
    """The second line: the decoder's picture is checked too (jpeg_zlib has no SPS)."""
    stream = ledger()
    through_decoder(stream, 0)
    stream.on_video(video(1), 1.03)
    actions(stream)
    big = Picture(3000, WIDTH + 2, HEIGHT, None)  # the decoder thread did not prepare it
    stream.on_decoded(Decoded(3000, None, False, (big,), 1.04))
    out = actions(stream)
    assert not [a for a in out if isinstance(a, Infer)]
    assert [a.message for a in out if isinstance(a, Send)] == [
        p.Dropped(3000, 1, p.DropReason.SIZE_MISMATCH)
    ]
    assert stream.stats.size_mismatches == 1


def test_a_stream_smaller_than_its_hello_is_served() -> None:
    """A client's ladder may shrink the picture in the same stream."""
    stream = ledger()
    small = access_unit(hevc_sps(160, 120), IDR_HEADER + b"\xaf\x01")
    stream.on_video(p.Video(0, 0, 0, True, small), 1.0)
    assert isinstance(stream.next_action(), Decode)
    stream.on_decoded(Decoded(0, None, False, (Picture(0, 160, 120, PREPARED),), 1.01))
    assert isinstance(stream.next_action(), Infer)


def test_an_unreadable_sps_is_invalid_and_asks_for_a_keyframe() -> None:
    stream = ledger()
    broken = access_unit(hevc_sps(WIDTH, HEIGHT)[:6], IDR_HEADER + b"\xaf\x01")
    stream.on_video(p.Video(0, 0, 0, True, broken), 1.0)
    stream.on_video(video(1), 1.03)
    messages = sent(stream)
    assert messages == [
        p.Dropped(0, 0, p.DropReason.INVALID),
        p.KeyframeRequest(p.KeyframeReason.DECODE_ERROR),
        p.Dropped(3000, 1, p.DropReason.AWAITING_KEYFRAME),
    ]
    assert stream.stats.size_mismatches == 0


# --------------------------------------------------------------- timers and probes


def test_feedback_is_due_one_interval_after_the_first_arrival() -> None:
    stream = ledger(feedback_interval_s=0.1)
    assert stream.get_timer() is None
    stream.on_video(video(0, KEYFRAME), 1.0)
    stream.on_video(video(1), 1.04)
    assert stream.get_timer() == pytest.approx(1.1)
    actions(stream)
    stream.on_timer(1.09)
    assert sent(stream) == []
    stream.on_timer(1.1)
    assert sent(stream) == [p.Feedback(((0, 1_000_000), (1, 1_040_000)))]
    assert stream.get_timer() is None


def test_a_full_feedback_goes_at_once() -> None:
    stream = ledger()
    for seq in range(p.MAX_FEEDBACK_ENTRIES):
        stream.on_video(video(seq, KEYFRAME if seq == 0 else P_FRAME), 1.0 + seq * 1e-6)
    (feedback,) = [m for m in sent(stream) if isinstance(m, p.Feedback)]
    assert len(feedback.arrivals) == p.MAX_FEEDBACK_ENTRIES
    assert stream.get_timer() is None


def test_a_probe_is_echoed_with_its_arrival() -> None:
    stream = ledger()
    stream.on_probe(p.Probe(5, 123, 40), 60, 2.5)
    assert sent(stream) == [p.ProbeAck(5, 123, 2_500_000, 60)]


# ------------------------------------------------------------------ exactly once


events = st.lists(
    st.one_of(
        st.tuples(st.just("video"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("decoded"), st.integers(0, 5), st.sampled_from([None, *DecodeDrop])),
        st.tuples(st.just("picture"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("inferred"), st.integers(0, 5), st.sampled_from([None, *p.DropReason])),
        st.tuples(st.just("timer"), st.integers(0, 5), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(events=events)
def test_every_pts_is_answered_exactly_once_whatever_happens(events: list[tuple]) -> None:  # type: ignore[type-arg]
    stream = ledger(max_size_mismatches=1000)
    sent_pts: Counter[int] = Counter()
    frames = {}
    answers: Counter[int] = Counter()
    now = 1.0
    for kind, index, extra in events:
        now += 0.01
        pts = index * 3000
        try:
            if kind == "video":
                data = HUGE_KEYFRAME if extra else P_FRAME
                stream.on_video(p.Video(index, pts, index, extra, data), now)
                sent_pts[pts] += 1
            elif kind == "decoded":
                stream.on_decoded(Decoded(pts, extra, extra is not None, (), now))
            elif kind == "picture":
                size = (WIDTH, HEIGHT) if extra else (WIDTH * 2, HEIGHT)
                picture = Picture(pts, *size, PREPARED)
                stream.on_decoded(Decoded(None, None, False, (picture,), now))
            elif kind == "inferred" and pts in frames:
                stream.on_inferred(InferenceDone(frames[pts], extra or BOX, now, now))
            else:
                stream.on_timer(now)
        except RemoteProtocolError:
            pass  # a duplicate pts: refused, nothing recorded for it
        for action in actions(stream):
            if isinstance(action, Infer):
                frames[action.frame.pts] = action.frame
            elif isinstance(action, Send) and isinstance(action.message, ResultReady | p.Dropped):
                answers[action.message.pts] += 1
        # Never more answers than sends of a pts (a pts may be reused once answered).
        assert all(answers[pts_] <= sent_pts[pts_] for pts_ in answers)
    stream.on_end()
    for action in actions(stream):
        if isinstance(action, Send) and isinstance(action.message, p.Dropped):
            answers[action.message.pts] += 1
    assert answers == sent_pts


def test_b_frames_reordered_by_the_decoder_are_each_inferred_once() -> None:
    """A camera's pass-through stream: decode order 0 3 1 2 6 4 5, display order by pts.
    A picture settles only the pts below it that never got one, wherever they wait."""
    stream = ledger()
    decode_order = [0, 3, 1, 2, 6, 4, 5]
    for seq, index in enumerate(decode_order):
        stream.on_video(p.Video(seq, index * 3000, index, index == 0, P_FRAME), 1.0)
    actions(stream)
    frames = {}
    # The decoder holds one picture back: each access unit releases the previous one
    # in display order (0 at once, then 1, 2, 3, 4, 5 as 1, 2, 6, 4, 5 come in).
    released = {0: [0], 3: [], 1: [1], 2: [2, 3], 6: [], 4: [4], 5: [5, 6]}
    for index in decode_order:
        stream.on_decoded(decoded(index * 3000, *(i * 3000 for i in released[index])))
        for action in actions(stream):
            assert not isinstance(action, Send), f"{action} answered before inference"
            assert isinstance(action, Infer)
            frames[action.frame.pts] = action.frame
    assert sorted(frames) == [i * 3000 for i in range(7)]
    for frame in frames.values():
        stream.on_inferred(InferenceDone(frame, BOX, 1.1, 1.2))
    results = [m for m in sent(stream) if isinstance(m, ResultReady)]
    assert sorted(r.pts for r in results) == sorted(frames)
    assert stream.unanswered == 0


def test_a_picture_settles_only_older_pts_without_a_picture() -> None:
    stream = ledger()
    for seq in range(3):
        stream.on_video(video(seq, KEYFRAME if seq == 0 else P_FRAME), 1.0)
    actions(stream)
    stream.on_decoded(decoded(0))  # no picture
    stream.on_decoded(decoded(6000))  # no picture
    stream.on_decoded(decoded(3000, 3000))  # 3000 out: 0 never will be; 6000 still may
    out = sent(stream)
    assert out == [p.Dropped(0, 0, p.DropReason.NO_FRAME)]
    assert stream.is_unanswered(6000)
