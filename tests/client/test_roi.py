"""The ROI planner, sans-I/O: literal boxes and a fake clock in, plans out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shelf_stream import protocol as p
from shelf_stream.client.roi import RoiConfig, RoiPlan, RoiPlanner
from shelf_stream.codec.base import RoiRegion
from shelf_stream.errors import ConfigError

W, H = 640, 360
FRAME_S = 0.1
#: No edges, no refresh, no age or motion growth: each test turns on what it looks at.
PLAIN = RoiConfig(
    enabled=True,
    strength=0.2,
    edge_band_share=0.0,
    refresh_interval_s=0.0,
    age_margin_share_per_s=0.0,
    motion_margin_share=0.0,
    margin_share=0.0,
    min_margin_px=0.0,
    hold_share_of_seen=0.0,
    max_extrapolation_s=10.0,
)


def box(
    x1: float, y1: float, x2: float, y2: float, class_id: int = 0, score: float = 0.9
) -> p.Detection:
    return p.Detection(class_id, score, x1, y1, x2, y2)


def planner(config: RoiConfig = PLAIN, now: float = 0.0) -> RoiPlanner:
    return RoiPlanner(config, width_px=W, height_px=H, frame_interval_s=FRAME_S, now=now)


def objects(plan: RoiPlan) -> list[RoiRegion]:
    return [r for r in plan.regions if r.qoffset < 0]


def test_without_answers_the_plan_is_uniform() -> None:
    roi = planner()
    assert roi.plan(0.0) == RoiPlan(W, H) and roi.plan(0.0).uniform
    assert roi.get_timer() is None  # no refresh, nothing tracked


def test_a_box_gets_the_object_offset_first_and_the_background_a_bounded_penalty() -> None:
    roi = planner(replace(PLAIN, strength=0.8, margin_share=0.25, min_margin_px=8.0))
    roi.on_result([box(100, 100, 140, 180)], captured_at=0.0, now=0.15)
    plan = roi.plan(0.15)
    # The margin is a quarter of the larger side (80 px): 20 px on every side.
    assert plan.regions[0] == RoiRegion(80, 80, 160, 200, -0.8)
    # Background: 0.8 x 0.5 = 0.4 asked, capped at 0.1; it comes last (the first wins).
    assert plan.regions[-1] == RoiRegion(0, 0, W, H, 0.1)
    assert len(plan.regions) == 2


def test_small_boxes_get_at_least_the_minimum_margin() -> None:
    roi = planner(replace(PLAIN, margin_share=0.25, min_margin_px=8.0))
    roi.on_result([box(100, 100, 104, 104)], captured_at=0.0, now=0.0)
    assert objects(roi.plan(0.0)) == [RoiRegion(92, 92, 112, 112, -0.2)]


def test_the_margin_grows_with_the_answers_age_up_to_its_cap() -> None:
    config = replace(PLAIN, age_margin_share_per_s=0.5, max_growth_share=0.5, hold_s=5.0)
    roi = planner(config)
    roi.on_result([box(100, 100, 200, 150)], captured_at=0.0, now=0.1)  # side 100 px
    assert objects(roi.plan(0.1))[0] == RoiRegion(95, 95, 205, 155, -0.2)  # 0.1 s: 5 px
    assert objects(roi.plan(0.4))[0] == RoiRegion(80, 80, 220, 170, -0.2)  # 0.4 s: 20 px
    # Capped at half the side (50 px) however old.
    assert objects(roi.plan(3.0))[0] == RoiRegion(50, 50, 250, 200, -0.2)


def test_a_moving_object_is_covered_where_it_was_and_where_it_is_predicted() -> None:
    config = replace(PLAIN, velocity_smoothing=1.0, hold_s=5.0)
    roi = planner(config)
    roi.on_result([box(100, 100, 140, 140)], captured_at=0.0, now=0.1)
    roi.on_result([box(110, 100, 150, 140)], captured_at=0.1, now=0.2)  # 100 px/s right
    # At 0.3 s the answer is 0.2 s old: predicted 20 px further right.
    assert objects(roi.plan(0.3)) == [RoiRegion(110, 100, 170, 140, -0.2)]
    # The motion margin adds half the distance moved (20 px -> 10 px) on every side.
    moving = planner(replace(config, motion_margin_share=0.5))
    moving.on_result([box(100, 100, 140, 140)], captured_at=0.0, now=0.1)
    moving.on_result([box(110, 100, 150, 140)], captured_at=0.1, now=0.2)
    assert objects(moving.plan(0.3)) == [RoiRegion(100, 90, 180, 150, -0.2)]


def test_a_held_object_stays_where_it_was_predicted_when_its_extrapolation_ends() -> None:
    config = replace(
        PLAIN, velocity_smoothing=1.0, hold_s=5.0, max_extrapolation_s=0.5,
        age_margin_share_per_s=0.5, max_growth_share=10.0,
    )  # fmt: skip
    roi = planner(config)
    roi.on_result([box(100, 100, 140, 140)], captured_at=0.0, now=0.1)
    roi.on_result([box(110, 100, 150, 140)], captured_at=0.1, now=0.2)  # 100 px/s right
    # Then it drops out of the answers: at 0.6 s (0.5 s after its frame) it is predicted
    # 50 px on, its margin 0.5 x 40 px x 0.5 s = 10 px; and no further later.
    at_end = objects(roi.plan(0.6))
    assert at_end == [RoiRegion(100, 90, 210, 150, -0.2)]
    assert objects(roi.plan(3.0)) == at_end


def test_velocity_is_smoothed_and_bounded() -> None:
    config = replace(PLAIN, velocity_smoothing=0.5, max_speed_share_per_s=0.25, hold_s=5.0)
    roi = planner(config)
    roi.on_result([box(100, 100, 140, 140)], captured_at=0.0, now=0.0)
    roi.on_result([box(104, 100, 144, 140)], captured_at=0.1, now=0.1)  # 40 px/s -> 20
    assert objects(roi.plan(1.1))[0] == RoiRegion(104, 100, 164, 140, -0.2)
    # 300 px/s measured: limited to a quarter of the larger side (640) per second: 160.
    fast = planner(replace(config, velocity_smoothing=1.0))
    fast.on_result([box(100, 100, 180, 140)], captured_at=0.0, now=0.0)
    fast.on_result([box(130, 100, 210, 140)], captured_at=0.1, now=0.1)
    assert fast.tracked == 1
    assert objects(fast.plan(0.2))[0] == RoiRegion(130, 100, 226, 140, -0.2)


def test_other_classes_are_other_objects() -> None:
    roi = planner(replace(PLAIN, velocity_smoothing=1.0))
    roi.on_result([box(100, 100, 140, 140, class_id=0)], captured_at=0.0, now=0.0)
    roi.on_result([box(104, 100, 144, 140, class_id=1)], captured_at=0.1, now=0.1)
    assert roi.tracked == 2
    assert len(objects(roi.plan(0.1))) == 2  # the first is held, the second is new


def test_a_box_that_flickers_out_is_held_then_dropped() -> None:
    roi = planner(replace(PLAIN, hold_s=0.5, replan_interval_s=10.0))
    roi.on_result([box(100, 100, 140, 140)], captured_at=0.0, now=0.15)
    roi.on_result([], captured_at=0.1, now=0.25)  # not detected in this frame
    assert len(objects(roi.plan(0.25))) == 1
    assert len(objects(roi.plan(0.5))) == 1
    assert roi.plan(0.51).uniform  # its frame was captured more than hold_s ago
    assert roi.get_timer() == pytest.approx(0.5)
    roi.handle_timer(0.51)
    assert roi.tracked == 0 and roi.get_timer() is None


def test_an_object_tracked_for_long_is_held_for_longer() -> None:
    """A static object whose score hovers at the threshold: tracked 4 s, held 2 s."""
    config = replace(PLAIN, hold_s=0.5, hold_share_of_seen=0.5, max_hold_s=1.5)
    roi = planner(config)
    for i in range(41):  # seen every 0.1 s from 0 to 4 s
        roi.on_result([box(100, 100, 140, 140)], captured_at=i * 0.1, now=i * 0.1 + 0.15)
    assert not roi.plan(5.5).uniform  # 4 s seen: held 1.5 s (the cap), not 0.5
    assert roi.plan(5.51).uniform
    young = planner(config)
    young.on_result([box(100, 100, 140, 140)], captured_at=0.0, now=0.15)
    young.on_result([box(100, 100, 140, 140)], captured_at=0.4, now=0.55)
    assert not young.plan(0.9).uniform and young.plan(0.91).uniform  # 0.2 < hold_s


def test_stale_answers_make_the_plan_uniform_again() -> None:
    roi = planner(replace(PLAIN, hold_s=1.0, replan_interval_s=0.5))
    for i in range(5):
        roi.on_result([box(100 + i, 100, 140 + i, 140)], captured_at=i * 0.1, now=i * 0.1 + 0.15)
    assert not roi.plan(0.6).uniform
    # The answers stop (a stalled link): uniform once the newest box is hold_s old.
    assert roi.get_timer() == pytest.approx(0.55 + 0.5)  # re-planning as they age
    roi.handle_timer(1.05)
    assert not roi.plan(1.4).uniform
    assert roi.get_timer() == pytest.approx(1.4)  # 0.4 + hold_s: the expiry
    roi.handle_timer(1.41)
    assert roi.plan(1.41).uniform and roi.tracked == 0


def test_while_objects_are_tracked_the_plan_is_made_again_as_they_age() -> None:
    roi = planner(replace(PLAIN, replan_interval_s=0.1, hold_s=5.0))
    roi.on_result([box(100, 100, 140, 140)], captured_at=0.0, now=0.15)
    assert roi.get_timer() == pytest.approx(0.25)
    roi.handle_timer(0.25)
    assert roi.get_timer() == pytest.approx(0.35)


def test_a_periodic_refresh_codes_one_frame_uniformly() -> None:
    roi = planner(replace(PLAIN, refresh_interval_s=2.0, refresh_frames=1, hold_s=10.0))
    # Half an interval in, then every interval: between keyframes every 2 s (or 10 s).
    assert roi.get_timer() == pytest.approx(1.0)  # due even with nothing tracked
    roi.on_result([box(100, 100, 140, 140)], captured_at=0.8, now=0.9)
    assert not roi.plan(0.95).uniform
    roi.handle_timer(1.0)
    assert roi.refreshes == 1
    assert roi.plan(1.0).uniform and roi.plan(1.05).uniform  # one frame: 0.1 s
    assert not roi.plan(1.1).uniform
    assert roi.get_timer() == pytest.approx(1.0 + FRAME_S)
    roi.handle_timer(1.1)
    assert not roi.plan(1.1).uniform
    assert 1.1 < (roi.get_timer() or 0) <= 3.0  # the next one at 3.0 (re-plans before)
    roi.handle_timer(3.0)
    assert roi.refreshes == 2 and roi.plan(3.0).uniform


def test_an_object_coming_in_over_an_edge_is_covered_as_it_grows() -> None:
    """Each side has its own velocity: a person rising into view from the bottom edge."""
    roi = planner(replace(PLAIN, velocity_smoothing=1.0, hold_s=5.0))
    roi.on_result([box(100, 300, 160, H)], captured_at=0.0, now=0.1)
    roi.on_result([box(100, 280, 160, H)], captured_at=0.1, now=0.2)  # top: -200 px/s
    # At 0.3 s: the top predicted 40 px higher, the other sides where they were.
    assert objects(roi.plan(0.3)) == [RoiRegion(100, 240, 160, H, -0.2)]


def test_the_edges_where_objects_enter_keep_the_uniform_quantiser() -> None:
    config = replace(PLAIN, edge_band_share=0.1, edge_qoffset=0.0, max_background_qoffset=0.1)
    roi = planner(config)
    roi.on_result([box(300, 150, 340, 200)], captured_at=0.0, now=0.1)
    regions = roi.plan(0.1).regions
    assert regions[0].qoffset == -0.2  # the object first
    assert regions[1:5] == (
        RoiRegion(0, 0, 64, H, 0.0),
        RoiRegion(W - 64, 0, W, H, 0.0),
        RoiRegion(0, 0, W, 36, 0.0),
        RoiRegion(0, H - 36, W, H, 0.0),
    )
    assert regions[5] == RoiRegion(0, 0, W, H, 0.1)  # then the background
    # Edges that may even get more than the uniform quality.
    finer = planner(replace(config, edge_qoffset=-0.05))
    finer.on_result([box(300, 150, 340, 200)], captured_at=0.0, now=0.1)
    assert {r.qoffset for r in finer.plan(0.1).regions[1:5]} == {-0.05}


def test_an_answer_older_than_one_taken_is_ignored() -> None:
    roi = planner(replace(PLAIN, hold_s=5.0))
    roi.on_result([box(100, 100, 140, 140)], captured_at=0.2, now=0.3)
    roi.on_result([box(400, 100, 440, 140)], captured_at=0.1, now=0.35)  # overtaken
    assert objects(roi.plan(0.35)) == [RoiRegion(100, 100, 140, 140, -0.2)]


def test_tracks_are_bounded() -> None:
    roi = planner(replace(PLAIN, max_tracks=4))
    roi.on_result([box(10 * i, 0, 10 * i + 8, 8, score=i / 10) for i in range(9)], 0.0, 0.1)
    assert roi.tracked == 4
    # The surest are kept.
    assert sorted(r.left_px for r in objects(roi.plan(0.1))) == [50, 60, 70, 80]


def test_queries_change_nothing() -> None:
    roi = planner(replace(PLAIN, refresh_interval_s=1.0, hold_s=0.5))
    roi.on_result([box(100, 100, 140, 140)], captured_at=0.0, now=0.1)
    timer = roi.get_timer()
    first = roi.plan(0.3)
    assert roi.plan(5.0).uniform  # asking about later ...
    assert roi.plan(0.3) == first and roi.get_timer() == timer  # ... changed nothing
    assert roi.tracked == 1


def test_a_plan_maps_to_a_smaller_encoder_snapped_outward_to_blocks() -> None:
    plan = RoiPlan(W, H, (RoiRegion(100, 100, 140, 181, -0.2), RoiRegion(0, 0, W, H, 0.1)))
    # Half size: 50..70 x 50..90.5, grown to the 16-pixel grid; clipped to 320x180.
    assert plan.for_encoder(320, 180) == (
        RoiRegion(48, 48, 80, 96, -0.2),
        RoiRegion(0, 0, 320, 180, 0.1),
    )
    assert plan.for_encoder(W, H) == (
        RoiRegion(96, 96, 144, 192, -0.2),
        RoiRegion(0, 0, W, H, 0.1),
    )
    assert RoiPlan(W, H).for_encoder(320, 180) == ()


@pytest.mark.parametrize(
    "change",
    [
        {"strength": 0.0},
        {"strength": 1.5},
        {"max_background_qoffset": 2.0},
        {"edge_band_share": 0.5},
        {"hold_s": 0.0},
        {"refresh_frames": 0},
        {"max_tracks": 0},
    ],
)
def test_bad_settings_are_refused(change: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        planner(replace(PLAIN, **change))
