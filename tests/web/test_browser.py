"""The browser client, end to end: the real page in headless Chromium, its fake camera
playing the panning shelf of scene.py, against the real server (or, for what a real
server does not do on demand, fake_server.py).

Each test says what a user would see: boxes in both views, a refusal, a reconnect after a
server restart, a keyframe request honoured, the HEVC to H.264 fallback, the watchdogs,
a pause while the page is hidden. test_boxes.py and test_rate.py measure.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shelf_stream.engine.base import Detector
from shelf_stream.protocol import ServerLimits
from shelf_stream.server import Server, ServerConfig
from tests.web import cdp, scene
from tests.web.conftest import (
    VIEWPORT,
    StubDetector,
    click,
    open_page,
    read_stats,
    serving,
    wait_stats,
)
from tests.web.fake_server import fake_server

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = {"live": REPO / "docs" / "browser-client.png"}
SCREENSHOTS["sync"] = REPO / "docs" / "browser-client-sync.png"
# Set to rewrite the docs/ screenshots from this run (they are written when missing anyway).
UPDATE_SCREENSHOT_ENV = "SHELF_STREAM_UPDATE_SCREENSHOT"
SHELF_LABELS = {"person", "cat", "cup", "motorcycle"}  # what the shelf's photos show
MIN_RESULTS = 10
DEADLINE_S = 45.0


def _has_boxes(stats: dict[str, Any]) -> bool:
    return (
        stats["results"] >= MIN_RESULTS
        and bool(SHELF_LABELS & set(stats["labels"]))
        and stats["boxesDrawn"] > 0
    )


async def _screenshot(browser: cdp.Browser, session: str) -> bytes:
    """The page down to the end of its controls (no empty page below them)."""
    bottom = await browser.evaluate(
        session, "Math.ceil(document.getElementById('controls').getBoundingClientRect().bottom)"
    )
    return await browser.screenshot(session, width=VIEWPORT[0], height=min(VIEWPORT[1], bottom))


def _keep_screenshot(name: str, png: bytes, tmp: Path) -> None:
    assert png.startswith(b"\x89PNG")
    (tmp / SCREENSHOTS[name].name).write_bytes(png)
    # docs/ screenshots are committed: refresh them only on request (or when missing), so
    # an ordinary test run leaves the working tree clean.
    if os.environ.get(UPDATE_SCREENSHOT_ENV) or not SCREENSHOTS[name].exists():
        SCREENSHOTS[name].parent.mkdir(exist_ok=True)
        SCREENSHOTS[name].write_bytes(png)


# ------------------------------------------------------------------ streaming, both views


async def _both_views(
    chromium: cdp.ChromiumProcess, detector: Detector, tmp: Path
) -> dict[str, Any]:
    async with serving(detector) as server, cdp.connect(chromium) as browser:
        session = await open_page(browser, f"http://127.0.0.1:{server.port}/?autostart=1")
        live = await wait_stats(browser, session, _has_boxes, DEADLINE_S, "draw boxes")
        live["fpsText"] = await browser.evaluate(
            session, "document.getElementById('fps').textContent"
        )
        # The live view: the state says what it waited for before the first result.
        _keep_screenshot("live", await _screenshot(browser, session), tmp)
        await click(browser, session, "mode")
        sync = await wait_stats(
            browser,
            session,
            lambda s: (
                s["view"] == "sync" and s["bitmapsOpen"] > 0 and s["results"] > live["results"] + 5
            ),
            15,
            "show synchronised frames",
        )
        note = await browser.evaluate(session, "document.getElementById('view-note').textContent")
        _keep_screenshot("sync", await _screenshot(browser, session), tmp)
        frames_in = sum(s.stats.frames_in for s in server.sessions)
        await click(browser, session, "stop")
        stopped = await wait_stats(browser, session, lambda s: s["state"] == "stopped", 10, "stop")
        await click(browser, session, "start")
        again = await wait_stats(
            browser,
            session,
            lambda s: s["results"] >= stopped["results"] + MIN_RESULTS // 2,
            20,
            "stream again after Start",
        )
        await click(browser, session, "stop")
        await wait_stats(browser, session, lambda s: s["state"] == "stopped", 10, "stop again")
        return {
            "live": live,
            "sync": sync,
            "note": note,
            "stopped": stopped,
            "again": again,
            "frames_in": frames_in,
            "console": browser.console,
        }


def test_streams_and_draws_boxes_in_both_views(
    chromium: cdp.ChromiumProcess, detector: Detector, tmp_path: Path
) -> None:
    run = asyncio.run(_both_views(chromium, detector, tmp_path))
    live, sync, stopped, again = run["live"], run["sync"], run["stopped"], run["again"]
    assert live["codec"] == "h264", live["codecReason"]  # headless Chromium: no HEVC encoder
    assert "H.265/HEVC" in live["codecReason"]  # the page says why it fell back
    assert (live["width"], live["height"]) == (640, 480)
    assert live["probe"]["rttMs"] is not None  # it measured the link before streaming
    # It said what it was doing on the way: no "streaming" before anything came back.
    way = live["states"]
    assert way.index("measuring the link") < way.index("waiting for the first result")
    assert way.index("waiting for the first result") < way.index("streaming"), way
    assert live["fpsText"].endswith("results/s")  # what the figure is, not "fps"
    assert live["keyframesSent"] >= 1 and run["frames_in"] >= live["results"]
    assert live["latencyP50"] is not None and live["latencyP95"] >= live["latencyP50"]
    assert live["kbps"] > 0 and live["fps"] > 0 and not live["errors"]
    # The synchronised view shows frames it kept, and says how late they are.
    assert sync["view"] == "sync" and 0 < sync["bitmapsOpen"] <= 30
    assert run["note"].startswith("Synchronised: this frame is")
    # Stop: the server answered every frame (Bye), nothing is left open.
    assert stopped["state"] == "stopped" and stopped["videoFramesOpen"] == 0
    assert stopped["bitmapsOpen"] == 0 and stopped["ringFrames"] == 0
    # Start again: a second stream on a fresh connection.
    assert again["connections"] == 2 and again["reconnects"] == 0 and not again["errors"]


async def _refused_page(chromium: cdp.ChromiumProcess, stub: StubDetector) -> dict[str, Any]:
    """A server that wants a token, a page address without one: the page says so."""
    async with serving(stub, token="right-token") as server, cdp.connect(chromium) as browser:
        session = await open_page(browser, f"http://127.0.0.1:{server.port}/?autostart=1")
        stats = await wait_stats(browser, session, lambda s: s["state"] == "refused", 20, "refuse")
        stats["shown"] = await browser.evaluate(
            session, "document.getElementById('message').textContent"
        )
        stats["startEnabled"] = await browser.evaluate(
            session, "!document.getElementById('start').disabled"
        )
        return stats


def test_shows_that_a_token_is_required(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    stats = asyncio.run(_refused_page(chromium, stub_detector))
    assert "requires a token" in stats["shown"] and "?token=" in stats["shown"]
    assert stats["startEnabled"]  # back on the start screen, no reconnect loop
    assert stats["reconnects"] == 0 and stats["framesSent"] == 0


# ------------------------------------------------------------------------- reconnecting


async def _server_restart(chromium: cdp.ChromiumProcess, stub: StubDetector) -> dict[str, Any]:
    config = ServerConfig(host="127.0.0.1", port=0)
    async with cdp.connect(chromium) as browser:
        async with Server(config, stub) as first:
            port = first.port
            session = await open_page(browser, f"http://127.0.0.1:{port}/?autostart=1")
            before = await wait_stats(
                browser, session, lambda s: s["results"] >= MIN_RESULTS, 20, "stream"
            )
        # The server shut down (1001 after answering what was in flight).
        lost = await wait_stats(
            browser, session, lambda s: s["state"] == "reconnecting", 10, "notice the loss"
        )
        config = ServerConfig(host="127.0.0.1", port=port)
        async with Server(config, stub):
            after = await wait_stats(
                browser,
                session,
                lambda s: s["connections"] == 2 and s["results"] >= before["results"] + 5,
                25,
                "reconnect to the restarted server",
            )
    return {"before": before, "lost": lost, "after": after}


def test_reconnects_after_a_server_restart(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    run = asyncio.run(_server_restart(chromium, stub_detector))
    assert run["before"]["connections"] == 1
    assert "Connection lost" in run["lost"]["message"]  # lost, not "never connected"
    assert "Reconnecting in" in run["lost"]["message"]
    after = run["after"]
    assert after["reconnects"] >= 1 and after["state"] == "streaming"
    assert after["message"] == ""  # the loss is no longer shown once streaming again
    assert after["probe"]["rttMs"] is not None  # each connection measures its link afresh


HEVC_CLAIM = """
// This Chromium cannot encode HEVC; claim it can, so that the page offers HEVC first and
// the server's refusal is what makes it fall back.
const realCheck = VideoEncoder.isConfigSupported.bind(VideoEncoder);
VideoEncoder.isConfigSupported = async (config) =>
  config.codec.startsWith('hvc1') ? { supported: true, config } : realCheck(config);
