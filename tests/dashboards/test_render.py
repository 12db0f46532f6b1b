"""The PNG renderer, against a stand-in Prometheus that answers the HTTP API with canned series.

The real-Prometheus run lives in test_live.py; here the answers are known, so the test can
check what was asked (queries with variables filled in, the range) and what was drawn.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gpuwarden.dashboards import render
from gpuwarden.dashboards.render import format_duration
from gpuwarden.durations import parse as parse_duration
from gpuwarden.prom import PrometheusClient
from tests.helpers import free_port

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FakePrometheus(BaseHTTPRequestHandler):
    asked: list[dict[str, str]] = []

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        type(self).asked.append({"path": url.path, **params})
        if url.path == "/api/v1/status/config":
            data: Any = {"yaml": "global:\n  scrape_interval: 2s\nscrape_configs: []\n"}
        elif url.path == "/api/v1/query_range":
            if "gpu_temperature_celsius" not in params["query"]:
                data = {"resultType": "matrix", "result": []}
            else:
                start, step = float(params["start"]), float(params["step"])
                data = {
                    "resultType": "matrix",
                    "result": [
                        {
                            "metric": {"__name__": "gpu_temperature_celsius", "instance": "n1:9786", "gpu": str(g)},
                            "values": [[start + i * step, str(60 + g + i)] for i in range(20)],
                        }
                        for g in range(2)
                    ],
                }
        elif url.path == "/api/v1/query":
            data = {"resultType": "vector", "result": [{"metric": {}, "value": [0, "4"]}]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"status": "success", "data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake_prometheus() -> Iterator[str]:
    FakePrometheus.asked = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_renders_the_main_panels_to_png(fake_prometheus: str, tmp_path: Path) -> None:
    out = tmp_path / "fleet.png"
    drawn = render.render(PrometheusClient(fake_prometheus), out, range_s=900, end=1_700_000_000, gpu="0|1")
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 20_000
    assert drawn["Temperature"] == 2 and drawn["Power"] == 0
    assert set(drawn) == set(render.MAIN_PANELS)
    ranges = [a for a in FakePrometheus.asked if a["path"] == "/api/v1/query_range"]
    assert all("$" not in a["query"] for a in ranges), "a variable reached Prometheus"
    assert any('gpu=~"0|1"' in a["query"] for a in ranges)
    # The scrape interval is 2s, the step 900/240 s: $__rate_interval = max(step + 2s, 8s).
    assert any("[8s]" in a["query"] for a in ranges)
    assert {(a["start"], a["end"]) for a in ranges} == {("1699999100.000", "1700000000.000")}


def test_cli_reports_an_unreachable_prometheus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert render.main(["--prometheus.url", url, "--out", str(tmp_path / "x.png")]) == 1
    assert f"cannot query Prometheus at {url}" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_legend_format_like_grafana() -> None:
    labels = {"__name__": "gpu_power_watts", "instance": "n1:9786", "gpu": "3"}
    assert render.legend("{{instance}} GPU {{gpu}} limit", labels) == "n1:9786 GPU 3 limit"
    assert render.legend("__auto", labels) == 'gpu_power_watts{gpu="3", instance="n1:9786"}'


def test_rate_interval_is_at_least_four_scrapes() -> None:
    assert render.variable_values(900, 3.75, 15, ".*", ".*")["__rate_interval"] == "60s"
    assert render.variable_values(86400, 360, 15, ".*", ".*")["__rate_interval"] == "375s"


@pytest.mark.parametrize("text,seconds", [("15s", 15), ("1m30s", 90), ("2h", 7200), ("500ms", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_says_what_to_write() -> None:
    with pytest.raises(ValueError, match="expected e.g. 15s"):
        parse_duration("15 minutes")
    assert format_duration(0.2) == "1s"


def test_alert_layers_stack_but_the_agents_total_does_not(committed: dict[str, Any]) -> None:
    panel = next(p for p in committed["panels"] if p["title"] == "Active alerts")
    assert render._stacked(panel, "THERMAL_CRITICAL (critical)")
    assert not render._stacked(panel, "agent: alerts active")
