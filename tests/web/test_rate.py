"""The page's rate control through the bench's link emulator (``LinkRelay``, as
``shelf-bench e2e`` uses it), at 150 and 400 ms of round trip, side by side.

Each page streams to its own server (a stub detector: the rate is under test, not the
boxes) through its own relay: LINK_KBPS for UNCONGESTED_S, then CONGESTED_KBPS for
CONGESTED_S, then LINK_KBPS again. The link's sustainable rate for the video is
min(LINK_KBPS, the page's ceiling): the relay counts TCP payload, and Probe messages
only cross before the stream. Measured on the page's own figures, polled every 250 ms:

- on the uncongested link (after the first RAMP_S) the target never sits at the floor,
  and its median is at least half the sustainable rate (the old page cut 30 % a second down to
  the floor there). A single frame several times the size of the others (Chromium's
  software H.264 encoder makes them, see the README) can still cause a short drain;
- after congestion ends, the target is back within 20 % of the sustainable rate within
  RECOVERY_S, and the link carries it;
- bitrate changes cost no keyframe: no key chunk the page did not ask for.
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
# Cross traffic takes a quarter of the link: the rate must come down and back, within
# the top rung (640x480@15, floor 300 kbit/s). Deeper cuts (360, 300, 150) push it below
# that floor and the ladder steps down to 7.5 fps; climbing back then waits for the
# ladder's hold times (controller.py: 4 s above 1.2 x the floor, unbroken, and 3 s after
# the last change), the shared algorithm's choice: measured and reported with
# SHELF_STREAM_TEST_CONGESTED_KBPS=300 (see the README's "Browser client").
CONGESTED_KBPS = float(os.environ.get("SHELF_STREAM_TEST_CONGESTED_KBPS", "360"))
UNCONGESTED_S, CONGESTED_S, RECOVERY_S = 10.0, 5.0, 10.0
RAMP_S = 3.0  # from the first frame: the start is half the probed rate, then it climbs
RTTS_MS = (150.0, 400.0)
CEILING_KBPS = default_ladder(640, 480, 15)[0].max_kbps  # the page's top rung, 640x480@15
SUSTAINABLE_KBPS = min(LINK_KBPS, CEILING_KBPS)
FLOOR_KBPS = 50.0  # the controller's min_bitrate_kbps


async def _follow(
    chromium: cdp.ChromiumProcess, stub: StubDetector, rtt_ms: float, started: asyncio.Event
) -> dict[str, Any]:
    """One page through one relay; its figures over the link schedule (t = 0: congestion)."""
    link = LinkConfig(rtt_ms, LINK_KBPS / 1000)
    async with (
        serving(stub) as server,
        LinkRelay("127.0.0.1", server.port, link) as relay,
        cdp.connect(chromium) as browser,
    ):
        session = await open_page(browser, f"http://127.0.0.1:{relay.port}/?autostart=1")
        await wait_stats(browser, session, lambda s: s["framesSent"] > 0, 30, "start streaming")
        first_frame = time.monotonic()
        timeline: list[tuple[float, dict[str, Any]]] = []
        phases = [
            (first_frame + UNCONGESTED_S, LinkConfig(rtt_ms, CONGESTED_KBPS / 1000)),
            (first_frame + UNCONGESTED_S + CONGESTED_S, link),
        ]
        end = first_frame + UNCONGESTED_S + CONGESTED_S + RECOVERY_S
        while (now := time.monotonic()) < end:
            if phases and now >= phases[0][0]:
                relay.set_link(phases.pop(0)[1])
            stats = await read_stats(browser, session)
            timeline.append((now - first_frame - UNCONGESTED_S, stats))
            await asyncio.sleep(0.25)
        delivered = relay.uplink.stats.throughput_series()
        return {"timeline": timeline, "delivered": delivered, "final": timeline[-1][1]}


async def _both(chromium: cdp.ChromiumProcess, stub: StubDetector) -> list[dict[str, Any]]:
    started = asyncio.Event()
    return list(await asyncio.gather(*(_follow(chromium, stub, r, started) for r in RTTS_MS)))


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
        if t >= CONGESTED_S and abs(kbps - SUSTAINABLE_KBPS) <= 0.2 * SUSTAINABLE_KBPS:
            return t - CONGESTED_S
    return None


def _trace(timeline: list[tuple[float, dict[str, Any]]]) -> str:
    """Every second's figures, for a failure's message: what the controller was doing."""
    lines = []
    for t, s in timeline[::4]:
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
        uncongested = [kbps for t, kbps in smoothed if RAMP_S - UNCONGESTED_S <= t < 0]
        congested = [kbps for t, kbps in smoothed if 1.0 <= t < CONGESTED_S]
        recovery = _recovery_s(smoothed)
        final = run["final"]
        delivered = [m for t, m in run["delivered"] if t >= UNCONGESTED_S + CONGESTED_S + 6]
        print(
            f"{rtt_ms:g} ms RTT, link {LINK_KBPS:g} -> {CONGESTED_KBPS:g} -> {LINK_KBPS:g} kbit/s "
            f"(sustainable {SUSTAINABLE_KBPS:g}): uncongested target min {min(uncongested)}, "
            f"median {statistics.median(uncongested)}; congested median "
            f"{statistics.median(congested)}; back within 20 % {recovery} s after congestion; "
            f"delivered in the last {len(delivered) / 10:g} s "
            f"{1000 * sum(delivered) / max(1, len(delivered)):.0f} kbit/s; bitrate changes "
            f"{final['bitrateChanges']}, rung changes {final['rungChanges']}, keyframes "
            f"{final['keyframesSent']} ({final['keyframesUnrequested']} not asked for)"
        )
        checks.append((rtt_ms, uncongested, congested, recovery, final, _trace(run["timeline"])))
    for rtt_ms, uncongested, congested, recovery, final, trace in checks:
        # Never at the floor on the uncongested link; mostly near the link's rate.
        assert min(uncongested) > 1.1 * FLOOR_KBPS, (rtt_ms, uncongested)
        assert statistics.median(uncongested) >= 0.5 * SUSTAINABLE_KBPS, (rtt_ms, uncongested)
        # Congestion was seen (the target went down), and was recovered from in time.
        assert min(congested) < CONGESTED_KBPS, (rtt_ms, congested)
        assert recovery is not None and recovery <= RECOVERY_S, (rtt_ms, trace)
        # The controller moved the encoder, and no change cost a keyframe.
        assert final["bitrateChanges"] >= 2
        assert final["keyframesUnrequested"] == 0
        assert not final["errors"] and final["reconnects"] == 0
