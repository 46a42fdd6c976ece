"""TLS end to end, health and metrics endpoints, origin, address and rate limits."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import random
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shelf_stream import protocol as p
from shelf_stream.bench.rawws import OP_BINARY, RawWebSocket, Reply, frame
from shelf_stream.client.app import ClientConfig, StreamClient
from shelf_stream.client.connection import ConnectionConfig
from shelf_stream.client.sources import SourceSpec
from shelf_stream.engine import EngineConfig, create_detector
from shelf_stream.engine.base import Detector
from shelf_stream.errors import ConfigError
from shelf_stream.server import Server, ServerConfig
from shelf_stream.server.wsconn import ArrivalClock, StampedConnection


@pytest.fixture(scope="module")
def detector(model_path: Path) -> Iterator[Detector]:
    det = create_detector(EngineConfig(model_path=model_path))
    yield det
    det.close()


def _make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost (it is its own CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shelf-stream test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _client(url: str, **overrides: object) -> StreamClient:
    config = ClientConfig(
        url=url,
        source=SourceSpec(kind="scene", width=320, height=240, fps=15.0),
        max_frames=20,
        status=False,
        connection=ConnectionConfig(reconnect=None),
        **overrides,  # type: ignore[arg-type]
    )
    return StreamClient(config)


def test_tls_end_to_end_with_a_generated_certificate(detector: Detector, tmp_path: Path) -> None:
    cert, key = _make_certificate(tmp_path)

    async def run() -> tuple[dict, str]:
        config = ServerConfig(host="127.0.0.1", port=0, certfile=cert, keyfile=key)
        async with Server(config, detector) as server:
            url = f"wss://127.0.0.1:{server.port}"
            summary = await _client(url, cafile=cert).run()
            with pytest.raises(ConfigError, match="cafile"):
                await _client(url).run()  # the system CAs do not know our certificate
            return summary, url

    summary, url = asyncio.run(run())
    assert summary["results"] > 0
    assert url.startswith("wss://")


def test_healthz_and_metrics_count_a_stream(detector: Detector) -> None:
    async def run() -> tuple[str, str, int]:
        async with Server(ServerConfig(host="127.0.0.1", port=0), detector) as server:
            summary = await _client(f"ws://127.0.0.1:{server.port}").run()
            base = f"http://127.0.0.1:{server.port}"
            loop = asyncio.get_running_loop()
            health = await loop.run_in_executor(None, _get, base + "/healthz")
            metrics = await loop.run_in_executor(None, _get, base + "/metrics")
            return health, metrics, summary["frames_sent"]

    health, metrics, sent = asyncio.run(run())
    assert '"status": "ok"' in health
    # Every frame the client sent (on a loaded machine some of the 20 are skipped).
    assert sent > 0 and f"shelf_frames_received_total {float(sent)}" in metrics
    assert 'shelf_stage_seconds_count{stage="inference"}' in metrics
    processed = [
        line for line in metrics.splitlines() if line.startswith("shelf_frames_processed_total")
    ]
    assert processed and float(processed[0].split()[-1]) > 0


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_origin_allow_list_refuses_other_browsers(detector: Detector) -> None:
    async def run() -> None:
        config = ServerConfig(host="127.0.0.1", port=0, origins=("https://good.example",))
        async with Server(config, detector) as server:
            url = f"ws://127.0.0.1:{server.port}"
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, origin="https://evil.example", proxy=None)  # type: ignore[arg-type]
            assert refused.value.response.status_code == 403
            ok = await connect(url, origin="https://good.example", proxy=None)  # type: ignore[arg-type]
            await ok.close()
            no_origin = await connect(url, proxy=None)  # a non-browser client
            await no_origin.close()

    asyncio.run(run())


def test_streams_per_address_and_message_floods_are_limited(detector: Detector) -> None:
    async def hello(url: str) -> p.Event:
        ws = await connect(url, proxy=None)
        proto = p.ClientConnection()
        await ws.send(proto.send(p.Hello("hevc", 320, 240, 30.0)))
        proto.receive_message(await ws.recv())
        (event,) = proto.events_received()
        run.sockets.append(ws)  # type: ignore[attr-defined]
        return event

    async def refusal(url: str) -> p.Event:
        """A refused connection gets an Error at once, before it says anything."""
        ws = await connect(url, proxy=None)
        proto = p.ClientConnection()
        proto.receive_message(await ws.recv())
        (event,) = proto.events_received()
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return event

    async def run() -> tuple[p.Event, p.Event]:
        config = ServerConfig(
            host="127.0.0.1", port=0, max_streams_per_address=1, max_messages_per_s=50
        )
        async with Server(config, detector) as server:
            url = f"ws://127.0.0.1:{server.port}"
            first = await hello(url)
            assert isinstance(first, p.Ready)
            second = await refusal(url)
            # A flood on the admitted connection: tiny probes far above 50/s.
            flood = run.sockets[0]  # type: ignore[attr-defined]
            proto = p.ClientConnection()
            proto.send(p.Hello("hevc", 320, 240, 30.0))  # this end's state: hello sent...
            proto.receive_message(p.encode_event(first))  # ...and ready received
            closed = None
            with pytest.raises(ConnectionClosed):
                for index in range(2000):
                    await flood.send(p.encode_event(p.Probe(index, 0)))
                    await asyncio.sleep(0)
                while True:
                    message = await flood.recv()
                    proto.receive_message(message)
                    for event in proto.events_received():
                        if isinstance(event, p.Error):
                            closed = event
            assert flood.close_code == 1008
            return second, closed  # type: ignore[return-value]

    run.sockets = []  # type: ignore[attr-defined]
    refused, flood_error = asyncio.run(run())
    assert isinstance(refused, p.Error) and refused.code == p.ErrorCode.SERVER_BUSY
    assert "per client address" in refused.message
    assert flood_error is not None and flood_error.code == p.ErrorCode.LIMIT_EXCEEDED


# ------------------------------------------------------------- admission and floods


async def _idle(port: int, host: str) -> RawWebSocket:
    """An upgraded connection from ``host`` that will never say hello."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))
    ws = RawWebSocket(reader, writer, random.Random(0))
    await ws.handshake(port)
    return ws


