"""Fixtures of the browser tests: one Chromium (fake camera: the panning shelf of
scene.py) and one detector for the whole session, servers per test.

Chromium comes from the system (Debian's ``chromium`` package; .ci/run installs it).
Without it these tests fail (they do not skip): a skipped browser test would let the web
client rot unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shelf_stream.engine import EngineConfig, create_detector
from shelf_stream.engine.base import Detections, Detector, PreparedImage
from shelf_stream.server import Server, ServerConfig
from tests.web import cdp, scene

VIEWPORT = (640, 720)


@pytest.fixture(scope="session")
def detector(model_path: Path) -> Iterator[Detector]:
    det = create_detector(EngineConfig(model_path=model_path))
    yield det
    det.close()


class StubDetector(Detector):
    """One fixed box per frame, at once: for tests of the page's streaming, not of boxes
    (the real model would only load the two shared cores)."""

    model_name = "stub"
    input_size = (4, 4)
    class_names = ("thing",)

    def prepare(self, image: object) -> PreparedImage:
        return PreparedImage(np.zeros((3, 4, 4), np.float32), 1.0, 0.0, 0.0, 4, 4)

    def infer(self, batch: Any) -> list[Detections]:
        box = Detections(
            np.array([[100, 100, 200, 200]], np.float32),
            np.array([0.9], np.float32),
            np.array([0], np.int32),
        )
        return [box for _ in batch]


@pytest.fixture(scope="session")
def stub_detector() -> StubDetector:
    return StubDetector()


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cdp.ChromiumProcess]:
    executable = cdp.find_chromium()
    if executable is None:
        pytest.fail(cdp.INSTALL_HINT)
    tmp = tmp_path_factory.mktemp("chromium")
    camera = scene.write_y4m(tmp / "shelf.y4m")
    process = cdp.ChromiumProcess(executable, tmp / "profile", camera, tmp / "chromium.log")
    yield process
    process.close()


@contextlib.asynccontextmanager
async def serving(detector: Detector, **config: Any) -> AsyncIterator[Server]:
    async with Server(ServerConfig(host="127.0.0.1", port=0, **config), detector) as server:
        yield server


async def open_page(
    browser: cdp.Browser, url: str, *, before: str = "", viewport: tuple[int, int] = VIEWPORT
) -> str:
    """A new tab showing ``url``; ``before`` runs ahead of the page's own scripts."""
    session = await browser.open_page(*viewport)
    if before:
        await browser.on_new_document(session, before)
    await browser.navigate(session, url)
    return session


async def read_stats(browser: cdp.Browser, session: str) -> dict[str, Any]:
    raw = await browser.evaluate(session, "JSON.stringify(window.shelfStats ?? null)")
    return json.loads(raw) if raw else {}


async def wait_stats(
    browser: cdp.Browser,
    session: str,
    done: Callable[[dict[str, Any]], bool],
    timeout_s: float,
    what: str,
) -> dict[str, Any]:
    """Poll ``window.shelfStats`` until ``done`` says so; fail with the figures if not."""
    stats: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = await read_stats(browser, session)
        if stats and done(stats):
            return stats
        await asyncio.sleep(0.1)
    pytest.fail(
        f"the page did not {what} within {timeout_s:g} s: stats {stats}; "
        f"console {browser.console[-10:]}"
    )


async def click(browser: cdp.Browser, session: str, button: str) -> None:
    await browser.evaluate(session, f"document.getElementById('{button}').click()")
