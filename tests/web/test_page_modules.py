"""The page's modules in headless Chromium against the Python they mirror.

- protocol.js ↔ protocol.py: vectors of every message type made by protocol.py are
  decoded and re-encoded by protocol.js; protocol.py parses what protocol.js encoded; both
  refuse the same malformed messages.
- controller.js ↔ controller.py, probe.js ↔ probe.py: one recorded trace (traces.py)
  into both gives the same state after every call.
- tracker.js (live boxes) and framering.js (the synchronised view's bitmaps) on synthetic
  input whose right answer is known.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from shelf_stream import protocol as p
from shelf_stream.bench.link import LinkConfig
from shelf_stream.client.bitrate_fit import BitrateFit
from shelf_stream.client.controller import RateControlConfig, Target
from shelf_stream.client.ladder import Rung, default_ladder
from shelf_stream.errors import RemoteProtocolError
from tests.web import cdp, traces
from tests.web.conftest import StubDetector, open_page, serving

CLASS_NAMES = ("person", "bicycle", "car")
# The controller port must reproduce Python's state after every call: the same rung and
# AIMD state always, the bitrate within this relative difference (IEEE doubles on both
# sides, the same operations in the same order; Python 3.12+'s compensated sum() and
# libm's pow() against V8's may differ in the last bits).
KBPS_TOLERANCE = 1e-9


JS = Path(__file__).parent / "js"


async def _run_in_page(
    chromium: cdp.ChromiumProcess, stub: StubDetector, script: str, data: Any
) -> Any:
    """Run ``js/<script>``'s ``run(data)`` in a page served by shelf-stream; its answer."""
    async with serving(stub) as server, cdp.connect(chromium) as browser:
        session = await open_page(browser, f"http://127.0.0.1:{server.port}/")
        await asyncio.sleep(0.2)
        source = (JS / script).read_text()
        expression = (
            f"(async () => {{ {source}; return JSON.stringify(await run({json.dumps(data)})); }})()"
        )
        raw = await browser.evaluate(session, expression, await_promise=True)
        return json.loads(raw)


# ------------------------------------------------------------------------------ protocol


def _events() -> list[p.Event]:
    big = 2**53 - 1  # the largest integer a JavaScript Number holds exactly
    detections = (
        p.Detection(0, 0.875, 10.5, 20.25, 300.0, 400.125, "person"),
        p.Detection(2, 0.3, 0.0, 0.0, 1.0e-3, 639.9, "car"),
    )
    return [
        p.Hello("h264", 640, 480, 15.0, token=None, client="browser"),
        p.Hello("hevc", 1280, 720, 29.97, token="sécret", client="shelf-stream/0.1 ✓"),
        p.Ready("7", "yolox_nano", CLASS_NAMES, 4 * 1024 * 1024, 3840, 2160, 120.0),
        p.Video(0, 0, 0, True, b"\x00\x00\x00\x01\x67\x42"),
        p.Video(2**32 - 1, big, -123456789, False, bytes(range(256))),
        p.Result(9000, 1_700_000_000_000_000, 2100, 300, 9800, 12600, ()),
        p.Result(big, 42, 2**32 - 1, 0, 1, 2, detections),
        *(p.Dropped(3000 * i, 77, reason) for i, reason in enumerate(p.DropReason)),
        *(p.KeyframeRequest(reason) for reason in p.KeyframeReason),
        *(p.Error(code, f"{code.name.lower()}: détail") for code in p.ErrorCode),
        p.Error(p.ErrorCode.INTERNAL, ""),
        p.Feedback(()),
        p.Feedback(((0, 12_345_678_000), (1, 12_345_711_333), (2**32 - 1, big))),
        p.Bye(),
        p.Probe(0, 5_000_000, 0),
        p.Probe(2**32 - 1, big, 100),
        p.ProbeAck(3, 5_000_000, 12_345_678_901, 6012),
    ]


