"""The browser client's static files, served beside the WebSocket on the same port.

``GET /`` answers ``index.html`` and ``GET /static/NAME`` the page's script and style
sheet, all read once from the package's ``shelf_stream/web`` directory (package data,
through ``importlib.resources``). Only names that exist there are ever answered: a
request path is looked up in that fixed table, never joined to a file system path, so
``..`` or encoded slashes cannot reach anything else.

A WebSocket upgrade on ``/`` (the page's own stream, or any other client) is left to
websockets: only plain GETs without ``Upgrade: websocket`` are answered here.

Every file is sent with ``Cache-Control: no-cache`` and an ``ETag``: browsers keep a
copy but revalidate it on each load (a ``304`` without a body), so a page never runs a
script from an older server version. The page gets a strict Content-Security-Policy:
its own script, style and WebSocket only; no inline code, no other origin.
"""

from __future__ import annotations

import hashlib
import http
import importlib.resources
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

log = logging.getLogger("shelf_stream.server")

#: Content types of the file kinds the web directory may hold; other files are ignored.
CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

#: 'self' covers ws:// and wss:// to the page's own host and port (CSP level 3), which
#: is where the page streams to; media and images come from the camera and data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; media-src 'self' blob: mediastream:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

MISSING_TEXT = (
    b"The browser client is not installed with this copy of shelf-stream "
    b"(shelf_stream/web is missing from the package).\n"
)

STATIC_PREFIX = "/static/"
INDEX = "index.html"

#: The shape of websockets' ``process_request`` hook (synchronous form).
RequestHook = Callable[[ServerConnection, Request], Response | None]


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file of the web client, ready to send."""

    body: bytes
    content_type: str
    etag: str


def web_root() -> Traversable:
    """The package's web directory (inside an installed wheel or the source tree)."""
    return importlib.resources.files("shelf_stream") / "web"


def load_files(root: Traversable | None = None) -> dict[str, StaticFile]:
    """Every servable file directly in ``root`` (default: the package's), by name."""
    root = root if root is not None else web_root()
    files: dict[str, StaticFile] = {}
    for entry in root.iterdir():
        content_type = CONTENT_TYPES.get(_suffix(entry.name))
        if content_type is None or not entry.is_file():
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[entry.name] = StaticFile(body, content_type, etag)
    return files


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def web_endpoints(files: Mapping[str, StaticFile] | None = None) -> RequestHook:
    """websockets ``process_request`` hook: the web client at ``/`` and ``/static/*``.

    Returns ``None`` (let the next hook or the WebSocket handshake go on) for upgrades
    and for every path it does not own; ``404`` for a missing ``/static/`` file.
    """
    table = dict(files) if files is not None else load_files()
    if INDEX not in table:
        # A packaging mistake (package data left out): streams still work, the page says why.
        log.warning("the web client is missing from this installation (%s)", web_root())

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if _is_upgrade(request):
            return None
        path = request.path.split("?", 1)[0]
        if path in ("/", "/" + INDEX):
            index = table.get(INDEX)
            if index is None:
                return _plain(http.HTTPStatus.SERVICE_UNAVAILABLE, MISSING_TEXT)
            return _serve(index, request)
        if path.startswith(STATIC_PREFIX):
            found = table.get(path.removeprefix(STATIC_PREFIX))
            if found is None:
                return _plain(http.HTTPStatus.NOT_FOUND, b"not found\n")
            return _serve(found, request)
        return None

    return process_request


def _is_upgrade(request: Request) -> bool:
    upgrade = request.headers.get("Upgrade", "")
    return "websocket" in upgrade.lower()


def _serve(file: StaticFile, request: Request) -> Response:
    headers = _common_headers(file.content_type)
    headers["ETag"] = file.etag
    if file.etag in _etags(request.headers.get("If-None-Match", "")):
        headers["Content-Length"] = "0"
        status = http.HTTPStatus.NOT_MODIFIED
        return Response(status.value, status.phrase, headers, b"")
    headers["Content-Length"] = str(len(file.body))
    status = http.HTTPStatus.OK
    return Response(status.value, status.phrase, headers, file.body)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _plain(status: http.HTTPStatus, body: bytes) -> Response:
    headers = _common_headers("text/plain; charset=utf-8")
    headers["Content-Length"] = str(len(body))
    return Response(status.value, status.phrase, headers, body)


def _common_headers(content_type: str) -> Headers:
    return Headers(
        [
            ("Content-Type", content_type),
            ("Cache-Control", "no-cache"),
            ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            # The camera only for this page itself, never for a frame embedding it.
            ("Permissions-Policy", "camera=(self), microphone=()"),
            ("Connection", "close"),
        ]
    )


def first_response(*hooks: RequestHook) -> RequestHook:
    """One ``process_request`` hook asking each of ``hooks`` in turn; the first answer wins."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        for hook in hooks:
            response = hook(connection, request)
            if response is not None:
                return response
        return None

    return process_request