async def _hello_from(port: int, host: str) -> p.Event:
    ws = await connect(f"ws://127.0.0.1:{port}", proxy=None, local_addr=(host, 0))
    proto = p.ClientConnection()
    await ws.send(proto.send(p.Hello("hevc", 320, 240, 30.0)))
    proto.receive_message(await ws.recv())
    (event,) = proto.events_received()
    await ws.close()
    return event


def test_idle_connections_cannot_lock_out_a_client_from_another_address(
    detector: Detector,
) -> None:
    """Connections that never say hello fill the pending table, never the stream slots:
    a valid client from a fresh address evicts the oldest of the most crowded address
    and gets Ready (the hello deadline is long here: nothing times out meanwhile)."""

    async def run() -> tuple[p.Event, p.Event, float | None, float | None]:
        config = ServerConfig(
            host="127.0.0.1", port=0, max_streams=2, max_pending_hellos=4,
            max_pending_hellos_per_address=2, hello_timeout_s=60.0,
        )  # fmt: skip
        async with Server(config, detector) as server:
            crowd = [
                await _idle(server.port, host)
                for host in ("127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3")
            ]
            # The crowd's own address is full: refused at once, before any hello.
            crowded = await asyncio.wait_for(_refusal_from(server.port, "127.0.0.2"), 10)
            fresh = await asyncio.wait_for(_hello_from(server.port, "127.0.0.9"), 10)
            registry = server.metrics.registry
            evicted = registry.get_sample_value(
                "shelf_connections_refused_total", {"reason": "evicted"}
            )
            pending = registry.get_sample_value(
                "shelf_connections_refused_total", {"reason": "pending_full"}
            )
            for ws in crowd:
                ws.abort()
            return crowded, fresh, evicted, pending

    crowded, fresh, evicted, pending_full = asyncio.run(run())
    assert isinstance(crowded, p.Error) and crowded.code == p.ErrorCode.SERVER_BUSY
    assert "waiting for their hello" in crowded.message
    assert isinstance(fresh, p.Ready)
    assert evicted == 1 and pending_full == 1


async def _refusal_from(port: int, host: str) -> p.Event:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))
    ws = RawWebSocket(reader, writer, random.Random(1))
    await ws.handshake(port)
    reply = await ws.read_reply(5.0)
    ws.abort()
    error = reply.first_error()
    assert error is not None, reply.label()
    return error


def test_a_connection_without_hello_is_closed_at_the_hello_deadline(detector: Detector) -> None:
    async def run() -> p.Error | None:
        config = ServerConfig(host="127.0.0.1", port=0, hello_timeout_s=0.2)
        async with Server(config, detector) as server:
            ws = await _idle(server.port, "127.0.0.1")
            reply = await ws.read_reply(10.0)
            ws.abort()
            return reply.first_error()

    error = asyncio.run(run())
    assert error is not None and error.code == p.ErrorCode.UNEXPECTED_MESSAGE
    assert "no hello within 0.2 s" in error.message


