"""The web client's static files: what GET / and /static/* answer, and what they do not."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from shelf_stream.client.app import ClientConfig, StreamClient
from shelf_stream.client.connection import ConnectionConfig
from shelf_stream.client.sources import SourceSpec
from shelf_stream.engine import EngineConfig, create_detector
from shelf_stream.engine.base import Detector
from shelf_stream.server import Server, ServerConfig
from shelf_stream.server.web import (
    CONTENT_SECURITY_POLICY,
    first_response,
    load_files,
    web_endpoints,
)

SHIPPED = {"index.html", "app.js", "protocol.js", "style.css"}


def _get(path: str, **headers: str) -> Response | None:
    hook = web_endpoints()
    return hook(cast(Any, None), Request(path, Headers(headers)))


def test_the_package_ships_the_web_client() -> None:
    files = load_files()
    assert set(files) >= SHIPPED
    assert b'src="static/app.js"' in files["index.html"].body
    assert b'from "./protocol.js"' in files["app.js"].body


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/?autostart=1&token=x", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/protocol.js", "text/javascript; charset=utf-8"),
        ("/static/style.css", "text/css; charset=utf-8"),
    ],
)
def test_serves_the_page_and_its_files(path: str, content_type: str) -> None:
    response = _get(path)
    assert response is not None and response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Content-Length"] == str(len(response.body))
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["ETag"].startswith('"')


def test_a_matching_etag_gets_not_modified() -> None:
    first = _get("/static/app.js")
    assert first is not None
    again = _get("/static/app.js", **{"If-None-Match": f'W/{first.headers["ETag"]}, "other"'})
    assert again is not None and again.status_code == 304 and again.body == b""


@pytest.mark.parametrize(
    "path",
    [
        "/static/",
        "/static/missing.js",
        "/static/../server/app.py",
        "/static/..%2fserver%2fapp.py",
        "/static/%2e%2e/__init__.py",
        "/static//etc/passwd",
        "/static/web/app.js",
        "/static/__init__.py",
    ],
)
def test_nothing_outside_the_shipped_files(path: str) -> None:
    response = _get(path)
    assert response is not None and response.status_code == 404


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/app.js", "/anything", "/../etc"])
def test_other_paths_are_left_to_the_next_hook(path: str) -> None:
    assert _get(path) is None


def test_websocket_upgrades_are_never_answered() -> None:
    assert _get("/", Upgrade="websocket", Connection="Upgrade") is None
    assert _get("/", Upgrade="WebSocket") is None


def test_a_missing_web_directory_answers_unavailable_not_a_crash(tmp_path: Path) -> None:
    hook = web_endpoints(load_files(tmp_path))  # an installation without the package data
    response = hook(cast(Any, None), Request("/", Headers()))
    assert response is not None and response.status_code == 503
    assert b"not installed" in response.body
    assert hook(cast(Any, None), Request("/", Headers({"Upgrade": "websocket"}))) is None


def test_first_response_asks_hooks_in_order() -> None:
    calls: list[str] = []

    def hook(name: str, answer: Response | None) -> Any:
        def process(connection: Any, request: Request) -> Response | None:
            calls.append(name)
            return answer

        return process

    ok = Response(200, "OK", Headers())
    chained = first_response(hook("a", None), hook("b", ok), hook("c", None))
    assert chained(cast(Any, None), Request("/", Headers())) is ok
    assert calls == ["a", "b"]


@pytest.fixture(scope="module")
def detector(model_path: Path) -> Iterator[Detector]:
    det = create_detector(EngineConfig(model_path=model_path))
    yield det
    det.close()


def test_one_port_serves_page_health_and_streams(detector: Detector) -> None:
    """GET / is the page, /healthz still answers, and a stream still upgrades on /."""

    async def run() -> tuple[str, str, str, dict[str, Any]]:
        async with Server(ServerConfig(host="127.0.0.1", port=0), detector) as server:
            base = f"http://127.0.0.1:{server.port}"
            loop = asyncio.get_running_loop()
            page = await loop.run_in_executor(None, _fetch, base + "/")
            script = await loop.run_in_executor(None, _fetch, base + "/static/app.js")
            health = await loop.run_in_executor(None, _fetch, base + "/healthz")
            client = StreamClient(
                ClientConfig(
                    url=f"ws://127.0.0.1:{server.port}/",
                    source=SourceSpec(kind="scene", width=320, height=240, fps=15.0),
                    max_frames=10,
                    status=False,
                    connection=ConnectionConfig(reconnect=None),
                )
            )
            return page, script, health, await client.run()

    page, script, health, summary = asyncio.run(run())
    assert "<title>shelf-stream" in page
    assert "VideoEncoder" in script
    assert '"status": "ok"' in health
    assert summary["results"] > 0


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
