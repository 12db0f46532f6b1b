"""gpuwarden.prom: the one Prometheus HTTP API client, against a stand-in that answers like
Prometheus (the real one is driven by tests/dashboards/test_live.py and the predictor's
binaries tests); and the inventory discovery that reads through it."""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gpuwarden.prom import (
    PrometheusClient,
    PrometheusError,
    PrometheusQueryError,
    PrometheusUnavailable,
)
from gpuwarden.scheduler_agent.inventory import PrometheusDiscovery, prometheus_specs
from tests.helpers import free_port


class Stand:
    """What the stand-in answers: ``routes`` maps an API path to (HTTP status, body), or to a
    function of the query parameters returning that."""

    def __init__(self) -> None:
        self.routes: dict[str, Any] = {}
        self.asked: list[tuple[str, dict[str, list[str]]]] = []
        self.delay = 0.0


def _ok(data: Any) -> tuple[int, Any]:
    return 200, {"status": "success", "data": data}


@pytest.fixture
def stand() -> Iterator[tuple[Stand, str]]:
    st = Stand()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urllib.parse.urlparse(self.path)
            params = urllib.parse.parse_qs(url.query)
            st.asked.append((url.path, params))
            time.sleep(st.delay)
            route = st.routes.get(url.path, (404, "404 page not found\n"))
            status, body = route(params) if callable(route) else route
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield st, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_instant_range_series_labels_and_config(stand: tuple[Stand, str]) -> None:
    st, url = stand
    st.routes["/api/v1/query"] = _ok(
        {
            "resultType": "vector",
            "result": [
                {"metric": {"uuid": "GPU-a"}, "value": [100.5, "81"]},
                {"metric": {"uuid": "GPU-b"}, "value": [100.5, "+Inf"]},
            ],
        }
    )
    st.routes["/api/v1/query_range"] = _ok(
        {
            "resultType": "matrix",
            "result": [{"metric": {"uuid": "GPU-a"}, "values": [[10, "1"], [25, "NaN"], [40, "3"]]}],
        }
    )
    st.routes["/api/v1/series"] = _ok([{"__name__": "gpu_up", "uuid": "GPU-a"}])
    st.routes["/api/v1/label/uuid/values"] = _ok(["GPU-a", "GPU-b"])
    st.routes["/api/v1/status/config"] = _ok(
        {
            "yaml": "global:\n  scrape_interval: 1m\n"
            "scrape_configs:\n  - {job_name: x, scrape_interval: 15s}\n"
            "  - {job_name: y}\n"
        }
    )
    prom = PrometheusClient(url + "/", timeout=2)
    a, b = prom.query("gpu_temperature_celsius", at=100.5)
    assert (a.labels, list(a.times), list(a.values)) == ({"uuid": "GPU-a"}, [100.5], [81.0])
    assert math.isinf(b.values[0])
    assert st.asked[-1] == ("/api/v1/query", {"query": ["gpu_temperature_celsius"], "time": ["100.500"]})
    (r,) = prom.query_range("x", 10, 40, 15)
    assert list(r.times) == [10, 25, 40] and r.values[0] == 1 and math.isnan(r.values[1])
    assert st.asked[-1][1] == {"query": ["x"], "start": ["10.000"], "end": ["40.000"], "step": ["15"]}
    assert prom.series(["gpu_up", "gpu_info"], start=1, end=2) == [{"__name__": "gpu_up", "uuid": "GPU-a"}]
    assert st.asked[-1][1] == {"match[]": ["gpu_up", "gpu_info"], "start": ["1.000"], "end": ["2.000"]}
    assert prom.label_values("uuid", ['gpu_up{job="x"}']) == ["GPU-a", "GPU-b"]
    assert st.asked[-1][1] == {"match[]": ['gpu_up{job="x"}']}
    assert prom.scrape_interval() == 15.0
    st.routes["/api/v1/alerts"] = _ok({"alerts": [{"labels": {"alertname": "GpuHot"}, "state": "firing"}]})
    assert prom.alerts() == [{"labels": {"alertname": "GpuHot"}, "state": "firing"}]
    st.routes["/api/v1/query"] = _ok({"resultType": "scalar", "result": [7, "4"]})
    (s,) = prom.query("scalar(4)")
    assert s.labels == {} and s.values[0] == 4


def test_the_wrong_kind_of_answer_is_a_query_error(stand: tuple[Stand, str]) -> None:
    st, url = stand
    st.routes["/api/v1/query_range"] = _ok({"resultType": "vector", "result": []})
    st.routes["/api/v1/query"] = _ok({"resultType": "matrix", "result": []})
    prom = PrometheusClient(url)
    with pytest.raises(PrometheusQueryError, match="not a range vector"):
        prom.query_range("x", 0, 1, 1)
    with pytest.raises(PrometheusQueryError, match="not an instant vector"):
        prom.query("x[5m]")


