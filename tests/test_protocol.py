"""Literal-bytes tests of the sans-I/O wire protocol (shelf_stream.protocol).

Expected bytes are written by hand from the layout in the module docstring, never
produced by the encoder under test.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from shelf_stream.errors import LocalProtocolError, RemoteProtocolError
from shelf_stream.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_ERROR_TEXT_BYTES,
    MAX_JSON_BYTES,
    MAX_TOKEN_CHARS,
    Bye,
    ClientConnection,
    Detection,
    Dropped,
    DropReason,
    Error,
    ErrorCode,
    Feedback,
    Hello,
    KeyframeReason,
    KeyframeRequest,
    Probe,
    ProbeAck,
    Ready,
    Result,
    ServerConnection,
    ServerLimits,
    Video,
    encode_event,
)

# ------------------------------------------------------------------ hand-made bytes

CLASS_NAMES = ("bottle", "can")

HELLO_JSON = (
    b'{"protocol":1,"codec":"hevc","width":640,"height":480,"fps":30.0,'
    b'"time_base":[1,90000],"client":"cam"}'
)
HELLO_BYTES = b"\x01\x00\x00\x00\x00\x66" + HELLO_JSON  # 102 bytes of JSON
HELLO = Hello(codec="hevc", width=640, height=480, fps=30.0, client="cam")

READY_JSON = (
    b'{"protocol":1,"session":"s1","model":"yolox-s","class_names":["bottle","can"],'
    b'"max_message_bytes":4194304,"max_width":3840,"max_height":2160,"max_fps":120.0}'
)
READY_BYTES = b"\x02\x00\x00\x00\x00\x9d" + READY_JSON  # 157 bytes of JSON
READY = Ready(
    session="s1",
    model="yolox-s",
    class_names=CLASS_NAMES,
    max_message_bytes=4 * 1024 * 1024,
    max_width=3840,
    max_height=2160,
    max_fps=120.0,
)

ACCESS_UNIT = b"\x00\x00\x00\x01\x40\x01"
VIDEO_BYTES = (
    b"\x03\x01\x00\x00\x00\x1a"  # VIDEO, keyframe, 20 + 6 bytes
    b"\x00\x00\x00\x07"  # seq 7
    b"\x00\x00\x00\x00\x00\x00\x0b\xb8"  # pts 3000
    b"\x00\x00\x00\x00\x07\x5b\xcd\x15"  # capture_us 123456789
) + ACCESS_UNIT
VIDEO = Video(seq=7, pts=3000, capture_us=123456789, keyframe=True, data=ACCESS_UNIT)

RESULT_BYTES = (
    b"\x04\x00\x00\x00\x00\x38"  # RESULT, 34 + 22 bytes
    b"\x00\x00\x00\x00\x00\x00\x0b\xb8"  # pts 3000
    b"\xff\xff\xff\xff\xff\xff\xff\xfe"  # capture_us -2
    b"\x00\x00\x03\xe8"  # decode_us 1000
    b"\x00\x00\x00\x02"  # queue_us 2
    b"\x00\x00\x00\x03"  # infer_us 3
    b"\x00\x01\x00\x00"  # total_us 65536
    b"\x00\x01"  # count 1
    b"\x00\x01"  # class_id 1
    b"\x3f\x00\x00\x00"  # score 0.5
    b"\x3f\x80\x00\x00\x40\x00\x00\x00"  # x1 1.0, y1 2.0
    b"\x41\x20\x00\x00\x41\xa0\x00\x00"  # x2 10.0, y2 20.0
)
RESULT = Result(
    pts=3000,
    capture_us=-2,
    decode_us=1000,
    queue_us=2,
    infer_us=3,
    total_us=65536,
    detections=(Detection(1, 0.5, 1.0, 2.0, 10.0, 20.0, label="can"),),
)

DROPPED_BYTES = (
    b"\x05\x00\x00\x00\x00\x11"  # DROPPED, 17 bytes
    b"\x00\x00\x00\x00\x00\x01\x5f\x90"  # pts 90000
    b"\xff\xff\xff\xff\xff\xff\xff\xff"  # capture_us -1
    b"\x03"  # SUPERSEDED
)
DROPPED = Dropped(pts=90000, capture_us=-1, reason=DropReason.SUPERSEDED)

KEYFRAME_BYTES = b"\x06\x00\x00\x00\x00\x01\x02"  # KEYFRAME_REQUEST, GAP
KEYFRAME = KeyframeRequest(KeyframeReason.GAP)

ERROR_BYTES = b"\x07\x00\x00\x00\x00\x05\x00\x04bad"  # ERROR, BAD_HELLO, "bad"
ERROR = Error(ErrorCode.BAD_HELLO, "bad")

BYE_BYTES = b"\x09\x00\x00\x00\x00\x00"

# ------------------------------------------------------------------------- helpers


def record(kind: int, body: bytes, flags: int = 0) -> bytes:
    """One record put together by hand: type, flags, big-endian u32 length, body."""
    return bytes([kind, flags]) + len(body).to_bytes(4, "big") + body


def hello_record(**changes: Any) -> bytes:
    """A Hello record whose JSON differs from a valid one by ``changes`` (None: drop)."""
    obj: dict[str, Any] = {
        "protocol": 1,
        "codec": "hevc",
        "width": 640,
        "height": 480,
        "fps": 30,
        "time_base": [1, 90000],
    }
    obj.update(changes)
    obj = {key: value for key, value in obj.items() if value is not None}
    return record(1, json.dumps(obj).encode())


def ready_record(**changes: Any) -> bytes:
    obj = json.loads(READY_JSON)
    obj.update(changes)
    obj = {key: value for key, value in obj.items() if value is not None}
    return record(2, json.dumps(obj).encode())


def handshaking_client() -> ClientConnection:
    """A client that has sent its Hello and waits for Ready."""
    client = ClientConnection()
    client.send(HELLO)
    return client


def streaming_client() -> ClientConnection:
    client = handshaking_client()
    client.receive_message(READY_BYTES)
    assert client.events_received() == [READY]
    return client


def streaming_server(limits: ServerLimits | None = None) -> ServerConnection:
    """A server that has received a Hello and answered Ready."""
    server = ServerConnection(limits)
    server.receive_message(HELLO_BYTES)
    assert server.events_received() == [HELLO]
    server.send(READY)
    return server


T = TypeVar("T")


def only_event(conn: ServerConnection | ClientConnection, kind: type[T]) -> T:
    """The one event the connection has produced, which must be a ``kind``."""
    [event] = conn.events_received()
    assert isinstance(event, kind)
    return event


def receive_fails(
    conn: ServerConnection | ClientConnection, data: bytes | str
) -> RemoteProtocolError:
    """Feed one whole message that must be refused; return the error."""
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_message(data)
    assert conn.state == "failed"
    return caught.value


# ------------------------------------------------------------- literal round trips

# (event, its bytes, a factory for the connection that receives it)
LITERALS = [
    pytest.param(HELLO, HELLO_BYTES, ServerConnection, id="hello"),
    pytest.param(READY, READY_BYTES, handshaking_client, id="ready"),
    pytest.param(VIDEO, VIDEO_BYTES, streaming_server, id="video"),
    pytest.param(RESULT, RESULT_BYTES, streaming_client, id="result"),
    pytest.param(DROPPED, DROPPED_BYTES, streaming_client, id="dropped"),
    pytest.param(KEYFRAME, KEYFRAME_BYTES, streaming_client, id="keyframe-request"),
    pytest.param(ERROR, ERROR_BYTES, ServerConnection, id="error-to-server"),
    pytest.param(ERROR, ERROR_BYTES, ClientConnection, id="error-to-client"),
    pytest.param(ERROR, ERROR_BYTES, streaming_client, id="error-to-streaming-client"),
    pytest.param(Bye(), BYE_BYTES, streaming_server, id="bye"),
]


@pytest.mark.parametrize(("event", "wire", "make_receiver"), LITERALS)
def test_receive_message_parses_literal_bytes(event, wire, make_receiver):
    conn = make_receiver()
    conn.receive_message(wire)
    assert conn.events_received() == [event]
    assert conn.events_received() == []


@pytest.mark.parametrize(("event", "wire", "make_receiver"), LITERALS)
def test_receive_data_one_byte_at_a_time(event, wire, make_receiver):
    conn = make_receiver()
    for i in range(len(wire) - 1):
        conn.receive_data(wire[i : i + 1])
        assert conn.events_received() == [], f"event before byte {i + 1} of {len(wire)}"
    conn.receive_data(wire[-1:])
    assert conn.events_received() == [event]


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (VIDEO, VIDEO_BYTES),
        (RESULT, RESULT_BYTES),
        (DROPPED, DROPPED_BYTES),
        (KEYFRAME, KEYFRAME_BYTES),
        (ERROR, ERROR_BYTES),
        (Bye(), BYE_BYTES),
    ],
    ids=["video", "result", "dropped", "keyframe-request", "error", "bye"],
)
def test_encode_event_gives_literal_bytes(event, wire):
    assert encode_event(event) == wire


@pytest.mark.parametrize(("event", "wire"), [(HELLO, HELLO_BYTES), (READY, READY_BYTES)])
def test_json_messages_encode_to_the_same_header_and_object(event, wire):
    encoded = encode_event(event)
    assert encoded[:2] == wire[:2]
    assert int.from_bytes(encoded[2:6], "big") == len(encoded) - 6
    assert json.loads(encoded[6:]) == json.loads(wire[6:])


def test_hello_token_is_sent_only_when_set():
    assert "token" not in json.loads(encode_event(HELLO)[6:])
    with_token = Hello("hevc", 640, 480, 30.0, token="s3cret")
    assert json.loads(encode_event(with_token)[6:])["token"] == "s3cret"


def test_video_without_keyframe_flag():
    wire = b"\x03\x00" + VIDEO_BYTES[2:]
    server = streaming_server()
    server.receive_message(wire)
    video = only_event(server, Video)
    assert video.keyframe is False
    assert encode_event(video) == wire


def test_connection_send_gives_the_same_bytes():
    server = ServerConnection()
    server.receive_message(HELLO_BYTES)
    assert json.loads(server.send(READY)[6:]) == json.loads(READY_JSON)
    assert server.send(RESULT) == RESULT_BYTES
    assert server.send(DROPPED) == DROPPED_BYTES
    assert server.send(KEYFRAME) == KEYFRAME_BYTES
    assert server.send(ERROR) == ERROR_BYTES

    client = streaming_client()
    assert client.send(VIDEO) == VIDEO_BYTES
    assert client.send(Bye()) == BYE_BYTES


def test_result_durations_are_clamped_to_u32_on_encode():
    result = Result(0, 0, decode_us=-5, queue_us=2**40, infer_us=0, total_us=2**32 - 1)
    body = encode_event(result)[6:]
    assert body[16:20] == b"\x00\x00\x00\x00"  # decode_us -5 → 0
    assert body[20:24] == b"\xff\xff\xff\xff"  # queue_us 2**40 → u32 max
    assert body[24:28] == b"\x00\x00\x00\x00"
    assert body[28:32] == b"\xff\xff\xff\xff"


# -------------------------------------------------------------------- framing


def test_several_records_in_one_chunk_and_a_partial_tail():
    client = handshaking_client()
    client.receive_data(READY_BYTES + RESULT_BYTES + DROPPED_BYTES + KEYFRAME_BYTES[:3])
    assert client.events_received() == [READY, RESULT, DROPPED]
    assert client.state == "streaming"
    client.receive_data(KEYFRAME_BYTES[3:] + ERROR_BYTES)
    assert client.events_received() == [KEYFRAME, ERROR]
    assert client.state == "closed"


def test_server_stream_of_videos_and_bye_in_one_chunk():
    server = streaming_server()
    second = VIDEO_BYTES[:9] + b"\x08" + VIDEO_BYTES[10:]  # seq 8
    server.receive_data(VIDEO_BYTES + second + BYE_BYTES)
    assert server.events_received() == [VIDEO, replace(VIDEO, seq=8), Bye()]
    assert server.state == "closed"


def test_events_before_a_bad_record_in_the_same_chunk_are_kept():
    server = streaming_server()
    with pytest.raises(RemoteProtocolError):
        server.receive_data(VIDEO_BYTES + record(3, b"\x00" * 4))  # too short
    assert server.events_received() == [VIDEO]
    assert server.state == "failed"


def test_receive_message_rejects_two_records_in_one_message():
    error = receive_fails(streaming_server(), VIDEO_BYTES + VIDEO_BYTES)
    assert error.code == ErrorCode.PROTOCOL


@pytest.mark.parametrize("cut", [0, 1, 5, len(VIDEO_BYTES) - 1])
def test_receive_message_rejects_a_truncated_message(cut):
    error = receive_fails(streaming_server(), VIDEO_BYTES[:cut])
    assert error.code == ErrorCode.PROTOCOL
    assert error.close_code == 1002


def test_receive_message_rejects_text():
    error = receive_fails(ServerConnection(), HELLO_BYTES.decode("latin-1"))
    assert error.code == ErrorCode.PROTOCOL


# ------------------------------------------------------------- state machine


def test_server_states_through_a_session():
    server = ServerConnection()
    assert server.state == "handshake"
    server.receive_message(HELLO_BYTES)
    assert server.state == "handshake"
    server.send(READY)
    assert server.state == "streaming"
    server.receive_message(VIDEO_BYTES)
    server.receive_message(BYE_BYTES)
    assert server.state == "closed"
    # the server still answers every pending pts after the client's Bye
    assert server.send(RESULT) == RESULT_BYTES
    assert server.send(DROPPED) == DROPPED_BYTES


def test_client_states_through_a_session():
    client = ClientConnection()
    assert client.state == "handshake"
    assert client.ready is None
    client.send(HELLO)
    client.receive_message(READY_BYTES)
    assert client.state == "streaming"
    assert client.ready == READY
    client.send(VIDEO)
    client.send(Bye())
    client.receive_message(RESULT_BYTES)  # answers keep coming after Bye
    assert client.events_received() == [READY, RESULT]


def unexpected(conn, data: bytes) -> None:
    error = receive_fails(conn, data)
    assert error.code == ErrorCode.UNEXPECTED_MESSAGE
    assert error.close_code == 1002


def test_video_before_hello():
    unexpected(ServerConnection(), VIDEO_BYTES)


def test_video_after_hello_before_ready():
    server = ServerConnection()
    server.receive_message(HELLO_BYTES)
    unexpected(server, VIDEO_BYTES)


def test_two_hellos():
    server = ServerConnection()
    server.receive_message(HELLO_BYTES)
    unexpected(server, HELLO_BYTES)


def test_hello_while_streaming():
    unexpected(streaming_server(), HELLO_BYTES)


def test_video_after_bye():
    server = streaming_server()
    server.receive_message(BYE_BYTES)
    unexpected(server, VIDEO_BYTES)


def test_video_after_client_error():
    server = streaming_server()
    server.receive_message(ERROR_BYTES)
    assert server.state == "closed"
    unexpected(server, VIDEO_BYTES)


def server_after_bye() -> ServerConnection:
    server = streaming_server()
    server.receive_message(BYE_BYTES)
    return server


def server_after_bye_without_hello() -> ServerConnection:
    server = ServerConnection()
    server.receive_message(BYE_BYTES)
    return server


# BUG: the server accepts messages after the client's Bye: a second Bye, and a Hello
# when Bye came first (the server then holds a Hello it can never answer with Ready).
@pytest.mark.parametrize(
    ("make_server", "wire"),
    [
        (server_after_bye, BYE_BYTES),
        (server_after_bye_without_hello, HELLO_BYTES),
        (server_after_bye_without_hello, BYE_BYTES),
    ],
    ids=["second-bye", "hello-after-bye", "second-bye-without-hello"],
)
def test_nothing_but_error_after_bye(make_server, wire):
    unexpected(make_server(), wire)


def test_error_after_bye_is_accepted():
    server = server_after_bye()
    server.receive_message(ERROR_BYTES)
    assert server.events_received() == [Bye(), ERROR]


@pytest.mark.parametrize(
    "wire",
    [READY_BYTES, RESULT_BYTES, DROPPED_BYTES, KEYFRAME_BYTES, record(8, b""), record(0, b"")],
    ids=["ready", "result", "dropped", "keyframe-request", "type-8", "type-0"],
)
def test_server_rejects_server_messages_and_unknown_types(wire):
    unexpected(streaming_server(), wire)


def test_ready_before_hello_sent():
    unexpected(ClientConnection(), READY_BYTES)


def test_second_ready():
    unexpected(streaming_client(), READY_BYTES)


@pytest.mark.parametrize("wire", [RESULT_BYTES, DROPPED_BYTES, KEYFRAME_BYTES])
def test_client_rejects_answers_before_ready(wire):
    unexpected(handshaking_client(), wire)


@pytest.mark.parametrize(
    "wire",
    [HELLO_BYTES, VIDEO_BYTES[:1] + b"\x00" + VIDEO_BYTES[2:], BYE_BYTES, record(0xFF, b"")],
    ids=["hello", "video", "bye", "type-255"],
)
def test_client_rejects_client_messages_and_unknown_types(wire):
    unexpected(streaming_client(), wire)


@pytest.mark.parametrize(
    "wire",
    [
        b"\x01\x01" + HELLO_BYTES[2:],
        b"\x09\x80" + BYE_BYTES[2:],
        b"\x07\x01" + ERROR_BYTES[2:],
    ],
    ids=["hello", "bye", "error"],
)
def test_flags_on_non_video_messages_are_rejected(wire):
    server = ServerConnection()
    error = receive_fails(server, wire)
    assert error.code == ErrorCode.PROTOCOL


@pytest.mark.parametrize("flags", [0x02, 0x80, 0xFF])
def test_unknown_video_flags_are_rejected(flags):
    wire = bytes([3, flags]) + VIDEO_BYTES[2:]
    assert receive_fails(streaming_server(), wire).code == ErrorCode.PROTOCOL


def test_client_rejects_flags_on_result():
    wire = b"\x04\x01" + RESULT_BYTES[2:]
    assert receive_fails(streaming_client(), wire).code == ErrorCode.PROTOCOL


# -------------------------------------------------------------------- send side


def test_server_send_ready_before_hello():
    with pytest.raises(LocalProtocolError):
        ServerConnection().send(READY)


def test_server_send_ready_twice():
    server = streaming_server()
    with pytest.raises(LocalProtocolError):
        server.send(READY)


@pytest.mark.parametrize("event", [RESULT, DROPPED, KEYFRAME])
def test_server_send_answer_before_ready(event):
    server = ServerConnection()
    server.receive_message(HELLO_BYTES)
    with pytest.raises(LocalProtocolError):
        server.send(event)


# BUG: after sending Error during the handshake the server may send a Result without
# ever having sent Ready; the client rejects that as "before ready".
@pytest.mark.parametrize("event", [RESULT, DROPPED, KEYFRAME], ids=["result", "dropped", "kfr"])
def test_server_send_answer_after_error_without_ready(event):
    server = ServerConnection()
    server.receive_message(HELLO_BYTES)
    server.send(Error(ErrorCode.SERVER_BUSY, "busy"))
    with pytest.raises(LocalProtocolError):
        server.send(event)


@pytest.mark.parametrize("event", [HELLO, VIDEO, Bye()])
def test_server_does_not_send_client_messages(event):
    with pytest.raises(LocalProtocolError):
        streaming_server().send(event)


def test_server_may_send_error_during_handshake():
    server = ServerConnection()
    assert server.send(ERROR) == ERROR_BYTES
    assert server.state == "closed"


def test_client_send_video_before_ready():
    with pytest.raises(LocalProtocolError):
        handshaking_client().send(VIDEO)


def test_client_send_hello_twice():
    with pytest.raises(LocalProtocolError):
        handshaking_client().send(HELLO)


def test_client_send_video_after_bye():
    client = streaming_client()
    client.send(Bye())
    with pytest.raises(LocalProtocolError):
        client.send(VIDEO)


def test_client_send_video_after_server_error():
    client = streaming_client()
    client.receive_message(ERROR_BYTES)
    with pytest.raises(LocalProtocolError):
        client.send(VIDEO)


@pytest.mark.parametrize("event", [READY, RESULT, DROPPED, KEYFRAME])
def test_client_does_not_send_server_messages(event):
    with pytest.raises(LocalProtocolError):
        streaming_client().send(event)


def test_client_send_video_respects_the_servers_message_limit():
    client = handshaking_client()
    client.receive_message(ready_record(max_message_bytes=100))
    client.send(Video(0, 0, 0, True, b"x" * 80))  # 20 + 80 = 100 fits
    with pytest.raises(LocalProtocolError):
        client.send(Video(1, 0, 0, True, b"x" * 81))


# BUG: send() lets through a Video the server must reject (empty access unit, negative
# pts) or crashes with struct.error (seq outside u32) instead of LocalProtocolError.
@pytest.mark.parametrize(
    "video",
    [
        Video(0, 0, 0, True, b""),
        Video(0, -1, 0, True, ACCESS_UNIT),
        Video(2**32, 0, 0, True, ACCESS_UNIT),
        Video(-1, 0, 0, True, ACCESS_UNIT),
    ],
    ids=["empty-access-unit", "negative-pts", "seq-too-big", "negative-seq"],
)
def test_client_send_invalid_video_is_a_local_error(video):
    with pytest.raises(LocalProtocolError):
        streaming_client().send(video)


def test_encode_event_rejects_non_events():
    with pytest.raises(LocalProtocolError):
        encode_event("hello")  # type: ignore[arg-type]


# ----------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    "make_receiver",
    [
        lambda: ServerConnection(ServerLimits(max_message_bytes=100)),
        lambda: ClientConnection(max_message_bytes=100),
    ],
    ids=["server", "client"],
)
def test_oversized_length_is_rejected_from_the_header_alone(make_receiver):
    conn = make_receiver()
    conn.receive_data(b"\x03\x01\x00\x00")  # not yet a whole header
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_data(b"\x00\x65")  # length 101
    assert caught.value.code == ErrorCode.MESSAGE_TOO_LARGE
    assert caught.value.close_code == 1009
    assert conn.state == "failed"


def test_length_at_the_limit_waits_for_the_body():
    server = ServerConnection(ServerLimits(max_message_bytes=100))
    server.receive_data(b"\x01\x00\x00\x00\x00\x64")  # length 100
    assert server.events_received() == []
    assert server.state == "handshake"


def test_huge_length_field_is_rejected_at_header_time():
    server = ServerConnection()
    with pytest.raises(RemoteProtocolError) as caught:
        server.receive_data(b"\x03\x01\xff\xff\xff\xff")
    assert caught.value.code == ErrorCode.MESSAGE_TOO_LARGE


def test_receive_message_rejects_oversized_length():
    server = ServerConnection(ServerLimits(max_message_bytes=10))
    error = receive_fails(server, record(1, b"{}" * 6))
    assert error.code == ErrorCode.MESSAGE_TOO_LARGE
    assert error.close_code == 1009


def test_default_message_limit():
    assert ServerConnection().max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert ClientConnection().max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES


def hello_fails(wire: bytes, limits: ServerLimits | None = None) -> RemoteProtocolError:
    return receive_fails(ServerConnection(limits), wire)


@pytest.mark.parametrize(
    ("width", "height"),
    [(641, 480), (640, 481), (0, 480), (640, 0), (-2, 480), (640, -480), (1, 1)],
)
def test_hello_frame_size_must_be_positive_and_even(width, height):
    error = hello_fails(hello_record(width=width, height=height))
    assert error.code == ErrorCode.BAD_HELLO
    assert error.close_code == 1002


@pytest.mark.parametrize(
    ("width", "height"), [(3842, 2160), (3840, 2162), (7680, 4320), (2**70, 2), (2, 10**100)]
)
def test_hello_frame_size_over_the_servers_limit(width, height):
    error = hello_fails(hello_record(width=width, height=height))
    assert error.code == ErrorCode.LIMIT_EXCEEDED
    assert error.close_code == 1008


def test_hello_at_the_size_and_rate_limits_is_accepted():
    server = ServerConnection()
    server.receive_message(hello_record(width=3840, height=2160, fps=120))
    assert server.events_received() == [Hello("hevc", 3840, 2160, 120.0)]


def test_hello_limits_come_from_server_limits():
    limits = ServerLimits(codecs=("h264",), max_width=320, max_height=240, max_fps=15)
    assert hello_fails(hello_record(), limits).code == ErrorCode.UNSUPPORTED_CODEC
    too_big = hello_record(codec="h264", width=322, height=240)
    assert hello_fails(too_big, limits).code == ErrorCode.LIMIT_EXCEEDED
    too_fast = hello_record(codec="h264", width=320, height=240, fps=15.5)
    assert hello_fails(too_fast, limits).code == ErrorCode.LIMIT_EXCEEDED


@pytest.mark.parametrize("fps", [0, 0.0, -1, -30.0, 120.001, 1e300])
def test_hello_fps_out_of_range(fps):
    error = hello_fails(hello_record(fps=fps))
    assert error.code == ErrorCode.LIMIT_EXCEEDED
    assert error.close_code == 1008


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_hello_fps_not_finite(literal):
    body = HELLO_JSON.replace(b'"fps":30.0', b'"fps":' + literal)
    assert body != HELLO_JSON
    error = hello_fails(record(1, body))
    assert error.code == ErrorCode.LIMIT_EXCEEDED


# BUG: an integer fps too large for a float crashes float() with OverflowError.
def test_hello_fps_integer_too_large_for_a_float():
    body = HELLO_JSON.replace(b'"fps":30.0', b'"fps":1' + b"0" * 400)
    hello_fails(record(1, body))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fps", "30"),
        ("fps", True),
        ("fps", None),
        ("width", True),
        ("width", 640.0),
        ("width", "640"),
        ("height", [480]),
        ("height", None),
        ("codec", 265),
        ("codec", None),
        ("protocol", True),
        ("protocol", "1"),
        ("protocol", 1.0),
        ("protocol", None),
    ],
)
def test_hello_field_types(field, value):
    error = hello_fails(hello_record(**{field: value}))
    assert error.code == ErrorCode.PROTOCOL
    assert error.close_code == 1002


@pytest.mark.parametrize("codec", ["vp9", "HEVC", "", "h265"])
def test_hello_unsupported_codec(codec):
    error = hello_fails(hello_record(codec=codec))
    assert error.code == ErrorCode.UNSUPPORTED_CODEC
    assert error.close_code == 1003


@pytest.mark.parametrize("version", [0, 2, -1, 2**64])
def test_hello_unsupported_version(version):
    error = hello_fails(hello_record(protocol=version))
    assert error.code == ErrorCode.UNSUPPORTED_VERSION
    assert error.close_code == 1002


@pytest.mark.parametrize(
    "time_base", [[1, 1000], [1001, 90000], [90000], "1/90000", 90000, [], [True, 90000]]
)
def test_hello_bad_time_base(time_base):
    assert hello_fails(hello_record(time_base=time_base)).code == ErrorCode.BAD_HELLO


def test_hello_time_base_may_be_left_out():
    server = ServerConnection()
    server.receive_message(hello_record(time_base=None))
    assert server.events_received() == [Hello("hevc", 640, 480, 30.0)]


@pytest.mark.parametrize("token", [5, ["t"], {"t": 1}, True, "t" * (MAX_TOKEN_CHARS + 1)])
def test_hello_bad_token(token):
    error = hello_fails(hello_record(token=token))
    assert error.code == ErrorCode.BAD_HELLO
    assert error.close_code == 1002


def test_hello_token_at_the_limit():
    server = ServerConnection()
    token = "é" * MAX_TOKEN_CHARS
    server.receive_message(hello_record(token=token))
    assert only_event(server, Hello).token == token


@pytest.mark.parametrize("client_name", [5, False, ["cam"]])
def test_hello_bad_client_name(client_name):
    assert hello_fails(hello_record(client=client_name)).code == ErrorCode.BAD_HELLO


# BUG: the parser cuts the client name to 100 characters but the encoder sends it whole,
# so a Hello with a longer name does not round-trip: what arrives is not what was sent.
def test_hello_client_name_arrives_as_sent():
    wire = encode_event(Hello("hevc", 640, 480, 30.0, client="c" * 150))
    server = ServerConnection()
    server.receive_message(wire)
    assert only_event(server, Hello).client == json.loads(wire[6:])["client"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe{}",
        b'{"codec":"\xc3\x28"}',
        b"\xef\xbb\xbf" + HELLO_JSON,  # a BOM
        b"{",
        b"[1,2]",
        b'"hello"',
        b"42",
        b"null",
        b"[" * 20000 + b"]" * 20000,
        b'{"a":' * 10000 + b"1" + b"}" * 10000,
        b'{"protocol":1' + b"0" * 5000 + b"}",  # over Python's int digit limit
    ],
    ids=[
        "empty",
        "utf16",
        "invalid-utf8",
        "bom",
        "truncated",
        "array",
        "string",
        "number",
        "null",
        "deep-array",
        "deep-object",
        "huge-int",
    ],
)
def test_hello_body_not_a_json_object(body):
    error = hello_fails(record(1, body))
    assert error.code == ErrorCode.PROTOCOL
    assert error.close_code == 1002


def test_hello_json_size_limit():
    padded = HELLO_JSON[:-1] + b',"pad":"' + b"x" * MAX_JSON_BYTES + b'"}'
    assert hello_fails(record(1, padded)).code == ErrorCode.PROTOCOL


def test_hello_unknown_fields_are_ignored():
    server = ServerConnection()
    server.receive_message(hello_record(extra={"x": [1, 2]}))
    assert server.events_received() == [Hello("hevc", 640, 480, 30.0)]


@pytest.mark.parametrize(
    "changes",
    [
        {"protocol": 2},
        {"protocol": True},
        {"class_names": "bottle"},
        {"class_names": ["bottle", 3]},
        {"session": 1},
        {"model": None},
        {"max_message_bytes": "4M"},
        {"max_width": True},
        {"max_fps": "fast"},
    ],
)
def test_bad_ready(changes):
    error = receive_fails(handshaking_client(), ready_record(**changes))
    assert error.code == ErrorCode.PROTOCOL


# BUG: an integer max_fps too large for a float crashes float() with OverflowError, and
# a non-finite max_fps (JSON NaN/Infinity, which Python's json accepts) is taken as is.
@pytest.mark.parametrize("literal", [b"1" + b"0" * 400, b"NaN", b"Infinity", b"-Infinity"])
def test_ready_max_fps_must_be_finite(literal):
    body = READY_JSON.replace(b'"max_fps":120.0', b'"max_fps":' + literal)
    assert body != READY_JSON
    assert receive_fails(handshaking_client(), record(2, body)).code == ErrorCode.PROTOCOL


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00" * 20, VIDEO_BYTES[6:26]],
    ids=["empty", "header-only-zeros", "header-only"],
)
def test_video_without_access_unit(body):
    assert receive_fails(streaming_server(), record(3, body, 1)).code == ErrorCode.PROTOCOL


def test_video_negative_pts():
    body = b"\x00\x00\x00\x00" + b"\xff" * 8 + b"\x00" * 8 + ACCESS_UNIT
    assert receive_fails(streaming_server(), record(3, body)).code == ErrorCode.PROTOCOL


def test_video_extreme_fields():
    body = b"\xff" * 4 + b"\x7f" + b"\xff" * 7 + b"\x80" + b"\x00" * 7 + b"\x00"
    server = streaming_server()
    server.receive_message(record(3, body))
    assert server.events_received() == [Video(2**32 - 1, 2**63 - 1, -(2**63), False, b"\x00")]


@pytest.mark.parametrize(
    "body",
    [
        RESULT_BYTES[6:39],  # shorter than the fixed part
        RESULT_BYTES[6:-1],  # one detection byte short
        RESULT_BYTES[6:] + b"\x00",  # one byte extra
        RESULT_BYTES[6:38] + b"\x00\x02" + RESULT_BYTES[40:],  # count 2, one detection
        RESULT_BYTES[6:38] + b"\x00\x00" + RESULT_BYTES[40:],  # count 0, one detection
    ],
    ids=["truncated-header", "short", "long", "count-too-high", "count-too-low"],
)
def test_result_length_must_match_count(body):
    assert receive_fails(streaming_client(), record(4, body)).code == ErrorCode.PROTOCOL


def test_result_without_detections():
    body = RESULT_BYTES[6:38] + b"\x00\x00"
    client = streaming_client()
    client.receive_message(record(4, body))
    assert client.events_received() == [Result(3000, -2, 1000, 2, 3, 65536, ())]


@pytest.mark.parametrize(
    ("class_id", "label"),
    [(0, "bottle"), (1, "can"), (2, "class_2"), (0xFFFF, "class_65535")],
)
def test_result_labels_come_from_ready_class_names(class_id, label):
    body = RESULT_BYTES[6:40] + class_id.to_bytes(2, "big") + RESULT_BYTES[42:]
    client = streaming_client()
    client.receive_message(record(4, body))
    result = only_event(client, Result)
    assert result.detections[0].class_id == class_id
    assert result.detections[0].label == label


def test_result_labels_with_no_class_names():
    client = handshaking_client()
    client.receive_message(ready_record(class_names=[]))
    client.events_received()
    client.receive_message(RESULT_BYTES)
    assert only_event(client, Result).detections[0].label == "class_1"


@pytest.mark.parametrize(
    "body", [DROPPED_BYTES[6:-1], DROPPED_BYTES[6:] + b"\x00", b""], ids=["short", "long", "empty"]
)
def test_dropped_wrong_length(body):
    assert receive_fails(streaming_client(), record(5, body)).code == ErrorCode.PROTOCOL


@pytest.mark.parametrize("reason", [0, max(DropReason) + 1, 255])
def test_dropped_unknown_reason(reason):
    body = DROPPED_BYTES[6:-1] + bytes([reason])
    assert receive_fails(streaming_client(), record(5, body)).code == ErrorCode.PROTOCOL


@pytest.mark.parametrize("reason", list(DropReason))
def test_every_drop_reason_parses(reason):
    client = streaming_client()
    client.receive_message(DROPPED_BYTES[:-1] + bytes([reason]))
    assert client.events_received() == [Dropped(90000, -1, reason)]


@pytest.mark.parametrize("body", [b"", b"\x01\x01"])
def test_keyframe_request_wrong_length(body):
    assert receive_fails(streaming_client(), record(6, body)).code == ErrorCode.PROTOCOL


@pytest.mark.parametrize("reason", [0, 5, 255])
def test_keyframe_request_unknown_reason(reason):
    assert receive_fails(streaming_client(), record(6, bytes([reason]))).code == ErrorCode.PROTOCOL


def test_bye_with_a_body():
    assert receive_fails(streaming_server(), record(9, b"\x00")).code == ErrorCode.PROTOCOL


# ------------------------------------------------------------------ error messages


def test_error_codes_and_close_codes():
    assert {code: code.close_code for code in ErrorCode} == {
        ErrorCode.PROTOCOL: 1002,
        ErrorCode.UNSUPPORTED_VERSION: 1002,
        ErrorCode.UNSUPPORTED_CODEC: 1003,
        ErrorCode.BAD_HELLO: 1002,
        ErrorCode.MESSAGE_TOO_LARGE: 1009,
        ErrorCode.UNAUTHORIZED: 1008,
        ErrorCode.UNEXPECTED_MESSAGE: 1002,
        ErrorCode.LIMIT_EXCEEDED: 1008,
        ErrorCode.SERVER_BUSY: 1013,
        ErrorCode.INTERNAL: 1011,
    }
    assert [int(code) for code in ErrorCode] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_error_text_is_truncated_to_the_limit_on_a_character_boundary():
    message = "a" + "é" * 1000  # 2001 bytes; 1 + 2 * 511 = 1023 fit
    wire = encode_event(Error(ErrorCode.INTERNAL, message))
    assert wire[:8] == b"\x07\x00\x00\x00\x04\x01\x00\x0a"  # 2 + 1023 bytes, INTERNAL
    assert wire[8:] == ("a" + "é" * 511).encode()
    client = ClientConnection()
    client.receive_message(wire)
    assert client.events_received() == [Error(ErrorCode.INTERNAL, "a" + "é" * 511)]


def test_error_text_exactly_at_the_limit():
    server = ServerConnection()
    server.receive_message(record(7, b"\x00\x01" + b"x" * MAX_ERROR_TEXT_BYTES))
    assert server.events_received() == [Error(ErrorCode.PROTOCOL, "x" * MAX_ERROR_TEXT_BYTES)]


def test_error_text_over_the_limit_is_rejected():
    wire = record(7, b"\x00\x01" + b"x" * (MAX_ERROR_TEXT_BYTES + 1))
    assert receive_fails(ServerConnection(), wire).code == ErrorCode.PROTOCOL


@pytest.mark.parametrize("body", [b"", b"\x00"])
def test_error_without_a_code(body):
    assert receive_fails(ClientConnection(), record(7, body)).code == ErrorCode.PROTOCOL


def test_error_with_invalid_utf8_keeps_the_rest():
    client = ClientConnection()
    client.receive_message(record(7, b"\x00\x09busy \xff now"))
    assert client.events_received() == [Error(ErrorCode.SERVER_BUSY, "busy \ufffd now")]


@pytest.mark.parametrize("code", [0, 11, 999, 0xFFFF])
def test_unknown_error_code_maps_to_internal(code):
    client = streaming_client()
    client.receive_message(record(7, code.to_bytes(2, "big") + b"from the future"))
    assert client.events_received() == [Error(ErrorCode.INTERNAL, "from the future")]
    assert client.state == "closed"
    client.receive_message(DROPPED_BYTES)  # not failed: answers may still be read
    assert client.events_received() == [DROPPED]


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_round_trips(code):
    server = ServerConnection()
    server.receive_message(encode_event(Error(code, "m")))
    assert server.events_received() == [Error(code, "m")]


def test_remote_protocol_error_defaults():
    error = RemoteProtocolError("x")
    assert (error.code, error.close_code) == (ErrorCode.PROTOCOL, 1002)


# ---------------------------------------------------------------- after a failure


@pytest.mark.parametrize(
    "make_conn", [ServerConnection, handshaking_client, streaming_server, streaming_client]
)
def test_failed_connection_refuses_further_input(make_conn):
    conn = make_conn()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(record(0xEE, b""))
    assert conn.state == "failed"
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.receive_message(BYE_BYTES)
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(ERROR_BYTES)
    assert conn.events_received() == []
    assert conn.state == "failed"


def test_failure_discards_buffered_bytes():
    server = streaming_server()
    with pytest.raises(RemoteProtocolError):
        server.receive_data(record(3, b"\x00" * 4) + VIDEO_BYTES)
    assert server.events_received() == []  # the Video after the bad record is not parsed


def test_bad_hello_fails_the_connection():
    server = ServerConnection()
    hello_fails_error = receive_fails(server, hello_record(codec="vp9"))
    assert hello_fails_error.code == ErrorCode.UNSUPPORTED_CODEC
    with pytest.raises(RemoteProtocolError):
        server.receive_message(HELLO_BYTES)


def test_error_message_text_is_useful():
    error = hello_fails(hello_record(width=641))
    assert "641x480" in str(error)
    error = hello_fails(hello_record(codec="vp9"))
    assert "vp9" in str(error)
    assert "hevc" in str(error)


# ------------------------------------------------------- adaptation messages (issue 4)


def _streaming_pair() -> tuple[ServerConnection, ClientConnection]:
    server, client = ServerConnection(), ClientConnection()
    server.receive_message(client.send(Hello("hevc", 640, 480, 30.0)))
    server.events_received()
    client.receive_message(server.send(Ready("1", "m", ("a",), 1 << 20, 3840, 2160, 120.0)))
    client.events_received()
    return server, client


def test_feedback_literal_bytes() -> None:
    server, client = _streaming_pair()
    wire = server.send(Feedback(((7, 1_000_000), (8, 1_033_000))))
    expected = (
        b"\x08\x00\x00\x00\x00\x1a"  # type 8, no flags, 26 bytes
        b"\x00\x02"
        b"\x00\x00\x00\x07" b"\x00\x00\x00\x00\x00\x0f\x42\x40"
        b"\x00\x00\x00\x08" b"\x00\x00\x00\x00\x00\x0f\xc3\x28"
    )  # fmt: skip
    assert wire == expected
    for byte in expected:
        client.receive_data(bytes([byte]))
    assert client.events_received() == [Feedback(((7, 1_000_000), (8, 1_033_000)))]


def test_probe_and_ack_literal_bytes() -> None:
    server, client = _streaming_pair()
    wire = client.send(Probe(3, 42, padding=4))
    assert wire == b"\x0a\x00\x00\x00\x00\x10\x00\x00\x00\x03" + (42).to_bytes(8, "big") + bytes(4)
    server.receive_message(wire)
    assert server.events_received() == [Probe(3, 42, 4)]
    ack = server.send(ProbeAck(3, 42, 99, len(wire)))
    assert ack == (
        b"\x0b\x00\x00\x00\x00\x18\x00\x00\x00\x03"
        + (42).to_bytes(8, "big") + (99).to_bytes(8, "big") + (22).to_bytes(4, "big")
    )  # fmt: skip
    client.receive_message(ack)
    assert client.events_received() == [ProbeAck(3, 42, 99, 22)]


def test_probe_before_ready_and_feedback_with_wrong_count_are_refused() -> None:
    server = ServerConnection()
    server.receive_message(ClientConnection().send(Hello("hevc", 640, 480, 30.0)))
    with pytest.raises(RemoteProtocolError):
        server.receive_message(encode_event(Probe(1, 1)))
    _, client = _streaming_pair()
    with pytest.raises(RemoteProtocolError):
        client.receive_message(b"\x08\x00\x00\x00\x00\x02\x00\x05")  # says 5 entries, has 0
