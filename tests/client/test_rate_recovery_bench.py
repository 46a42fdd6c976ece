"""benchmarks/rate_recovery.py reads what it says on a case it must recover from."""

from __future__ import annotations

import runpy
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "rate_recovery.py"


def test_the_recovery_bench_measures_a_mild_congestion() -> None:
    bench = runpy.run_path(str(BENCH))
    case = bench["Case"](640, 480, 15, 600.0, 360.0, 150.0)
    figures = bench["run_case"](case, encoder_lag_s=0.0)
    assert figures["recovery_s"] is not None and 0 < figures["recovery_s"] < 10
    assert figures["rung_changes"] == 0  # 360 of 600 kbit/s stays on the top rung
    assert 0.7 < figures["utilisation"] <= 1.0
    assert len(bench["cases"]()) == 18
