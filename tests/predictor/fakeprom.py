"""A stdlib HTTP server standing in for Prometheus' /api/v1/query_range.

Series are functions of time registered per query substring; ``delay`` makes it slow and
``status`` makes it fail.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Fn = Callable[[float], float]


class FakePrometheus:
    def __init__(self) -> None:
        self.series: dict[str, list[tuple[dict[str, str], Fn]]] = {}
        self.delay = 0.0
        self.status = 200
        self.queries: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                q = urllib.parse.parse_qs(url.query)
                if fake.delay:
                    time.sleep(fake.delay)
                if url.path != "/api/v1/query_range":
                    return self._send(404, {"status": "error", "error": "not found"})
                if fake.status != 200:
                    return self._send(fake.status, {"status": "error", "errorType": "internal", "error": "boom"})
                query = q["query"][0]
                fake.queries.append(query)
                start, end, step = float(q["start"][0]), float(q["end"][0]), float(q["step"][0])
                result = []
                for key, rows in fake.series.items():
                    if key in query:
                        for labels, fn in rows:
                            n = int(round((end - start) / step))
                            pts = [[start + i * step, repr(float(fn(start + i * step)))] for i in range(n + 1)]
                            result.append({"metric": labels, "values": pts})
                self._send(200, {"status": "success", "data": {"resultType": "matrix", "result": result}})

            def _send(self, code: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out first (the slow case)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def add(self, query_part: str, labels: dict[str, str], fn: Fn) -> None:
        self.series.setdefault(query_part, []).append((labels, fn))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
