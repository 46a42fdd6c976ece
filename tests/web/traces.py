"""Recorded inputs of the Python client's rate controller and probe, for the page's ports.

``controller_trace`` streams through the simulated link of tests/client/sim.py with the
client's real ``Adaptation``, and records every call into its ``RateController``
(``on_sent``, ``on_feedback``, ``handle_timer``) with the controller's state after it.
``probe_trace`` does the same for ``BandwidthProbe``. The page's controller.js and
probe.js replay the calls in Chromium; their states must match (test_page_modules.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest

from shelf_stream import protocol as p
from shelf_stream.bench.link import LinkConfig
from shelf_stream.client import adaptation as adaptation_module
from shelf_stream.client.controller import RateControlConfig, RateController, Target
from shelf_stream.client.ladder import Rung
from shelf_stream.client.probe import BandwidthProbe, ProbeConfig, choose_start
from tests.client import sim


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def config_js(config: Any) -> dict[str, Any]:
    return {camel(k): v for k, v in dataclasses.asdict(config).items()}


def rung_js(rung: Rung) -> dict[str, Any]:
    return {
        "width": rung.width,
        "height": rung.height,
        "fps": rung.fps,
        "minKbps": rung.min_kbps,
        "maxKbps": rung.max_kbps,
    }


def _state(controller: RateController) -> list[Any]:
    rung = controller.ladder.rung
    return [
        controller.aimd.kbps,
        rung.width,
        rung.height,
        rung.fps,
        controller.aimd.state.value,
        controller.detector.usage.value,
    ]


class _Recording(RateController):
    """A RateController that writes down every call and its state after it."""

    traces: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, config: RateControlConfig, *, start: Any, now: float, ladder: Any = None):
        super().__init__(config, start=start, now=now, ladder=ladder)
        self.trace: dict[str, Any] = {
            "config": config_js(config),
            "start": {
                "bitrateKbps": start.bitrate_kbps,
                "fps": start.fps,
                "width": start.width,
                "height": start.height,
            },
            "now": now,
            "ladder": [rung_js(r) for r in self.ladder.rungs] if ladder else None,
            "ops": [],
            "states": [],
        }
        _Recording.traces.append(self.trace)

    def _record(self, op: list[Any]) -> None:
        self.trace["ops"].append(op)
        self.trace["states"].append(_state(self))

    def on_sent(self, seq: int, size_bytes: int, now: float, *, keyframe: bool = False) -> None:
        super().on_sent(seq, size_bytes, now, keyframe=keyframe)
        self._record(["sent", seq, size_bytes, now, keyframe])

    def on_feedback(self, arrivals: Sequence[tuple[int, int]], now: float) -> None:
        super().on_feedback(arrivals, now)
        self._record(["feedback", [list(a) for a in arrivals], now])

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        self._record(["timer", now])


@contextmanager
def _recording_controllers() -> Iterator[list[dict[str, Any]]]:
    _Recording.traces = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adaptation_module, "RateController", _Recording)
        yield _Recording.traces


def controller_trace(
    schedule: Sequence[tuple[float, LinkConfig]],
    start: Target,
    duration_s: float,
    *,
    config: RateControlConfig | None = None,
    ladder: Sequence[Rung] | None = None,
) -> dict[str, Any]:
    with _recording_controllers() as traces:
        sim.run_stream(schedule, start, duration_s, config=config, ladder=ladder)
    (trace,) = traces
    return trace


class _RecordingProbe(BandwidthProbe):
    traces: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, config: ProbeConfig, now: float) -> None:
        super().__init__(config, now)
        self.trace: dict[str, Any] = {"config": config_js(config), "now": now, "ops": []}
        _RecordingProbe.traces.append(self.trace)

    def next_probes(self, now: float) -> list[tuple[int, int]]:
        out = super().next_probes(now)
        self.trace["ops"].append(["next", now, [list(o) for o in out]])
        return out

    def on_ack(self, ack: p.ProbeAck, now: float) -> None:
        super().on_ack(ack, now)
        self.trace["ops"].append(["ack", [ack.probe_id, ack.send_us, ack.arrival_us], now])

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        self.trace["ops"].append(["timer", now])


def probe_trace(link: LinkConfig, **start: Any) -> dict[str, Any]:
    """A probe over ``link``, its calls, its result and the start the client picks."""
    _RecordingProbe.traces = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sim, "BandwidthProbe", _RecordingProbe)
        run = sim.run_probe(link)
    (trace,) = _RecordingProbe.traces
    result = run.probe.result()
    trace["result"] = {camel(k): v for k, v in dataclasses.asdict(result).items()}
    choice = choose_start(result, **start)
    trace["startArgs"] = {camel(k): v for k, v in start.items()}
    trace["choice"] = [choice.bitrate_kbps, choice.width, choice.height, choice.fps]
    return trace