"""


async def _hevc_refused(chromium: cdp.ChromiumProcess, stub: StubDetector) -> dict[str, Any]:
    limits = ServerLimits(codecs=("h264",))
    async with serving(stub, limits=limits) as server, cdp.connect(chromium) as browser:
        url = f"http://127.0.0.1:{server.port}/?autostart=1"
        session = await open_page(browser, url, before=HEVC_CLAIM)
        return await wait_stats(
            browser, session, lambda s: s["results"] >= 5, 25, "fall back to H.264 and stream"
        )


def test_falls_back_to_h264_when_the_server_refuses_hevc(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    stats = asyncio.run(_hevc_refused(chromium, stub_detector))
    assert stats["codec"] == "h264"
    assert "H.265/HEVC refused by the server, so H.264" in stats["codecReason"]
    assert stats["connections"] == 1 and not stats["errors"]  # no error, no reconnect loop


# ---------------------------------------------------------------- fake server: behaviour


async def _keyframe_request(chromium: cdp.ChromiumProcess) -> Any:
    async with fake_server("answer", keyframe_after=20) as fake, cdp.connect(chromium) as browser:
        session = await open_page(browser, f"http://127.0.0.1:{fake.port}/?autostart=1")
        stats = await wait_stats(
            browser, session, lambda s: s["framesSent"] >= 30, 25, "send 30 frames"
        )
        return stats, fake.connections[0]


def test_a_keyframe_request_is_honoured_at_once(chromium: cdp.ChromiumProcess) -> None:
    stats, seen = asyncio.run(_keyframe_request(chromium))
    flags = [video.keyframe for _, video in seen.videos]
    asked = seen.keyframe_request_at
    assert asked == 20 and flags[0]  # the stream starts with one
    # Between the start and the request, no keyframe (the periodic one is 4 s away)...
    assert not any(flags[1:asked]), flags
    # ...and one within the frames already in the encoder when the request arrived.
    assert any(flags[asked : asked + 3]), flags
    assert stats["keyframeRequests"] == 1


async def _watchdogs(chromium: cdp.ChromiumProcess) -> dict[str, Any]:
    async with (
        fake_server("silent") as silent,
        fake_server("no_ready") as mute,
        cdp.connect(chromium) as browser,
    ):
        quiet = await open_page(browser, f"http://127.0.0.1:{silent.port}/?autostart=1")
        stuck = await open_page(browser, f"http://127.0.0.1:{mute.port}/?autostart=1")
        gave_up = await wait_stats(
            browser, quiet, lambda s: "No answer" in s["message"], 15, "give up on silence"
        )
        started = time.monotonic()
        never = await wait_stats(
            browser, stuck, lambda s: s["state"] == "cannot connect", 15, "time out the handshake"
        )
        waited_more = time.monotonic() - started
        return {
            "gave_up": gave_up,
            "silent": list(silent.connections),
            "never": never,
            "mute": list(mute.connections),
            "waited_more": waited_more,
        }


def test_watchdogs_on_a_silent_server_and_a_stuck_handshake(
    chromium: cdp.ChromiumProcess,
) -> None:
    run = asyncio.run(_watchdogs(chromium))
    first = run["silent"][0]
    assert first.videos, "the page never sent a frame to the silent server"
    # Given up 3 s after the first unanswered frame (with room for a busy machine), and
    # gone to a new connection rather than sitting in "streaming".
    assert first.closed is not None
    silence = first.closed - first.videos[0][0]
    assert 2.9 <= silence <= 6, silence
    assert run["gave_up"]["state"] == "reconnecting" and run["gave_up"]["everConnected"]
    assert "No answer from the server for 3 s" in run["gave_up"]["message"]
    # The handshake that never ends: told apart from a lost connection, and named.
    never = run["never"]
    assert not never["everConnected"]
    assert "did not answer the handshake within 8 s" in never["message"]
    assert run["mute"][0].hello is not None and run["mute"][0].closed is not None


VISIBILITY = """
// Headless Chromium cannot hide a tab: let the test say when the page is hidden.
let hidden = false;
Object.defineProperty(document, 'visibilityState', { get: () => (hidden ? 'hidden' : 'visible') });
Object.defineProperty(document, 'hidden', { get: () => hidden });
window.shelfSetHidden = (value) => {
  hidden = value;
  document.dispatchEvent(new Event('visibilitychange'));
};
"""


async def _lifecycle(chromium: cdp.ChromiumProcess, stub: StubDetector) -> dict[str, Any]:
    async with serving(stub) as server, cdp.connect(chromium) as browser:
        url = f"http://127.0.0.1:{server.port}/?autostart=1"
        session = await open_page(browser, url, before=VISIBILITY)
        streaming = await wait_stats(browser, session, lambda s: s["results"] >= 5, 20, "stream")
        await browser.evaluate(session, "shelfSetHidden(true)")
        paused = await wait_stats(
            browser, session, lambda s: s["state"] == "paused (page hidden)", 5, "pause"
        )
        await asyncio.sleep(1.0)
        while_hidden = await read_stats(browser, session)
        sessions_hidden = len(server.sessions)
        await browser.evaluate(session, "shelfSetHidden(false)")
        resumed = await wait_stats(
            browser,
            session,
            lambda s: s["connections"] == 2 and s["results"] >= while_hidden["results"] + 5,
            20,
            "resume when shown",
        )
        # The system takes the camera away for a moment (a call): the track is muted.
        mute = "document.getElementById('video').srcObject.getVideoTracks()[0]"
        await browser.evaluate(session, f"({mute}).dispatchEvent(new Event('mute'))")
        muted = await wait_stats(
            browser, session, lambda s: s["state"] == "camera paused by the system", 5, "mute"
        )
        await asyncio.sleep(0.5)
        muted_later = await read_stats(browser, session)
        await browser.evaluate(session, f"({mute}).dispatchEvent(new Event('unmute'))")
        unmuted = await wait_stats(
            browser,
            session,
            lambda s: s["framesCaptured"] > muted_later["framesCaptured"] + 5,
            10,
            "capture again after unmute",
        )
    return {
        "streaming": streaming,
        "paused": paused,
        "while_hidden": while_hidden,
        "sessions_hidden": sessions_hidden,
        "resumed": resumed,
        "muted": muted,
        "muted_later": muted_later,
        "unmuted": unmuted,
    }


def test_pauses_while_hidden_and_while_the_camera_is_muted(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    run = asyncio.run(_lifecycle(chromium, stub_detector))
    assert run["streaming"]["wakeLock"] == "on"  # the screen stays on while streaming
    # Hidden: the stream ended with a Bye (the server closed it), no frames meanwhile.
    assert run["sessions_hidden"] == 0
    assert run["while_hidden"]["framesSent"] == run["paused"]["framesSent"]
    # Shown: a fresh connection (its own probe), streaming again.
    assert run["resumed"]["state"] == "streaming" and run["resumed"]["reconnects"] == 0
    # Muted: nothing captured while muted; unmuted: capturing again, a keyframe first.
    assert run["muted_later"]["framesCaptured"] <= run["muted"]["framesCaptured"] + 1
    assert run["unmuted"]["keyframesSent"] > run["muted_later"]["keyframesSent"]
    assert run["unmuted"]["state"] == "streaming"


@pytest.mark.parametrize("ua", ["android-firefox", "iphone-old"])
def test_says_what_to_use_without_webcodecs(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector, ua: str
) -> None:
    async def run() -> str:
        agent = {
            "android-firefox": "Mozilla/5.0 (Android 14; Mobile; rv:130.0) Firefox/130.0",
            "iphone-old": "Mozilla/5.0 (iPhone; CPU iPhone OS 15_7 like Mac OS X) Safari/605.1",
        }[ua]
        hide = (
            f"Object.defineProperty(navigator, 'userAgent', {{ get: () => {agent!r} }});"
            "delete window.VideoEncoder;"
        )
        async with serving(stub_detector) as server, cdp.connect(chromium) as browser:
            url = f"http://127.0.0.1:{server.port}/?autostart=1"
            session = await open_page(browser, url, before=hide)
            stats = await wait_stats(
                browser, session, lambda s: bool(s["errors"]), 10, "say it cannot encode"
            )
            return str(stats["errors"][0])

    message = asyncio.run(run())
    assert "no WebCodecs VideoEncoder" in message
    if ua == "android-firefox":
        assert "On Android use Chrome, Edge or Samsung Internet" in message
        assert "Firefox (130+)" not in message  # not on Android: it has no WebCodecs there
    else:
        assert "iOS to 16.4 or later" in message


# --------------------------------------------------------- for benchmarks/browser_loopback.py


@dataclass
class PageRun:
    stats: dict[str, Any]
    elapsed_s: float


async def run_page(
    executable: str, detector: Detector, tmp: Path, *, extra_s: float = 0.0
) -> PageRun:
    """Serve, stream the shelf from a Chromium of its own until boxes come back, then
    ``extra_s`` longer; the page's figures (benchmarks/browser_loopback.py)."""
    started = time.monotonic()
    camera = scene.write_y4m(tmp / "shelf.y4m")
    chromium = cdp.ChromiumProcess(executable, tmp / "profile", camera, tmp / "chromium.log")
    try:
        async with serving(detector) as server, cdp.connect(chromium) as browser:
            session = await open_page(browser, f"http://127.0.0.1:{server.port}/?autostart=1")
            await wait_stats(browser, session, _has_boxes, DEADLINE_S, "draw boxes")
            await asyncio.sleep(extra_s)
            stats = await read_stats(browser, session)
    finally:
        chromium.close()
    return PageRun(stats, time.monotonic() - started)


