"""The exporter's /metrics, the simulator's control endpoint and the live view's notification
sink, attacked the way issue 13 found the old ``http.server`` listeners attackable: stalled
clients, connection floods, chunked and badly framed bodies, bodies over the limit.

Every test runs against each of the three real servers on port 0 and stops it in teardown.
"""

from __future__ import annotations

import gc
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gpuwarden.exporter.collector import GpuCollector
from gpuwarden.exporter.server import MetricsServer
from gpuwarden.exporter.sim import control
from gpuwarden.exporter.sim.control import ControlServer
from gpuwarden.listener import Limits
from gpuwarden.stack.view import NotificationSink

WATTS = json.dumps({"watts": 300}).encode()
NOTE = json.dumps({"alerts": [{"status": "firing", "labels": {"alertname": "X", "gpu": "1"}}]}).encode()


@dataclass
class Target:
    """One running server and what a normal request to it, and a request with a body, look like."""

    port: int
    get: tuple[str, str]  # (method, path) of a normal request without a body
    post_path: str  # where a body goes
    post_body: bytes  # a body that route accepts
    chunked_status: int  # what a chunked POST of post_body is answered
    max_body: int  # the route's body limit
    check: Callable[[], Any] = lambda: True  # state after the chunked POST, if any
    server: Any = None
    body_method: str = "POST"  # the method that carries it (the metrics page takes none: GET)


@pytest.fixture(params=["metrics", "control", "sink"])
def serve(request, make_exporter) -> Iterator[Callable[[Limits], Target]]:
    """``serve(limits)`` starts the parametrized server with those limits."""
    started: list[Any] = []

    def start(limits: Limits) -> Target:
        if request.param == "metrics":
            h = make_exporter(2)
            server = MetricsServer(h.registry, "127.0.0.1", 0, limits=limits).start()
            started.append(server)
            return Target(server.port, ("GET", "/metrics"), "/metrics", b"x", 413, 0, server=server, body_method="GET")
        if request.param == "control":
            h = make_exporter(2)
            server = ControlServer(h.fleet, "127.0.0.1", 0, limits=limits).start()
            started.append(server)
            return Target(
                server.port,
                ("GET", "/api/v1/gpus"),
                "/api/v1/gpus/1/power-limit",
                WATTS,
                200,
                control.MAX_BODY,
                lambda: h.fleet.gpus[1].state()["power_limit_watts"] == 300,
                server,
            )
        sink = NotificationSink(0, limits=limits).start()
        started.append(sink)
        return Target(
            sink.port,
            ("POST", "/oncall"),
            "/oncall",
            NOTE,
            200,
            sink.max_body,
            lambda: sink.total == 1 and sink.received[0]["receiver"] == "oncall",
            sink,
        )

    yield start
    for server in started:
        server.stop()