def _parse(data: bytes) -> p.Event:
    """protocol.py's parser for any record, either direction (what the ends would see)."""
    kind, flags, length = p.HEADER.unpack_from(data)
    assert length == len(data) - p.HEADER.size
    body = data[p.HEADER.size :]
    parsers = {
        p.MessageType.HELLO: lambda: p.parse_hello(body, p.ServerLimits()),
        p.MessageType.READY: lambda: p.parse_ready(body),
        p.MessageType.VIDEO: lambda: p.parse_video(flags, body),
        p.MessageType.RESULT: lambda: p.parse_result(body, CLASS_NAMES),
        p.MessageType.DROPPED: lambda: p.parse_dropped(body),
        p.MessageType.KEYFRAME_REQUEST: lambda: p.parse_keyframe_request(body),
        p.MessageType.ERROR: lambda: p.parse_error(body),
        p.MessageType.FEEDBACK: lambda: p.parse_feedback(body),
        p.MessageType.BYE: lambda: p.Bye(),
        p.MessageType.PROBE: lambda: p.parse_probe(body),
        p.MessageType.PROBE_ACK: lambda: p.parse_probe_ack(body),
    }
    return parsers[p.MessageType(kind)]()


def _js_view(event: p.Event) -> dict[str, Any]:
    """What protocol.js must decode ``event`` into (its field names)."""
    match event:
        case p.Hello():
            return {"type": "hello", "codec": event.codec, "width": event.width,
                    "height": event.height, "fps": event.fps, "token": event.token,
                    "client": event.client}  # fmt: skip
        case p.Ready():
            return {"type": "ready", "session": event.session, "model": event.model,
                    "classNames": list(event.class_names),
                    "maxMessageBytes": event.max_message_bytes, "maxWidth": event.max_width,
                    "maxHeight": event.max_height, "maxFps": event.max_fps}  # fmt: skip
        case p.Video():
            return {"type": "video", "seq": event.seq, "pts": event.pts,
                    "captureUs": event.capture_us, "keyframe": event.keyframe,
                    "data": list(event.data)}  # fmt: skip
        case p.Result():
            return {"type": "result", "pts": event.pts, "captureUs": event.capture_us,
                    "decodeUs": event.decode_us, "queueUs": event.queue_us,
                    "inferUs": event.infer_us, "totalUs": event.total_us,
                    "detections": [{"classId": d.class_id, "label": d.label, "score": d.score,
                                    "x1": d.x1, "y1": d.y1, "x2": d.x2, "y2": d.y2}
                                   for d in event.detections]}  # fmt: skip
        case p.Dropped():
            return {"type": "dropped", "pts": event.pts, "captureUs": event.capture_us,
                    "reason": event.reason.name.lower()}  # fmt: skip
        case p.KeyframeRequest():
            return {"type": "keyframe_request", "reason": event.reason.name.lower()}
        case p.Error():
            return {"type": "error", "code": int(event.code), "name": event.code.name.lower(),
                    "message": event.message}  # fmt: skip
        case p.Feedback():
            return {"type": "feedback", "arrivals": [list(a) for a in event.arrivals]}
        case p.Bye():
            return {"type": "bye"}
        case p.Probe():
            return {"type": "probe", "probeId": event.probe_id, "sendUs": event.send_us,
                    "padding": event.padding}  # fmt: skip
        case p.ProbeAck():
            return {"type": "probe_ack", "probeId": event.probe_id, "sendUs": event.send_us,
                    "arrivalUs": event.arrival_us, "size": event.size}  # fmt: skip
    raise AssertionError(event)


def _streaming_client() -> p.ClientConnection:
    """protocol.py's client end after the handshake: what the page is, in Python."""
    client = p.ClientConnection()
    client.send(p.Hello("h264", 640, 480, 15.0))
    client.receive_message(p.encode_event(_events()[2]))
    client.events_received()
    return client


def _malformed() -> list[bytes]:
    """Records protocol.py refuses (checked below), each for its own reason."""
    result = p.encode_event(p.Result(1, 2, 3, 4, 5, 6, ()))
    dropped = p.encode_event(p.Dropped(1, 2, p.DropReason.GAP))
    return [
        b"\x04\x00\x00\x00",  # shorter than a header
        result[:-1],  # body shorter than its header says
        result + b"\x00",  # longer
        p.HEADER.pack(p.MessageType.RESULT, 0, 33) + result[6:] + b"\x01",  # 1 detection, no bytes
        dropped[:-1] + b"\x63",  # unknown drop reason
        p.HEADER.pack(p.MessageType.KEYFRAME_REQUEST, 0, 1) + b"\x09",  # unknown reason
        p.HEADER.pack(p.MessageType.DROPPED, 1, 17) + dropped[6:],  # flags on a non-video
        p.HEADER.pack(p.MessageType.FEEDBACK, 0, 2) + b"\x00\x01",  # 1 entry, no bytes
        p.HEADER.pack(p.MessageType.PROBE_ACK, 0, 3) + b"abc",
        p.HEADER.pack(p.MessageType.READY, 0, 2) + b"[]",  # JSON, not an object
        p.HEADER.pack(99, 0, 0),  # unknown type
    ]


