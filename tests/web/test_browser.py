"""The browser client, end to end: the real page in headless Chromium, a fake camera
playing the demo scene (real photos), the real server and detector.

Chromium comes from the system (Debian's ``chromium`` package; .ci/run installs it).
Without it this test fails (it does not skip): a skipped browser test would let the
web client rot unnoticed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest

from shelf_stream.client.sources import SceneSource
from shelf_stream.engine import EngineConfig, create_detector
from shelf_stream.engine.base import Detector
from shelf_stream.server import Server, ServerConfig
from tests.web import cdp

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "browser-client.png"
# Set to rewrite docs/browser-client.png from this run (it is written when missing anyway).
UPDATE_SCREENSHOT_ENV = "SHELF_STREAM_UPDATE_SCREENSHOT"

WIDTH, HEIGHT, FPS, FRAMES = 640, 480, 15, 60  # 4 s of the demo scene, looped by Chromium
VIEWPORT = (640, 600)
MIN_SERVER_FRAMES = 30  # Video messages the server must have received from the page
MIN_RESULTS = 10
EXPECTED_LABELS = {"person", "cat"}  # the scene's first seconds: astronaut, then Chelsea
DEADLINE_S = 45.0


@pytest.fixture(scope="module")
def detector(model_path: Path) -> Iterator[Detector]:
    det = create_detector(EngineConfig(model_path=model_path))
    yield det
    det.close()


@pytest.fixture(scope="module")
def chromium() -> str:
    found = cdp.find_chromium()
    if found is None:
        pytest.fail(cdp.INSTALL_HINT)
    return found


def write_scene_y4m(path: Path, frames: int = FRAMES) -> Path:
    """The demo scene as an uncompressed y4m file: Chromium's fake camera plays it."""
    source = SceneSource(WIDTH, HEIGHT, FPS)
    with av.open(str(path), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("rawvideo", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for index in range(frames):
            frame = source.render(index)
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    source.close()
    return path


@dataclass
class PageRun:
    stats: dict[str, Any]
    server_frames: int
    metrics_frames: float
    final_state: str
    screenshot: bytes
    elapsed_s: float
    restarted: dict[str, Any]  # the page's figures after Stop, Start and a few results


def _page_ready(stats: dict[str, Any] | None) -> bool:
    return bool(
        stats
        and stats["results"] >= MIN_RESULTS
        and EXPECTED_LABELS & set(stats["labels"])
        and stats["boxesDrawn"] > 0
    )


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def _read_stats(browser: cdp.Browser, session: str) -> dict[str, Any] | None:
    raw = await browser.evaluate(session, "JSON.stringify(window.shelfStats ?? null)")
    return json.loads(raw) if raw else None


async def run_page(
    chromium: str,
    detector: Detector,
    tmp: Path,
    *,
    extra_s: float = 0.0,
) -> PageRun:
    """Serve, open ``/?autostart=1`` in Chromium and wait for boxes; ``extra_s`` keeps
    streaming that much longer before the figures are read (measurements)."""
    fake_camera = write_scene_y4m(tmp / "scene.y4m")
    started = time.monotonic()
    async with (
        Server(ServerConfig(host="127.0.0.1", port=0), detector) as server,
        cdp.launch(chromium, tmp / "profile", fake_camera, tmp / "chromium.log") as browser,
    ):
        session = await browser.open_page(*VIEWPORT)
        await browser.call(
            "Page.navigate", session, url=f"http://127.0.0.1:{server.port}/?autostart=1"
        )
        stats: dict[str, Any] | None = None
        server_frames = 0
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            stats = await _read_stats(browser, session)
            server_frames = sum(s.stats.frames_in for s in server.sessions)
            if server_frames >= MIN_SERVER_FRAMES and _page_ready(stats):
                break
        else:
            pytest.fail(
                f"the page did not get boxes back within {DEADLINE_S:g} s: server received "
                f"{server_frames} frames; page stats {stats}; console {browser.console[-20:]}; "
                f"Chromium log {tmp / 'chromium.log'}"
            )
        if extra_s:
            await asyncio.sleep(extra_s)
            stats = await _read_stats(browser, session)
            server_frames = sum(s.stats.frames_in for s in server.sessions)
        assert stats is not None
        # Down to the end of the status lines: no empty page below them in the picture.
        bottom = await browser.evaluate(
            session,
            "Math.ceil(document.getElementById('codec-reason').getBoundingClientRect().bottom)",
        )
        screenshot = await browser.screenshot(
            session, width=VIEWPORT[0], height=min(VIEWPORT[1], int(bottom) + 4)
        )
        metrics_frames = _metric(server.metrics.render().decode(), "shelf_frames_received_total")
        # Stop (the page flushes its encoder, sends Bye, the server closes normally),
        # then Start again: a second stream on a fresh connection gets results too.
        final_state = await _click_until(browser, session, "stop", "stopped")
        results_before = stats["results"]
        await _click_until(browser, session, "start", "streaming")
        restarted = await _wait_stats(
            browser, session, lambda s: s["results"] >= results_before + MIN_RESULTS // 2
        )
        await _click_until(browser, session, "stop", "stopped")
    return PageRun(
        stats,
        server_frames,
        metrics_frames,
        final_state,
        screenshot,
        time.monotonic() - started,
        restarted,
    )


async def _wait_stats(
    browser: cdp.Browser,
    session: str,
    done: Callable[[dict[str, Any]], bool],
    timeout_s: float = 10,
) -> dict[str, Any]:
    """Poll ``window.shelfStats`` until ``done`` says so (or the time is up)."""
    stats: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = await _read_stats(browser, session) or {}
        if stats and done(stats):
            break
        await asyncio.sleep(0.1)
    return stats


async def _click_until(browser: cdp.Browser, session: str, button: str, state: str) -> str:
    """Click a button of the page, then wait for its state to become ``state``."""
    await browser.evaluate(session, f"document.getElementById('{button}').click()")
    stats = await _wait_stats(browser, session, lambda s: s["state"] == state)
    return str(stats.get("state", ""))


def test_browser_streams_camera_and_draws_boxes(
    chromium: str, detector: Detector, tmp_path: Path
) -> None:
    run = asyncio.run(run_page(chromium, detector, tmp_path))
    stats = run.stats

    assert stats["codec"] == "h264", stats["codecReason"]  # headless Chromium: no HEVC encoder
    assert "H.265/HEVC" in stats["codecReason"]  # the page says why it fell back
    assert (stats["width"], stats["height"]) == (WIDTH, HEIGHT)
    assert run.server_frames >= MIN_SERVER_FRAMES
    assert run.metrics_frames >= MIN_SERVER_FRAMES  # /metrics counts the page like any stream
    assert stats["keyframesSent"] >= 1
    assert stats["results"] >= MIN_RESULTS
    assert EXPECTED_LABELS & set(stats["labels"]), stats["labels"]
    assert stats["boxesDrawn"] > 0
    assert stats["latencyP50"] is not None and stats["latencyP95"] >= stats["latencyP50"]
    assert stats["kbps"] > 0 and stats["fps"] > 0
    assert not stats["errors"], stats["errors"]
    assert run.final_state == "stopped"  # Bye answered and the connection closed normally
    assert run.restarted["connections"] == 2, run.restarted  # Start again: a second stream
    assert run.restarted["results"] >= stats["results"] + MIN_RESULTS // 2
    assert run.restarted["reconnects"] == 0 and not run.restarted["errors"]

    assert run.screenshot.startswith(b"\x89PNG")
    (tmp_path / "browser-client.png").write_bytes(run.screenshot)
    # docs/browser-client.png is committed: refresh it only on request (or when missing),
    # so an ordinary test run leaves the working tree clean.
    if os.environ.get(UPDATE_SCREENSHOT_ENV) or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(run.screenshot)


async def _refused_page(chromium: str, detector: Detector, tmp: Path) -> dict[str, Any]:
    """A server that wants a token, a page address without one: the page says so."""
    fake_camera = write_scene_y4m(tmp / "scene.y4m", frames=15)
    config = ServerConfig(host="127.0.0.1", port=0, token="right-token")
    async with (
        Server(config, detector) as server,
        cdp.launch(chromium, tmp / "profile", fake_camera, tmp / "chromium.log") as browser,
    ):
        session = await browser.open_page(*VIEWPORT)
        url = f"http://127.0.0.1:{server.port}/?autostart=1"
        await browser.call("Page.navigate", session, url=url)
        stats: dict[str, Any] | None = None
        for _ in range(80):
            await asyncio.sleep(0.25)
            stats = await _read_stats(browser, session)
            if stats and stats["state"] == "refused":
                break
        stats = stats or {}
        stats["shown"] = await browser.evaluate(
            session, "document.getElementById('message').textContent"
        )
        stats["startEnabled"] = await browser.evaluate(
            session, "!document.getElementById('start').disabled"
        )
        return stats


def test_browser_shows_that_a_token_is_required(
    chromium: str, detector: Detector, tmp_path: Path
) -> None:
    stats = asyncio.run(_refused_page(chromium, detector, tmp_path))
    assert stats["state"] == "refused", stats
    assert "requires a token" in stats["shown"] and "?token=" in stats["shown"]
    assert stats["startEnabled"]  # back on the start screen, no reconnect loop
    assert stats["reconnects"] == 0 and stats["framesSent"] == 0
