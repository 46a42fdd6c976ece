"""How fast the rate controller recovers after congestion, in the simulated uplink.

Runs the client's real ``Adaptation`` (and so ``RateController``, which the page's
``web/controller.js`` ports) through ``tests/client/sim.py``: for each case the link
carries LINK kbit/s, then a share of it for 5 s from t = 10 s, then LINK again, and the
script prints how long after the congestion the target came within 20 % of the link's
sustainable rate (min(link, the top rung's ceiling); the target's median over the last
second, as ``tests/web/test_rate.py`` reads the page), the rung changes, the p95 queueing
delay after the congestion and the link's utilisation 15-30 s after it. ``--encoder-lag``
makes the simulated encoder follow each new plan that much later (Chromium's software
H.264 encoder followed a lowered bitrate a second or more late).

    python benchmarks/rate_recovery.py [--encoder-lag 0.5] [--json out.json]

Deterministic: the same code gives the same figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shelf_stream.bench.link import LinkConfig
from shelf_stream.client.controller import RateControlConfig, Target
from shelf_stream.client.ladder import default_ladder
from tests.client.sim import percentile, run_stream

CONGESTION_START_S, CONGESTION_S, AFTER_S = 10.0, 5.0, 30.0
SHARES = (0.6, 0.5, 0.25)
RTTS_MS = (35.0, 150.0, 400.0)
STREAMS = ((640, 480, 15, 600.0), (1280, 720, 30, 3000.0))  # the page's, the CLI's


@dataclass(frozen=True)
class Case:
    width: int
    height: int
    fps: int
    link_kbps: float
    congested_kbps: float
    rtt_ms: float


def run_case(case: Case, encoder_lag_s: float) -> dict[str, float | int | None]:
    ladder = default_ladder(case.width, case.height, case.fps)
    sustainable = min(case.link_kbps, ladder[0].max_kbps)
    end = CONGESTION_START_S + CONGESTION_S
    schedule = [
        (0.0, LinkConfig(case.rtt_ms, case.link_kbps / 1000)),
        (CONGESTION_START_S, LinkConfig(case.rtt_ms, case.congested_kbps / 1000)),
        (end, LinkConfig(case.rtt_ms, case.link_kbps / 1000)),
    ]
    config = RateControlConfig(rtt_ms=case.rtt_ms, max_bitrate_kbps=max(4000, case.link_kbps))
    run = run_stream(
        schedule,
        Target(sustainable / 2, case.fps, case.width, case.height),
        end + AFTER_S,
        config=config,
        ladder=ladder,
        encoder_lag_s=encoder_lag_s,
    )
    values = [target.bitrate_kbps for _, target in run.samples]
    recovery = None
    for i, (t, _) in enumerate(run.samples):
        median = statistics.median(values[max(0, i - 9) : i + 1])  # the last second
        if t >= end and abs(median - sustainable) <= 0.2 * sustainable:
            recovery = round(t - end, 1)
            break
    return {
        "recovery_s": recovery,
        "rung_changes": len(run.rung_changes()),
        "queue_p95_ms": round(percentile(run.queue_delays(end, end + AFTER_S), 0.95)),
        "utilisation": round(run.utilisation(end + 15, end + AFTER_S, case.link_kbps / 1000), 2),
    }


def cases() -> list[Case]:
    return [
        Case(w, h, fps, link, link * share, rtt)
        for rtt in RTTS_MS
        for share in SHARES
        for w, h, fps, link in STREAMS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder-lag", type=float, default=0.0, metavar="S")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for case in cases():
        figures = run_case(case, args.encoder_lag)
        rows.append({**case.__dict__, **figures})
        recovery = figures["recovery_s"]
        print(
            f"{case.width}x{case.height}@{case.fps} {case.link_kbps:5.0f} -> "
            f"{case.congested_kbps:5.0f} kbit/s, {case.rtt_ms:3.0f} ms RTT: back within 20 % "
            f"after {'-' if recovery is None else recovery} s, {figures['rung_changes']} rung "
            f"changes, queue p95 {figures['queue_p95_ms']} ms, utilisation "
            f"{figures['utilisation']}"
        )
    # Not recovered within the run counts as the run's length after the congestion.
    times = [AFTER_S if r["recovery_s"] is None else r["recovery_s"] for r in rows]
    print(f"sum {sum(times):.1f} s, worst {max(times):.1f} s over {len(rows)} cases")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