async def _phone_layout(chromium: cdp.ChromiumProcess, stub: StubDetector) -> dict[str, Any]:
    """A phone-sized portrait viewport with the front camera, before Start."""
    probe = """(() => {
      const r = (id) => document.getElementById(id).getBoundingClientRect();
      const video = document.getElementById('video');
      return { controlsBottom: r('controls').bottom, startHeight: r('start').height,
               modeHeight: r('mode').height, stageHeight: r('stage').height,
               mirrored: document.getElementById('stage').classList.contains('mirrored'),
               transform: getComputedStyle(video).transform, innerHeight };
    })()"""
    async with serving(stub) as server, cdp.connect(chromium) as browser:
        url = f"http://127.0.0.1:{server.port}/?facing=user"
        session = await open_page(browser, url, viewport=(390, 844))
        await wait_stats(browser, session, lambda s: s["state"] == "idle", 10, "load")
        return dict(await browser.evaluate(session, probe))


def test_phone_layout_and_mirrored_front_camera(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    layout = asyncio.run(_phone_layout(chromium, stub_detector))
    # The controls sit at the bottom of the screen, big enough for a thumb.
    assert abs(layout["controlsBottom"] - layout["innerHeight"]) <= 1, layout
    assert layout["startHeight"] >= 48 and layout["modeHeight"] >= 48, layout
    assert layout["stageHeight"] > 0.5 * layout["innerHeight"], layout  # the picture fills it
    # The front camera's preview is a mirror.
    assert layout["mirrored"] and layout["transform"].startswith("matrix(-1"), layout
