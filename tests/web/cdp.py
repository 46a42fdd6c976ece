"""Headless Chromium driven over the Chrome DevTools Protocol (CDP), for the browser tests.

Only what the tests need: launch Chromium with a fake camera, open pages, evaluate
JavaScript, take a screenshot, close. Commands go over one WebSocket to the browser
endpoint, in "flattened" session mode (the page's commands carry its ``sessionId``).

One Chromium serves every browser test (``ChromiumProcess``, started once per session:
a launch costs seconds on a busy machine); each test connects its own DevTools client
(``connect``) in its own event loop and closes the tabs it opened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as connect_websocket

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = (
    "the browser tests drive the real page in headless Chromium and none was found "
    "(looked for /usr/bin/chromium and chromium/chromium-browser/google-chrome on PATH); "
    ".ci/run installs it with `apt-get install -y chromium`, do the same (Debian/Ubuntu) "
    "or put a Chromium on PATH"
)


def find_chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return next((path for name in CHROMIUM_CANDIDATES if (path := shutil.which(name))), None)


def chromium_args(executable: str, profile: Path, fake_video: Path) -> list[str]:
    """Headless, sandbox off (tests run as root in CI), camera = ``fake_video`` (y4m)."""
    return [
        executable,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--mute-audio",
        f"--user-data-dir={profile}",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={fake_video}",
        "--autoplay-policy=no-user-gesture-required",
        "--remote-debugging-port=0",
        "--window-size=640,600",
        "about:blank",
    ]


class CdpError(RuntimeError):
    pass


class Browser:
    """A DevTools connection to a running Chromium, and the tabs it opened."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._targets: list[str] = []  # tabs this client opened (closed by close())
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []  # the page's console messages and uncaught exceptions
        self._reader = asyncio.create_task(self._read())

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self._ws.send(json.dumps(message))
        return await asyncio.wait_for(future, 20)

    async def open_page(self, width: int, height: int) -> str:
        """A new tab of ``width`` x ``height`` CSS pixels; returns its session id."""
        # A window of its own: a background tab of a shared window gets no video frames.
        target = await self.call("Target.createTarget", url="about:blank", newWindow=True)
        self._targets.append(target["targetId"])
        attached = await self.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        session = str(attached["sessionId"])
        await self.call("Runtime.enable", session)
        await self.call("Page.enable", session)
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return session

    async def evaluate(self, session: str, expression: str, *, await_promise: bool = False) -> Any:
        reply = await self.call(
            "Runtime.evaluate",
            session,
            expression=expression,
            returnByValue=True,
            awaitPromise=await_promise,
        )
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def screenshot(self, session: str, *, width: int, height: int) -> bytes:
        """A PNG of the page's top-left ``width`` x ``height`` CSS pixels."""
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        reply = await self.call("Page.captureScreenshot", session, format="png", clip=clip)
        return base64.b64decode(reply["data"])

    async def on_new_document(self, session: str, source: str) -> None:
        """Run ``source`` in the page before any of its own scripts, on every load."""
        await self.call("Page.addScriptToEvaluateOnNewDocument", session, source=source)

    async def navigate(self, session: str, url: str) -> None:
        await self.call("Page.navigate", session, url=url)

    async def close(self) -> None:
        """Close this client's tabs and its connection (the browser goes on)."""
        for target in self._targets:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call("Target.closeTarget", targetId=target), 5)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._ws.close()

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is None or future.done():
                    continue
                if "error" in message:
                    future.set_exception(CdpError(str(message["error"])))
                else:
                    future.set_result(message.get("result", {}))
            else:
                self._on_event(message.get("method", ""), message.get("params", {}))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(
                str(arg.get("value", arg.get("description", ""))) for arg in params["args"]
            )
            self.console.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text")
            self.console.append(f"exception: {description}")


class ChromiumProcess:
    """A headless Chromium for many tests, each connecting its own client (``connect``)."""

    def __init__(self, executable: str, profile: Path, fake_video: Path, log: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.log = log
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                chromium_args(executable, profile, fake_video),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            self.url = self._devtools_url(profile)
        except BaseException:
            self.close()
            raise

    def _devtools_url(self, profile: Path) -> str:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CdpError(f"Chromium exited with status {self.process.returncode} at start")
            with contextlib.suppress(FileNotFoundError, ValueError):
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{int(lines[0])}{lines[1]}"
            time.sleep(0.05)
        raise CdpError(f"Chromium did not open its DevTools port within 30 s (log: {self.log})")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.asynccontextmanager
async def connect(chromium: ChromiumProcess) -> AsyncIterator[Browser]:
    """A DevTools client of a running Chromium, for one test's event loop."""
    ws = await connect_ws(chromium.url)
    browser = Browser(ws)
    try:
        yield browser
    finally:
        await browser.close()


async def connect_ws(url: str) -> ClientConnection:
    return await connect_websocket(url, max_size=64 * 1024 * 1024, compression=None)
