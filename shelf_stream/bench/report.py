"""What every bench does at its end: print the report, write the JSON one if asked."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def write_json(path: Path | None, report: Any) -> None:
    """``report`` as indented JSON at ``path`` (its folder made); nothing for None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def publish(text: str, report: dict[str, Any], json_path: Path | None) -> dict[str, Any]:
    """Print ``text`` (the human report), write ``report`` to ``json_path``; return it."""
    print(text)
    write_json(json_path, report)
    return report


def progress(prefix: str, text: str) -> None:
    """A progress line on stderr, apart from the report on stdout."""
    print(f"{prefix} {text}", file=sys.stderr, flush=True)
