"""HTTP: /metrics in the Prometheus text format, and a landing page.

Served by ``gpuwarden.listener.Listener`` (header/body deadlines, a connection cap, strict
framing). Nothing here takes a request body: one that comes with a body is answered 413 and its
connection closed before the body is read.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry

from gpuwarden.listener import Admit, Head, Limits, Listener, Reply, text_reply

from .exposition import CONTENT_TYPE, TextRenderer

log = logging.getLogger(__name__)

LANDING = b"""<html><head><title>gpuwarden exporter</title></head><body>
<h1>gpuwarden exporter</h1><p><a href="/metrics">Metrics</a></p></body></html>
"""


def parse_listen_address(text: str) -> tuple[str, int]:
    """``:9786`` (all interfaces), ``127.0.0.1:9786`` or ``[::1]:9786`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address {text!r}: expected [host]:port, e.g. :9786 or 127.0.0.1:9786")
    return host.strip("[]"), int(port)


class _Endpoint:
    """GET/HEAD of the metrics page and the landing page; no request bodies."""

    def __init__(self, registry: CollectorRegistry, metrics_path: str) -> None:
        self.registry = registry
        self.metrics_path = metrics_path
        self.renderer = TextRenderer()

    def admit(self, head: Head) -> Admit | Reply:
        if head.method not in ("GET", "HEAD"):
            return Reply(405, b"method not allowed; GET or HEAD\n", "text/plain; charset=utf-8", {"allow": "GET, HEAD"})
        return Admit(0)

    def handle(self, head: Head, body: bytes, context: Any) -> Reply:
        if head.path == self.metrics_path:
            try:
                data = self.renderer.render(self.registry)
            except Exception:
                log.exception("collecting metrics failed")
                return text_reply(500, "collection failed; see the exporter log")
            return Reply(200, data, CONTENT_TYPE)
        if head.path == "/":
            return Reply(200, LANDING, "text/html; charset=utf-8")
        return text_reply(404, f"not found; metrics are at {self.metrics_path}")


class MetricsServer:
    """Serves ``registry`` on ``host:port`` (port 0 picks a free one); binds at construction."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "",
        port: int = 9786,
        metrics_path: str = "/metrics",
        limits: Limits = Limits(),
    ) -> None:
        self._listener = Listener(
            _Endpoint(registry, metrics_path), host or "0.0.0.0", port, name="metrics-http", limits=limits
        )
        self.host, self.port = self._listener.host, self._listener.port

    def serve_forever(self) -> None:
        """Serves until ``stop()`` is called from another thread or a signal handler."""
        self._listener.serve_forever()

    def start(self) -> MetricsServer:
        self._listener.start()
        return self

    def stop(self) -> None:
        self._listener.stop()
