"""Shared fixtures: the real model (the one the package ships) and a real server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def test_model_path() -> Path:
    """YOLOX-Nano as the package ships it (sha256 checked), or $SHELF_STREAM_TEST_MODEL."""
    from shelf_stream.engine.models import resolve_model

    configured = os.environ.get("SHELF_STREAM_TEST_MODEL")
    return resolve_model(configured or None, env={})


test_model_path.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The YOLOX-Nano ONNX model the package ships (or $SHELF_STREAM_TEST_MODEL)."""
    return test_model_path()


@pytest.fixture(scope="module")
def serve_port(model_path: Path) -> Iterator[int]:
    """A real ``shelf-stream serve`` process for the module's tests; yields its port."""
    from shelf_stream.bench.loopback import free_port, start_server

    port = free_port()
    serve = start_server(port, str(model_path))
    try:
        yield port
    finally:
        serve.terminate()
        serve.wait(timeout=15)


NO_SKIPS_ENV = "SHELF_STREAM_NO_SKIPS"


def _fail_if_skipped(report: pytest.TestReport | pytest.CollectReport) -> None:
    """With ``SHELF_STREAM_NO_SKIPS`` set (``scripts/test``, CI), a skip is a failure: a
    missing part must never pass for a working one."""
    if not os.environ.get(NO_SKIPS_ENV) or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped, but {NO_SKIPS_ENV} allows no skips: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    _fail_if_skipped(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    report = yield
    _fail_if_skipped(report)
    return report