def test_the_message_rate_is_counted_on_arrival(
    detector: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the arrival clock standing still, exactly the burst (twice the rate) gets
    through, however long the server takes to get to the messages: a CPU-starved
    server lets no more through than a fast one."""
    monkeypatch.setattr(StampedConnection, "clock", staticmethod(lambda: 1000.0))

    async def run() -> Reply:
        config = ServerConfig(host="127.0.0.1", port=0, max_messages_per_s=50)
        async with Server(config, detector) as server:
            ws = await RawWebSocket.connect(server.port, random.Random(2))
            await ws.send_event(p.Hello("hevc", 320, 240, 30.0))
            probes = b"".join(
                frame(OP_BINARY, p.encode_event(p.Probe(i, 0)), key=ws.key()) for i in range(300)
            )
            with contextlib.suppress(ConnectionError):
                await ws.send_raw(probes)
            reply = await ws.read_reply(10.0)
            ws.abort()
            return reply

    reply = asyncio.run(run())
    # 100 tokens: the hello took one, 99 probes got theirs, the 100th is refused.
    assert reply.count(p.MessageType.PROBE_ACK) == 99
    error = reply.first_error()
    assert error is not None and error.code == p.ErrorCode.LIMIT_EXCEEDED
    assert reply.close_code == 1008


def test_a_full_outbox_slows_reading_instead_of_closing_a_reading_client(
    detector: Detector,
) -> None:
    """The outbox holds 2 answers; 300 probes in one burst all get their ack."""

    async def run() -> Reply:
        config = ServerConfig(host="127.0.0.1", port=0, outbox_messages=2)
        async with Server(config, detector) as server:
            ws = await RawWebSocket.connect(server.port, random.Random(3))
            await ws.send_event(p.Hello("hevc", 320, 240, 30.0))
            probes = b"".join(
                frame(OP_BINARY, p.encode_event(p.Probe(i, 0)), key=ws.key()) for i in range(300)
            )
            await ws.send_raw(probes)
            reply = await ws.read_reply(10.0, stop_after=p.MessageType.PROBE_ACK, count=300)
            ws.abort()
            return reply

    reply = asyncio.run(run())
    assert reply.count(p.MessageType.PROBE_ACK) == 300
    assert reply.first_error() is None


def test_a_client_whose_window_stays_closed_is_cut_off_once(
    detector: Detector, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that sends and never reads: once the server's socket buffer is full and
    stays full past the stalled-reader timeout, the connection is dropped, and the
    warning is said once."""

    async def run() -> tuple[bool, float | None]:
        config = ServerConfig(
            host="127.0.0.1", port=0, stalled_reader_timeout_s=0.3, max_messages_per_s=1e6
        )
        async with Server(config, detector) as server:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            ws = RawWebSocket(reader, writer, random.Random(4))
            await ws.handshake(server.port)
            await ws.send_event(p.Hello("hevc", 320, 240, 30.0))
            await ws.read_reply(5.0, stop_after=p.MessageType.READY)
            (session,) = server.sessions
            server_socket = session.ws.transport.get_extra_info("socket")
            server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            probes = b"".join(
                frame(OP_BINARY, p.encode_event(p.Probe(i, 0)), key=ws.key()) for i in range(20_000)
            )
            writer.write(probes)  # never read: the acks pile up on the server
            cut_off = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    while not session.ws.transport.is_closing():
                        await asyncio.sleep(0.05)
                    cut_off = True
            ws.abort()
            value = server.metrics.registry.get_sample_value(
                "shelf_connections_refused_total", {"reason": "not_reading"}
            )
            return cut_off, value

    with caplog.at_level(logging.WARNING, logger="shelf_stream.server"):
        cut_off, not_reading = asyncio.run(run())
    assert cut_off and not_reading == 1
    warnings = [r for r in caplog.records if "has not read its results" in r.getMessage()]
    assert len(warnings) == 1


def test_a_read_after_a_pause_counts_from_the_pause() -> None:
    """What waited in the kernel while reading was paused may have arrived any time
    since the pause: rate limits count it from then."""
    clock = ArrivalClock()
    assert clock.on_read(1.0) == 1.0
    clock.on_pause(1.2)  # the session fell behind
    assert clock.on_read(3.5) == 1.2  # reading resumed much later
    assert clock.on_read(3.6) == 3.6  # reading on: read as it arrives
