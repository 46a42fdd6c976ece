"""The benches' shared ending: the human report on stdout, the JSON one on request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shelf_stream.bench.report import progress, publish, write_json


def test_publish_prints_writes_and_returns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = {"summary": {"fps": 29.5, "path": tmp_path}}
    target = tmp_path / "new" / "folder" / "out.json"
    assert publish("fps 29.5", report, target) is report
    assert capsys.readouterr().out == "fps 29.5\n"
    assert json.loads(target.read_text()) == {"summary": {"fps": 29.5, "path": str(tmp_path)}}


def test_no_path_writes_nothing_and_progress_goes_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_json(None, {"a": 1})
    progress("soak:", "30 s left")
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", "soak: 30 s left\n")
    assert list(tmp_path.iterdir()) == []
