"""HTTP: /metrics in the Prometheus text format, and a landing page."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry

from .exposition import CONTENT_TYPE, TextRenderer

log = logging.getLogger("gpuwarden.exporter.http")

LANDING = b"""<html><head><title>gpuwarden exporter</title></head><body>
<h1>gpuwarden exporter</h1><p><a href="/metrics">Metrics</a></p></body></html>
"""


def parse_listen_address(text: str) -> tuple[str, int]:
    """``:9786`` (all interfaces), ``127.0.0.1:9786`` or ``[::1]:9786`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address {text!r}: expected [host]:port, e.g. :9786 or 127.0.0.1:9786")
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s - " + fmt, self.address_string(), *args)

    def _reply(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == self.server.metrics_path:
            try:
                body = self.server.renderer.render(self.server.registry)
            except Exception:  # noqa: BLE001 - report, never drop the connection silently
                log.exception("collecting metrics failed")
                return self._reply(500, "text/plain; charset=utf-8", b"collection failed; see the exporter log\n")
            return self._reply(200, CONTENT_TYPE, body)
        if path == "/":
            return self._reply(200, "text/html; charset=utf-8", LANDING)
        return self._reply(404, "text/plain; charset=utf-8", b"not found; metrics are at /metrics\n")

    do_HEAD = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], registry: CollectorRegistry, metrics_path: str) -> None:
        self.registry = registry
        self.renderer = TextRenderer()
        self.metrics_path = metrics_path
        super().__init__(addr, _Handler)


class MetricsServer:
    """Serves ``registry`` on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, registry: CollectorRegistry, host: str = "", port: int = 9786,
                 metrics_path: str = "/metrics") -> None:
        self._server = _Server((host, port), registry, metrics_path)
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def start(self) -> "MetricsServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