def _connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _read_all(s: socket.socket) -> bytes:
    """Everything until the server closes the connection (or the socket's timeout), or until a
    whole answer marked ``connection: close`` is in: nothing can follow it, and after an early
    413 the server keeps the socket open a few seconds to drain the body (its lingering close)."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
            if _complete_and_final(out):
                break
    except TimeoutError:
        pass
    except ConnectionResetError:
        pass
    return out


def _complete_and_final(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.lower().split(b"\r\n")
    length = next((int(x.split(b":", 1)[1]) for x in lines if x.startswith(b"content-length:")), None)
    return b"connection: close" in lines and length is not None and len(body) >= length


def _status(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:200]
    return int(reply.split(b" ", 2)[1])


def _request(port: int, method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    with _connect(port) as s:
        length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{length}{headers}\r\n".encode() + body)
        return _read_all(s)


def _normal(t: Target) -> int:
    method, path = t.get
    return _status(
        _request(t.port, method, path, t.post_body if method == "POST" else b"", "Content-Type: application/json\r\n")
    )


def test_a_stalled_request_line_is_disconnected_after_the_header_deadline(serve):
    t = serve(Limits(header_timeout=0.5))
    with _connect(t.port) as s:  # recv raises on the 10 s socket timeout: b"" is the server's close
        began = time.monotonic()
        s.sendall(b"GET /met")
        assert s.recv(100) == b""
        assert time.monotonic() - began < 8
    assert _normal(t) == 200


def test_a_flood_of_stalled_connections_does_not_keep_a_client_out(serve):
    t = serve(Limits(header_timeout=60, max_connections=20))
    stalled = []
    try:
        for _ in range(100):
            s = _connect(t.port)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            stalled.append(s)
        began = time.monotonic()
        assert _normal(t) == 200
        assert time.monotonic() - began < 8
    finally:
        for s in stalled:
            s.close()


def test_a_chunked_body_is_decoded_or_refused_and_never_read_as_a_request(serve):
    t = serve(Limits())
    body = t.post_body
    # The smuggling attempt: a whole request hidden in the chunked stream after the body's end.
    hidden = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(t.port) as s:
        s.sendall(
            f"{t.body_method} {t.post_path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
            + hidden
        )
        reply = _read_all(s)
    assert _status(reply) == t.chunked_status
    assert reply.count(b"HTTP/1.1 ") == 1, reply
    assert t.check()
    assert _normal(t) == 200  # a new connection works


@pytest.mark.parametrize("length", ["-1", "abc", "1, 2", " 5x"])
def test_a_bad_content_length_is_400(serve, length):
    t = serve(Limits())
    with _connect(t.port) as s:
        s.sendall(f"{t.body_method} {t.post_path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        reply = _read_all(s)  # answered at once, and the connection closed (no body is awaited)
    assert _status(reply) == 400
    assert _normal(t) == 200


def test_a_body_over_the_limit_is_413_before_it_is_read(serve):
    t = serve(Limits())
    with _connect(t.port) as s:
        # Only the headers: the answer must not wait for a body that never comes.
        s.sendall(
            f"{t.body_method} {t.post_path} HTTP/1.1\r\nHost: x\r\nContent-Length: {t.max_body + 1}\r\n\r\n".encode()
        )
        reply = _read_all(s)
    assert _status(reply) == 413
    assert b"\r\nconnection: close\r\n" in reply.lower()
    assert _normal(t) == 200


def test_a_chunked_body_over_the_limit_is_413(serve):
    t = serve(Limits())
    with _connect(t.port) as s:
        s.sendall(f"{t.body_method} {t.post_path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        sent, piece = 0, b"x" * 65536
        try:
            while sent <= t.max_body:
                s.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before we finished sending
        reply = _read_all(s)
    assert _status(reply) == 413
    assert b"\r\nconnection: close\r\n" in reply.lower()


def test_stop_is_quick_with_connections_open(serve):
    t = serve(Limits())
    assert _normal(t) == 200
    idle = _connect(t.port)  # connected, nothing sent
    partial = _connect(t.port)
    partial.sendall(b"GET / HTTP/1.1\r\nHost")
    keepalive = _connect(t.port)  # answered, kept open
    method, path = t.get
    body = t.post_body if method == "POST" else b""
    keepalive.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert _status(keepalive.recv(65536)) == 200
    try:
        began = time.monotonic()
        t.server.stop()
        assert time.monotonic() - began < 2
        with pytest.raises(OSError):
            _connect(t.port, timeout=2).close()
    finally:
        for s in (idle, partial, keepalive):
            s.close()


# -- per server ----------------------------------------------------------------------------------


@pytest.fixture
def metrics(make_exporter) -> Iterator[tuple[Any, int]]:
    h = make_exporter(2)
    server = MetricsServer(h.registry, "127.0.0.1", 0).start()
    yield h, server.port
    server.stop()


def test_metrics_landing_404_and_head(metrics):
    _, port = metrics
    reply = _request(port, "GET", "/")
    assert _status(reply) == 200 and b"/metrics" in reply and b"text/html" in reply
    reply = _request(port, "GET", "/metrics?x=1")
    assert _status(reply) == 200 and b"gpu_up" in reply
    reply = _request(port, "GET", "/nothing")
    assert _status(reply) == 404 and b"not found; metrics are at /metrics" in reply
    reply = _request(port, "HEAD", "/metrics")
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert _status(reply) == 200 and rest == b""
    assert (
        int(
            next(
                v
                for k, v in (line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
                if k.lower() == b"content-length"
            )
        )
        > 0
    )


def test_metrics_path_is_configurable_and_a_failed_collection_is_500(make_exporter):
    class Broken:
        def collect(self):
            raise RuntimeError("boom")

    registry = CollectorRegistry()
    registry.register(GpuCollector(make_exporter(1).service))
    server = MetricsServer(registry, "127.0.0.1", 0, metrics_path="/m").start()
    try:
        assert _status(_request(server.port, "GET", "/m")) == 200
        assert _status(_request(server.port, "GET", "/metrics")) == 404
        registry.register(Broken())
        reply = _request(server.port, "GET", "/m")
        assert _status(reply) == 500 and b"collection failed" in reply
    finally:
        began = time.monotonic()
        server.stop()
        assert time.monotonic() - began < 2


def test_control_unknown_gpu_is_404_before_the_body_is_read(make_exporter):
    server = ControlServer(make_exporter(2).fleet, "127.0.0.1", 0).start()
    try:
        with _connect(server.port) as s:
            s.sendall(b"POST /api/v1/gpus/9/power-limit HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            reply = _read_all(s)  # the 100 bytes are never sent
        assert _status(reply) == 404 and b"no simulated GPU" in reply
        assert b"\r\nconnection: close\r\n" in reply.lower()
        reply = _request(server.port, "GET", "/api/v1/gpus/0/load")
        assert _status(reply) == 405 and json.loads(reply.partition(b"\r\n\r\n")[2])["error"]
    finally:
        server.stop()


def test_control_warns_when_it_binds_beyond_loopback(make_exporter, caplog):
    fleet = make_exporter(1).fleet
    with caplog.at_level(logging.WARNING, logger="gpuwarden.exporter.sim.control"):
        server = ControlServer(fleet, "127.0.0.1", 0).start()
        server.stop()
        assert not caplog.records
        server = ControlServer(fleet, "0.0.0.0", 0).start()
        server.stop()
    assert any("inject faults" in r.getMessage() and "0.0.0.0" in r.getMessage() for r in caplog.records)


# -- a client stalled mid-body -------------------------------------------------------------------


def test_stop_is_quick_with_a_client_stalled_mid_body(make_exporter):
    """stop() closes a connection whose client is still sending at once (uvicorn alone would
    wait its 5 s graceful timeout for it, then log a CancelledError and leak the transport)."""
    server = ControlServer(make_exporter(1).fleet, "127.0.0.1", 0).start()
    with _connect(server.port) as s:
        s.sendall(b"POST /api/v1/gpus/0/load HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        began = time.monotonic()
        server.stop()
        elapsed = time.monotonic() - began
    gc.collect()  # the server is unreachable now: a transport it left unclosed would warn here
    assert elapsed < 2


def test_connections_stalled_mid_body_do_not_keep_a_client_out(make_exporter):
    """The cap sheds connections stalled mid-body too (after those stalled in their headers),
    never a request being handled."""
    server = ControlServer(make_exporter(1).fleet, "127.0.0.1", 0, limits=Limits(max_connections=20)).start()
    stalled = []
    try:
        for _ in range(40):
            s = _connect(server.port)
            s.sendall(b"POST /api/v1/gpus/0/load HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            stalled.append(s)
        time.sleep(0.2)
        assert _status(_request(server.port, "GET", "/api/v1/gpus")) == 200
    finally:
        for s in stalled:
            s.close()
        server.stop()


def test_a_body_framed_both_ways_is_400_and_closed(serve):
    """Content-Length and Transfer-Encoding together: h11 would read it as chunked, a proxy in
    front might read the Content-Length (request smuggling); refused, as RFC 9112 allows."""
    t = serve(Limits())
    body = t.post_body
    with _connect(t.port) as s:
        s.sendall(
            f"{t.body_method} {t.post_path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) + 9}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
        reply = _read_all(s)
    assert _status(reply) == 400 and b"connection: close" in reply.lower()
    assert _normal(t) == 200
