"""The browser client's figures on loopback: headless Chromium + an in-process server.

    python benchmarks/browser_loopback.py [SECONDS] [MODEL]

Streams the panning shelf scene (tests/web/scene.py) through Chromium's fake camera (the
same page and harness as tests/web/test_browser.py), keeps streaming SECONDS (default 30)
after the first boxes, and prints what the page measured (FPS, kbit/s, latency p50/p95
on its own clock).
Needs Debian's chromium (``scripts/test`` installs it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shelf_stream.engine import EngineConfig, create_detector, resolve_model  # noqa: E402
from tests.web import cdp  # noqa: E402
from tests.web.test_browser import run_page  # noqa: E402


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    model = resolve_model(sys.argv[2] if len(sys.argv) > 2 else None)  # default: packaged
    browser = cdp.find_chromium()
    if browser is None:
        sys.exit(cdp.INSTALL_HINT)
    detector = create_detector(EngineConfig(model_path=model))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = asyncio.run(run_page(browser, detector, Path(tmp), extra_s=seconds))
    finally:
        detector.close()
    keys = ("codec", "width", "height", "fps", "kbps", "targetKbps", "latencyP50", "latencyP95",
            "framesSent", "results", "dropped", "framesSkipped", "labels")  # fmt: skip
    print(json.dumps({key: run.stats.get(key) for key in keys}, indent=2))


if __name__ == "__main__":
    main()
