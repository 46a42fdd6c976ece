"""A real RTSP camera for the tests: GStreamer's RTSP server streaming a clip in real time.

Run with the system Python, which has PyGObject (the venv does not):

    /usr/bin/python3 tests/rtsp/camera.py --port 8554 --clip tests/data/rtsp/bottles.hevc.mkv

It serves ``rtsp://127.0.0.1:PORT/cam`` (``--user``/``--password``: basic auth;
``--cert``/``--key``: ``rtsps://`` only, TLS with that PEM certificate), prints
``ready rtsp://...`` once it listens and streams the clip (Matroska, H.265 or H.264) at
its own pace, with the parameter sets in band before every keyframe, like IP cameras.
Each client gets its own pipeline from the clip's start. SIGTERM stops it.
``--check`` only says whether GStreamer and its parts are installed (exit status 0/1).

The module imports nothing outside the standard library at the top, so that the tests
(in the venv, without PyGObject) can read ``APT_PACKAGES``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

#: What this needs on Debian/Ubuntu (``.ci/run`` installs it).
APT_PACKAGES = (
    "python3-gi",
    "gir1.2-gst-rtsp-server-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
)
INSTALL = "apt-get install -y " + " ".join(APT_PACKAGES)

_ELEMENTS = {"hevc": ("h265parse", "rtph265pay"), "h264": ("h264parse", "rtph264pay")}


def _gst() -> tuple[Any, Any, Any]:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    return GLib, Gst, GstRtspServer


def check() -> list[str]:
    """What is missing (empty: all there)."""
    try:
        _, gst, _ = _gst()
    except (ImportError, ValueError) as exc:
        return [f"PyGObject with GstRtspServer 1.0 ({exc})"]
    names = {"filesrc", "matroskademux"} | {e for pair in _ELEMENTS.values() for e in pair}
    return sorted(name for name in names if gst.ElementFactory.find(name) is None)


def launch_line(clip: str, codec: str) -> str:
    parse, pay = _ELEMENTS[codec]
    # config-interval=-1: VPS/SPS/PPS with every keyframe, in band.
    return (
        f"( filesrc location={clip} ! matroskademux ! {parse} config-interval=-1 "
        f"! {pay} name=pay0 pt=96 config-interval=-1 )"
    )


def _secure(server: Any, factory: Any, rtsp: Any, args: argparse.Namespace) -> None:
    """Basic auth (``--user``) and TLS (``--cert``); the media needs a role either way."""
    auth = rtsp.RTSPAuth()
    token = rtsp.RTSPToken()
    token.set_string(rtsp.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "camera-user")
    if args.user:
        auth.add_basic(rtsp.RTSPAuth.make_basic(args.user, args.password or ""), token)
    else:
        auth.set_default_token(token)
    if args.cert:
        from gi.repository import Gio

        auth.set_tls_certificate(Gio.TlsCertificate.new_from_files(args.cert, args.key))
    server.set_auth(auth)
    permissions = rtsp.RTSPPermissions()
    for permission in (rtsp.RTSP_PERM_MEDIA_FACTORY_ACCESS, rtsp.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT):
        permissions.add_permission_for_role("camera-user", permission, True)
    factory.set_permissions(permissions)


def serve(args: argparse.Namespace) -> None:
    glib, _, rtsp = _gst()
    server = rtsp.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = rtsp.RTSPMediaFactory()
    factory.set_launch(launch_line(args.clip, args.codec))
    factory.set_shared(False)
    if args.user or args.cert:
        _secure(server, factory, rtsp, args)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    loop = glib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        glib.unix_signal_add(glib.PRIORITY_DEFAULT, signum, loop.quit)
    scheme = "rtsps" if args.cert else "rtsp"
    print(f"ready {scheme}://127.0.0.1:{args.port}{args.mount}", flush=True)
    loop.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the installation")
    parser.add_argument("--port", type=int)
    parser.add_argument("--clip")
    parser.add_argument("--codec", choices=sorted(_ELEMENTS), default="hevc")
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--cert", help="PEM certificate: serve rtsps:// (with --key)")
    parser.add_argument("--key", help="PEM private key of --cert")
    args = parser.parse_args()
    if args.check:
        missing = check()
        if missing:
            sys.exit(f"missing: {', '.join(missing)}; install: {INSTALL}")
        return
    if args.port is None or args.clip is None:
        parser.error("--port and --clip are required")
    serve(args)


if __name__ == "__main__":
    main()