@pytest.mark.parametrize(
    "route,error,words",
    [
        (
            (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}),
            PrometheusQueryError,
            "rejected 'up(': HTTP 400 bad_data: parse error: fix the query",
        ),
        (
            (422, {"status": "error", "errorType": "execution", "error": "too many samples"}),
            PrometheusQueryError,
            "rejected 'up(': HTTP 422 execution",
        ),
        (
            (200, {"status": "error", "errorType": "timeout", "error": "query timed out"}),
            PrometheusQueryError,
            "rejected 'up(': timeout: query timed out",
        ),
        ((503, "Service Unavailable"), PrometheusUnavailable, "HTTP 503 Service Unavailable: see Prometheus' log"),
        ((200, "<html>Grafana</html>"), PrometheusUnavailable, "not Prometheus' JSON: is that Prometheus' base URL?"),
        (None, PrometheusUnavailable, "HTTP 404 for /api/v1/query: is that Prometheus' base URL"),
    ],
)
def test_errors_name_the_url_and_what_to_do(stand: tuple[Stand, str], route: Any, error: type, words: str) -> None:
    st, url = stand
    if route is not None:
        st.routes["/api/v1/query"] = route
    with pytest.raises(error) as e:
        PrometheusClient(url).query("up(")
    assert url in str(e.value) and words in str(e.value) and e.value.url == url
    assert isinstance(e.value, PrometheusError)


def test_unreachable_slow_and_malformed_urls(stand: tuple[Stand, str]) -> None:
    st, url = stand
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        PrometheusUnavailable,
        match=rf"cannot query Prometheus at {nobody}: unreachable .*"
        "check that it runs there",
    ):
        PrometheusClient(nobody, timeout=1).query("up")
    st.delay = 0.5
    st.routes["/api/v1/query"] = _ok({"resultType": "vector", "result": []})
    t0 = time.monotonic()
    with pytest.raises(
        PrometheusUnavailable, match=r"did not answer within 0.1s: check its load, or raise the timeout"
    ):
        PrometheusClient(url, timeout=0.1).query("up")
    assert time.monotonic() - t0 < 0.45
    for bad in ("127.0.0.1:9090", "", "ftp://x"):
        with pytest.raises(ValueError, match="must start with http:// or https://"):
            PrometheusClient(bad)


def test_scrape_interval_falls_back_when_the_config_cannot_be_read(stand: tuple[Stand, str]) -> None:
    st, url = stand
    assert PrometheusClient(url).scrape_interval(default=7.0) == 7.0  # 404
    st.routes["/api/v1/status/config"] = _ok({"yaml": "global: {scrape_interval: soon}\n"})
    assert PrometheusClient(url).scrape_interval(default=7.0) == 7.0


def test_inventory_discovery_reads_through_the_client(
    stand: tuple[Stand, str], caplog: pytest.LogCaptureFixture
) -> None:
    st, url = stand

    def vector(*rows: tuple[dict[str, str], str]) -> tuple[int, Any]:
        return _ok({"resultType": "vector", "result": [{"metric": m, "value": [1, v]} for m, v in rows]})

    info = vector(
        ({"instance": "n1:9786", "uuid": "GPU-a", "gpu": "0", "name": "H100"}, "1"),
        ({"instance": "n1:9786", "uuid": "GPU-b", "gpu": "1"}, "1"),
        ({"instance": "n2:9786", "uuid": "GPU-a", "gpu": "0"}, "1"),
    )  # repeated uuid: ignored
    up = vector(({"instance": "n1:9786", "uuid": "GPU-a"}, "1"), ({"instance": "n1:9786", "uuid": "GPU-b"}, "0"))

    st.routes["/api/v1/query"] = lambda params: up if params["query"] == ["gpu_up"] else info
    specs = prometheus_specs(url)
    assert [(s.node, s.index, s.uuid, s.name, s.up) for s in specs] == [
        ("n1:9786", 0, "GPU-a", "H100", True),
        ("n1:9786", 1, "GPU-b", "", False),
    ]

    synced: list[Any] = []
    nobody = f"http://127.0.0.1:{free_port()}"
    d = PrometheusDiscovery(lambda specs, source: synced.append(specs), nobody, timeout=1)
    with caplog.at_level("WARNING"):
        assert d.refresh_once() is False and synced == []  # Prometheus down: inventory unchanged
    assert f"cannot query Prometheus at {nobody}: unreachable" in caplog.text
    d = PrometheusDiscovery(lambda specs, source: synced.append((source, len(specs))), url, timeout=1)
    assert d.refresh_once() is True and synced == [("prometheus", 2)]