def test_protocol_js_agrees_with_protocol_py_both_ways(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    events = _events()
    encoded = [p.encode_event(e) for e in events]
    malformed = _malformed()
    for data in malformed:
        with pytest.raises(RemoteProtocolError):
            _streaming_client().receive_message(data)
    data = {
        "vectors": [e.hex() for e in encoded],
        "malformed": [m.hex() for m in malformed],
        "classNames": list(CLASS_NAMES),
    }
    out = asyncio.run(_run_in_page(chromium, stub_detector, "protocol_vectors.js", data))
    server_types = {"ready", "result", "dropped", "keyframe_request", "error", "feedback",
                    "probe_ack"}  # fmt: skip
    for event, original, got in zip(events, encoded, out["vectors"], strict=True):
        # Python → JS: the page decodes every field as protocol.py does.
        expected = _js_view(_parse(original))  # f32 fields as the wire carries them
        assert got["decoded"] == expected, event
        # JS → Python: what the page encodes parses back into the same event.
        reencoded = bytes.fromhex(got["reencoded"])
        assert _parse(reencoded) == _parse(original), event
        if not isinstance(event, p.Hello | p.Ready):
            # Binary records are byte for byte the same (JSON spacing and number
            # formatting may differ: 15.0 is 15 in JavaScript; both parse the same).
            assert reencoded == original, event
        # decodeMessage, the page's receiving side, takes only what a server may send.
        from_server = expected["type"] in server_types
        assert got["fromServer"] == (expected["type"] if from_server else "refused"), event
    assert out["malformed"] == ["refused"] * len(malformed)


# ---------------------------------------------------------------------------- controller


def _controller_traces() -> list[dict[str, Any]]:
    wide = RateControlConfig(max_bitrate_kbps=20_000)
    flat = [Rung(1280, 720, 30, 100, 20_000)]
    step = [(0.0, LinkConfig(35, 10)), (10.0, LinkConfig(35, 2)), (20.0, LinkConfig(35, 10))]
    # The page's own case: 640x480@15 with its ladder, 400 ms of RTT, a congested spell.
    ladder = default_ladder(640, 480, 15)
    slow = [(0.0, LinkConfig(400, 0.6)), (8.0, LinkConfig(400, 0.15)), (14.0, LinkConfig(400, 0.6))]
    page = RateControlConfig(max_bitrate_kbps=ladder[0].max_kbps, rtt_ms=400)
    return [
        traces.controller_trace(step, Target(1500, 30, 1280, 720), 30.0, config=wide, ladder=flat),
        traces.controller_trace(slow, Target(300, 15, 640, 480), 30.0, config=page, ladder=ladder),
    ]


def test_controller_js_follows_the_python_controller(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    recorded = _controller_traces()
    out = asyncio.run(_run_in_page(chromium, stub_detector, "controller_replay.js", recorded))
    worst = 0.0
    for trace, js_states in zip(recorded, out, strict=True):
        python_states = trace["states"]
        assert len(js_states) == len(python_states) > 500
        kbps = [s[0] for s in python_states]
        assert max(kbps) > 1.5 * min(kbps)  # the trace moved the rate: a real comparison
        for i, (py, js) in enumerate(zip(python_states, js_states, strict=True)):
            assert js[1:] == py[1:], f"call {i} ({trace['ops'][i][0]}): {js} != {py}"
            worst = max(worst, abs(js[0] - py[0]) / py[0])
            assert math.isclose(js[0], py[0], rel_tol=KBPS_TOLERANCE), f"call {i}: {js} != {py}"
    # Printed for the record (pytest -s): how close the port is.
    print(f"controller.js vs controller.py: worst relative bitrate difference {worst:.3g}")
    for trace in recorded:  # both traces went through congestion, not just a ramp
        assert {"increase", "hold"} <= {s[4] for s in trace["states"]}
        assert {"decrease", "drain"} & {s[4] for s in trace["states"]}
    assert len({tuple(s[1:4]) for s in recorded[1]["states"]}) > 1  # the ladder moved too


def test_controller_js_defaults_are_the_python_controllers(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    # The replay above hands the port Python's settings; the page runs on its own.
    defaults = asyncio.run(_run_in_page(chromium, stub_detector, "controller_defaults.js", None))
    assert defaults == traces.config_js(RateControlConfig())


def test_probe_js_measures_and_starts_as_the_python_probe(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    start = {"max_bitrate_kbps": 800.0, "fps": 15.0, "width": 640, "height": 480}
    recorded = [
        traces.probe_trace(LinkConfig(rtt, mbit), **start)
        for rtt, mbit in ((150, 0.6), (400, 0.6), (35, 10), (5, 200))
    ]
    out = asyncio.run(_run_in_page(chromium, stub_detector, "probe_replay.js", recorded))
    for trace, js in zip(recorded, out, strict=True):
        assert js["sameProbes"]
        for key, value in trace["result"].items():
            if isinstance(value, float):
                assert math.isclose(js["result"][key], value, rel_tol=1e-12), key
            else:
                assert js["result"][key] == value, key
        assert js["choice"] == trace["choice"]


# ------------------------------------------------------------------------ tracker, ring

LATENCY_MS, FRAME_MS, SPEED = 250.0, 1000 / 15, 0.2  # 0.2 px/ms: a 200 px/s pan


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_tracker_and_frame_ring_on_synthetic_scenes(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    data = {"latencyMs": LATENCY_MS, "frameMs": FRAME_MS, "speedPxPerMs": SPEED}
    out = asyncio.run(_run_in_page(chromium, stub_detector, "tracker_cases.js", data))
    steady = out["steady"]
    print(
        f"tracker, steady 200 px/s pan at {LATENCY_MS:g} ms: raw mean "
        f"{_mean(steady['raw']):.1f} px, compensated max {max(steady['compensated']):.3f} px; "
        f"after the pan stops: {out['afterStop']}"
    )
    # Raw boxes trail by the speed times (latency + the newest result's age).
    assert _mean(steady["raw"]) > SPEED * LATENCY_MS
    # Extrapolated to the frame on screen, a steady pan leaves (almost) nothing.
    assert max(steady["compensated"]) < 1.0
    # A pan that stops: with the gyroscope the boxes stop with it; without, they overshoot
    # for about one latency, by up to the distance the pan covers in it.
    assert out["afterStop"]["gyro"] < 3.0
    assert out["afterStop"]["noGyro"] > 0.5 * SPEED * LATENCY_MS
    fade = out["fade"]
    assert fade["at300"] == 1.0 and 0.2 < fade["at900"] < 0.8 and fade["at1400"] is None
    # Identities: each track keeps its object (its position less the pan stays put).
    first = out["ids"][1]
    assert all(step == first for step in out["ids"][1:]), out["ids"]
    # The newcomer moves with the scene from its first result on.
    assert out["sceneVx"] == pytest.approx(SPEED, rel=0.01)
    ring = out["ring"]
    assert ring["openAfterAdd"] == 5  # bounded: the three oldest were closed on eviction
    assert ring["afterTake"] == {"open": 2, "size": 1, "taken": 6, "hasBitmap": True}
    assert ring["openAtEnd"] == 0 and ring["sizeAtEnd"] == 0


def test_bitrate_fit_js_learns_as_the_python_one(
    chromium: cdp.ChromiumProcess, stub_detector: StubDetector
) -> None:
    fit = BitrateFit()
    frames, expected = [], []
    for i in range(400):  # an encoder giving 70-110 % of its budget, then a still scene
        share = 0.7 + 0.4 * ((i * 37) % 100) / 100 if i < 300 else 0.3
        kbps, fps = (600.0, 15.0) if i < 200 else (350.0, 7.5)
        size = round(kbps * 1000 / 8 / fps * share)
        now, target = i / fps, 300.0 + i
        fit.on_encoded(size, kbps, fps, now)
        frames.append([size, kbps, fps, now, target])
        expected.append([fit.factor, fit.encoder_kbps(target)])
    out = asyncio.run(_run_in_page(chromium, stub_detector, "fit_replay.js", frames))
    assert out == expected
    assert len({factor for factor, _ in expected}) > 3  # it did learn, several times
